"""Upstream answers go through the pipeline's events and back with nothing lost: parsed
bodies straight from the stand-in and through the gateway are equal, JSON and streamed,
for answers with tool calls, logprobs, refusal fields, several choices, usage details
and fields no client knows."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import AppClient
from tests.pipeline.conftest import UPSTREAM
from tests.pipeline.stages import RewriteStage
from tests.pipeline.test_stage_contract import sse_chunks
from tests.standin import Standin

pytestmark = pytest.mark.model

BODY = {"messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}}}}],
        "logprobs": True, "top_logprobs": 1, "n": 2}


@pytest.fixture
def rich(standin: Standin) -> Iterator[Standin]:
    standin.control(answer="rich")
    yield standin
    standin.control(answer="plain")


def direct(standin: Standin, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{standin.url}/chat/completions", json=body, timeout=10, trust_env=False)


async def test_json_answer_is_passed_on_whole(both: tuple[AppClient, RewriteStage],
                                              rich: Standin) -> None:
    api, stage = both
    want = direct(rich, {**BODY, "model": "standin"}).json()
    assert want["choices"][0]["message"]["tool_calls"]  # the stand-in sends the rich answer
    r = await api.post("/v1/chat/completions", {**BODY, "model": UPSTREAM})
    assert r.status_code == 200
    assert r.json() == want
    assert stage.outcomes[-1] == (UPSTREAM, "ok", 12, 9)


@pytest.mark.parametrize("include_usage", [True, False])
async def test_streamed_answer_is_passed_on_chunk_by_chunk(
        both: tuple[AppClient, RewriteStage], rich: Standin, include_usage: bool) -> None:
    api, stage = both
    body = {**BODY, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    want = sse_chunks(direct(rich, {**body, "model": "standin"}).content)
    kinds = {k for c in want for ch in c["choices"] for k in ch["delta"]}
    assert {"tool_calls", "content", "role"} <= kinds
    r = await api.post("/v1/chat/completions", {**body, "model": UPSTREAM})
    assert r.status_code == 200
    got = sse_chunks(r.content)
    assert got == want
    # usage is known to the pipeline either way; the client saw it only when it asked
    assert stage.outcomes[-1] == (UPSTREAM, "ok", 12, 5)
    assert any("usage" in c for c in got) == include_usage


async def test_text_rewritten_by_a_stage_keeps_every_other_field(
        both: tuple[AppClient, RewriteStage], rich: Standin) -> None:
    api, _ = both
    body = {**BODY, "stream": True, "user": "rewrite-out:Sunny=Cloudy"}
    want = sse_chunks(direct(rich, {**body, "model": "standin"}).content)
    got = sse_chunks((await api.post("/v1/chat/completions",
                                      {**body, "model": UPSTREAM})).content)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in got if c["choices"])
    assert text == "Cloudy"
    strip = [{**c, "choices": [{**ch, "delta": {k: v for k, v in ch["delta"].items()
                                                if k != "content"}} for ch in c["choices"]]}
             for c in want]
    got_stripped = [{**c, "choices": [{**ch, "delta": {k: v for k, v in ch["delta"].items()
                                                       if k != "content"}}
                                      for ch in c["choices"]]} for c in got]
    # held text changes where the text falls, never the tool calls or logprobs
    assert [c for c in got_stripped if c["choices"][0]["delta"] or
            c["choices"][0]["finish_reason"]] == \
        [c for c in strip if c["choices"][0]["delta"] or c["choices"][0]["finish_reason"]]


async def test_upstream_4xx_keeps_its_status_and_error(both: tuple[AppClient, RewriteStage],
                                                       standin: Standin) -> None:
    api, _ = both
    standin.control(mode="error400")
    try:
        r = await api.post("/v1/chat/completions", {**BODY, "model": UPSTREAM})
    finally:
        standin.control(mode="ok")
    assert r.status_code == 400
    assert orjson.loads(r.content)["error"]["code"] == "error400"


async def test_upstream_error_texts_name_the_model_not_the_upstream(
        both: tuple[AppClient, RewriteStage], standin: Standin) -> None:
    api, _ = both
    leaky = ("max_tokens is too large; see http://10.0.0.5:8000/v1/docs on 10.0.0.5:8000 "
             "(/opt/vllm/entrypoints/openai/serving.py) Traceback (most recent call last): ...")
    standin.control(mode="error400", message=leaky)
    try:
        r = await api.post("/v1/chat/completions", {**BODY, "model": UPSTREAM})
    finally:
        standin.control(mode="ok", message=None)
    err = r.json()["error"]
    assert r.status_code == 400 and err["code"] == "error400" and err["param"] == "messages"
    assert err["message"].startswith(f"model '{UPSTREAM}': max_tokens is too large")
    for internal in ("10.0.0.5", "http://", "/opt/vllm", "Traceback", "8000"):
        assert internal not in err["message"], err["message"]
