"""The stage contract over HTTP on both engine kinds: a stage refuses with a clean OpenAI
error, rewrites the request before the engine, and rewrites answer text split across
chunks, streamed and JSON; its ``after`` hook sees every request once, with usage."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.conftest import MODEL, AppClient
from tests.pipeline.conftest import UPSTREAM
from tests.pipeline.stages import RewriteStage
from tests.standin import Standin

pytestmark = pytest.mark.model

BOTH = [MODEL, UPSTREAM]


def chat(model: str, text: str = "Name three colours.", **kw: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}],
            "max_tokens": 24, "temperature": 0, **kw}


def sse_chunks(body: bytes) -> list[dict[str, Any]]:
    out = []
    for block in body.split(b"\n\n"):
        if block.startswith(b"data: ") and block != b"data: [DONE]":
            out.append(orjson.loads(block[6:]))
    assert body.rstrip().endswith(b"data: [DONE]")
    return out


def pieces(chunks: list[dict[str, Any]]) -> list[str]:
    return [c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]]


@pytest.mark.parametrize("model", BOTH)
@pytest.mark.parametrize("stream", [False, True])
async def test_a_stage_refuses_with_a_clean_openai_error(both: tuple[AppClient, RewriteStage],
                                                         model: str, stream: bool) -> None:
    api, stage = both
    before = len(stage.outcomes)
    r = await api.post("/v1/chat/completions", chat(model, user="refuse", stream=stream))
    assert r.status_code == 403
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"error": {"message": "refused by the test stage",
                                  "type": "invalid_request_error", "param": None,
                                  "code": "content_refused"}}
    assert stage.outcomes[before:] == [(model, "error", 0, 0)]


async def test_a_stage_rewrites_the_input_of_the_embedded_engine(
        both: tuple[AppClient, RewriteStage]) -> None:
    api, _ = both
    plain = "Tell me about apples."
    longer = "Tell me about red red red red red red apples."
    direct = (await api.post("/v1/chat/completions", chat(MODEL, longer, max_tokens=1))).json()
    rewritten = (await api.post("/v1/chat/completions", chat(
        MODEL, plain, max_tokens=1, user="rewrite-in:about=about red red red red red red"))
    ).json()
    unchanged = (await api.post("/v1/chat/completions", chat(MODEL, plain, max_tokens=1))).json()
    # the engine tokenized the rewritten text, not what the client sent
    assert rewritten["usage"]["prompt_tokens"] == direct["usage"]["prompt_tokens"]
    assert rewritten["usage"]["prompt_tokens"] > unchanged["usage"]["prompt_tokens"]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_stage_rewrites_the_input_sent_upstream(both: tuple[AppClient, RewriteStage],
                                                        standin: Standin, stream: bool) -> None:
    api, _ = both
    body = chat(UPSTREAM, "my card is 4111", user="rewrite-in:4111=[card]", stream=stream,
                x_client_field={"kept": True})
    r = await api.post("/v1/chat/completions", body)
    assert r.status_code == 200
    sent = orjson.loads(standin.stats()["last_body"])
    assert sent["messages"] == [{"role": "user", "content": "my card is [card]"}]
    assert sent["x_client_field"] == {"kept": True}  # every other field as the client sent it


async def _baseline(api: AppClient, model: str) -> list[str]:
    r = await api.post("/v1/chat/completions", chat(model, stream=True))
    assert r.status_code == 200
    return pieces(sse_chunks(r.content))


def _straddling(parts: list[str]) -> str:
    """A piece of text that crosses a chunk boundary of ``parts``."""
    for i in range(len(parts) - 1):
        left, right = parts[i].rstrip(), parts[i + 1]
        if len(left) >= 2 and len(right.strip()) >= 2:
            return left[-2:] + parts[i][len(left):] + right[:2]
    raise AssertionError(f"no two adjacent chunks long enough in {parts!r}")


@pytest.mark.parametrize("model", BOTH)
async def test_a_stage_rewrites_streamed_output_across_chunk_boundaries(
        both: tuple[AppClient, RewriteStage], model: str) -> None:
    api, stage = both
    parts = await _baseline(api, model)
    original = "".join(parts)
    target = _straddling(parts)
    assert not any(target in p for p in parts)  # only the joined text holds it
    r = await api.post("/v1/chat/completions",
                       chat(model, stream=True, user=f"rewrite-out:{target}=<X>"))
    chunks = sse_chunks(r.content)
    got = "".join(pieces(chunks))
    assert target in original and target not in got
    assert got == original.replace(target, "<X>")
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    model_, outcome, prompt_tokens, completion_tokens = stage.outcomes[-1]
    assert (model_, outcome) == (model, "ok")
    assert prompt_tokens > 0 and completion_tokens > 0  # usage known, though not asked for
    assert all("usage" not in c for c in chunks)  # ... and not shown


@pytest.mark.parametrize("model", BOTH)
async def test_a_stage_rewrites_json_output(both: tuple[AppClient, RewriteStage],
                                            model: str) -> None:
    api, _ = both
    plain = (await api.post("/v1/chat/completions", chat(model))).json()
    text = plain["choices"][0]["message"]["content"]
    target = text.strip()[:3]
    r = await api.post("/v1/chat/completions", chat(model, user=f"rewrite-out:{target}=<X>"))
    body = r.json()
    assert body["choices"][0]["message"]["content"] == text.replace(target, "<X>")
    assert body["usage"] == plain["usage"]


@pytest.mark.parametrize("model", BOTH)
async def test_usage_on_streams_only_when_asked(both: tuple[AppClient, RewriteStage],
                                               model: str) -> None:
    api, _ = both
    r = await api.post("/v1/chat/completions",
                       chat(model, stream=True, stream_options={"include_usage": True}))
    chunks = sse_chunks(r.content)
    last = chunks[-1]
    assert last["choices"] == [] and last["usage"]["completion_tokens"] > 0
    assert last["usage"]["total_tokens"] == (last["usage"]["prompt_tokens"]
                                             + last["usage"]["completion_tokens"])
