"""The stage contract over gRPC on both engine kinds, with a real grpc.aio client against
the app's gRPC port: a stage's refusal is a status carrying the OpenAI error, and answer
text rewritten across chunk boundaries arrives rewritten; an upstream's rich answer keeps
every field."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import orjson
import pytest
from google.protobuf import json_format

from autoglm.rpc.gen.autoglm.v1 import inference_pb2 as pb
from autoglm.rpc.gen.autoglm.v1 import inference_pb2_grpc as pb_grpc
from tests.conftest import ADMIN_KEY, MODEL, AppClient
from tests.pipeline.conftest import UPSTREAM
from tests.pipeline.stages import RewriteStage
from tests.pipeline.test_stage_contract import _straddling
from tests.standin import Standin

pytestmark = pytest.mark.model

BOTH = [MODEL, UPSTREAM]
AUTH = (("authorization", f"Bearer {ADMIN_KEY}"),)
TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
async def stub(both: tuple[AppClient, RewriteStage]) -> AsyncIterator[pb_grpc.InferenceStub]:
    api, _ = both
    async with grpc.aio.insecure_channel(f"127.0.0.1:{api.app.state.rpc.port}") as channel:
        yield pb_grpc.InferenceStub(channel)


def chat(model: str, text: str = "Name three colours.", **kw: Any) -> pb.ChatCompletionRequest:
    return pb.ChatCompletionRequest(model=model, max_tokens=24, temperature=0,
                                    messages=[pb.ChatMessage(role="user", content=text)], **kw)


async def stream_pieces(stub: pb_grpc.InferenceStub, req: pb.ChatCompletionRequest
                        ) -> tuple[list[str], list[pb.ChatCompletionChunk]]:
    chunks = [c async for c in stub.ChatCompletionStream(req, metadata=AUTH, timeout=TIMEOUT_S)]
    return [c.choices[0].delta.content for c in chunks if c.choices], chunks


@pytest.mark.parametrize("model", BOTH)
@pytest.mark.parametrize("stream", [False, True])
async def test_a_stage_refuses_with_a_status_carrying_the_openai_error(
        both: tuple[AppClient, RewriteStage], stub: pb_grpc.InferenceStub, model: str,
        stream: bool) -> None:
    _, stage = both
    before = len(stage.outcomes)
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        if stream:
            [c async for c in stub.ChatCompletionStream(chat(model, user="refuse"),
                                                        metadata=AUTH, timeout=TIMEOUT_S)]
        else:
            await stub.ChatCompletion(chat(model, user="refuse"), metadata=AUTH,
                                      timeout=TIMEOUT_S)
    err = exc.value
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert orjson.loads(err.details()) == {"error": {
        "message": "refused by the test stage", "type": "invalid_request_error",
        "param": None, "code": "content_refused"}}
    assert dict(err.trailing_metadata())["x-openai-error-code"] == "content_refused"
    assert stage.outcomes[before:] == [(model, "error", 0, 0)]


@pytest.mark.parametrize("model", BOTH)
async def test_a_stage_rewrites_streamed_output_across_chunk_boundaries(
        both: tuple[AppClient, RewriteStage], stub: pb_grpc.InferenceStub, model: str) -> None:
    _, stage = both
    parts, _ = await stream_pieces(stub, chat(model))
    original = "".join(parts)
    target = _straddling(parts)
    assert not any(target in p for p in parts)  # only the joined text holds it
    got_parts, chunks = await stream_pieces(stub, chat(model, user=f"rewrite-out:{target}=<X>"))
    got = "".join(got_parts)
    assert target in original and target not in got
    assert got == original.replace(target, "<X>")
    *answer, last = chunks
    assert answer[-1].choices[0].finish_reason in ("stop", "length")
    assert not last.choices and last.usage.completion_tokens > 0  # gRPC streams end with usage
    model_, outcome, prompt_tokens, completion_tokens = stage.outcomes[-1]
    assert (model_, outcome) == (model, "ok")
    assert (prompt_tokens, completion_tokens) == (last.usage.prompt_tokens,
                                                  last.usage.completion_tokens)


@pytest.fixture
def rich(standin: Standin) -> Iterator[Standin]:
    standin.control(answer="rich")
    yield standin
    standin.control(answer="plain")


async def test_an_upstream_rich_answer_keeps_every_field(
        both: tuple[AppClient, RewriteStage], stub: pb_grpc.InferenceStub, rich: Standin) -> None:
    api, _ = both
    body = {"model": UPSTREAM, "messages": [{"role": "user", "content": "Weather in Paris?"}],
            "n": 2, "logprobs": True}
    want = (await api.post("/v1/chat/completions", body)).json()  # REST, same pipeline
    assert want["choices"][0]["message"]["tool_calls"]  # the stand-in sent its rich answer
    req = pb.ChatCompletionRequest(model=UPSTREAM, n=2, messages=[
        pb.ChatMessage(role="user", content="Weather in Paris?")])
    req.extra.update({"logprobs": True})
    got = await stub.ChatCompletion(req, metadata=AUTH, timeout=TIMEOUT_S)
    assert _json(_as_openai(got)) == _json({k: v for k, v in want.items() if k != "object"})


def _as_openai(r: pb.ChatCompletionResponse) -> dict[str, Any]:
    """The answer message read back as the OpenAI object."""
    def message(m: pb.ChatMessage) -> dict[str, Any]:
        out: dict[str, Any] = {"role": m.role}
        if m.HasField("content"):
            out["content"] = m.content
        return {**out, **json_format.MessageToDict(m.extra)}

    return {"id": r.id, "created": r.created, "model": r.model,
            "system_fingerprint": r.system_fingerprint, **json_format.MessageToDict(r.extra),
            "choices": [{"index": c.index, "message": message(c.message),
                         "finish_reason": c.finish_reason, **json_format.MessageToDict(c.extra)}
                        for c in r.choices],
            "usage": {"prompt_tokens": r.usage.prompt_tokens,
                      "completion_tokens": r.usage.completion_tokens,
                      "total_tokens": r.usage.total_tokens,
                      **json_format.MessageToDict(r.usage.extra)}}


def _json(value: Any) -> Any:
    """JSON data compared as gRPC carries it: numbers as doubles (Struct), null fields left
    out."""
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_json(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


async def test_an_error_mid_stream_ends_it_with_a_status(
        both: tuple[AppClient, RewriteStage], stub: pb_grpc.InferenceStub,
        standin: Standin) -> None:
    _, stage = both
    standin.control(mode="die_mid_stream")
    try:
        got: list[pb.ChatCompletionChunk] = []
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            async for chunk in stub.ChatCompletionStream(chat(UPSTREAM), metadata=AUTH,
                                                         timeout=TIMEOUT_S):
                got.append(chunk)
    finally:
        standin.control(mode="ok")
    assert got  # what arrived before the break was passed on
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    assert orjson.loads(exc.value.details())["error"]["code"] == "upstream_error"
    assert stage.outcomes[-1][:2] == (UPSTREAM, "error")


async def test_an_unexpected_error_is_internal_with_a_plain_message(
        stub: pb_grpc.InferenceStub, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.ChatCompletion(chat(MODEL, user="crash"), metadata=AUTH, timeout=TIMEOUT_S)
    assert exc.value.code() == grpc.StatusCode.INTERNAL
    err = orjson.loads(exc.value.details())["error"]
    assert err["code"] == "internal_error" and "secret" not in exc.value.details()
    assert "Traceback" not in exc.value.details()
    logged = [r for r in caplog.records if r.exc_info]
    assert logged and "internal detail" in str(logged[-1].exc_info[1])  # the trace: in the log


async def test_a_message_over_the_body_limit_is_refused(
        both: tuple[AppClient, RewriteStage], stub: pb_grpc.InferenceStub) -> None:
    api, _ = both
    limit = api.app.state.settings.max_body_bytes
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.ChatCompletion(chat(MODEL, "x" * (limit + 1)), metadata=AUTH,
                                  timeout=TIMEOUT_S)
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
