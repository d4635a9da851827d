"""``POST /v1/chat/completions`` and ``POST /v1/completions``.

Both parse and validate the body, pick the model's engine, wait for the engine to
accept the prompt (so a too-long prompt is still a clean 400), then answer as one JSON
body or as an SSE stream. The client going away at any point cancels the generation.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from autoglm.api.metrics import Metrics
from autoglm.api.passthrough import check_minimal, forward
from autoglm.api.schemas import ChatCompletionRequest, CompletionRequest, parse
from autoglm.api.streaming import DONE, ClientDisconnected, SSEResponse, race_disconnect, sse
from autoglm.engine.base import Delta, Engine, Event, Finished, GenerationRequest, Started
from autoglm.engine.upstream.client import UpstreamEngine
from autoglm.security.access import PROJECT_HEADER
from autoglm.errors import EngineError, InvalidRequestError, ModelNotFoundError

log = logging.getLogger("autoglm.api")


async def read_json(request: Request) -> tuple[bytes, dict[str, Any]]:
    """(raw body, parsed object); anything but a JSON object is a 400."""
    body = await request.body()
    if not body:
        raise InvalidRequestError("The request body is empty; send a JSON object.")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(
            f"We could not parse the JSON body of your request: {exc.args[0]}"
        ) from None
    if not isinstance(data, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    return body, data


def engine_for(request: Request, model: Any) -> Engine:
    if not isinstance(model, str) or not model:
        if model is None:
            raise InvalidRequestError("'model' is a required property", param="model")
        raise InvalidRequestError("Invalid value for 'model': must be a string", param="model")
    engine = request.app.state.engines.get(model)
    if engine is None:
        raise ModelNotFoundError(
            f"The model '{model}' does not exist or you do not have access to it.", param="model"
        )
    request.scope["state"]["model"] = model
    return engine


async def authorized_engine(request: Request, model: Any) -> Engine:
    """The model's engine, if the caller may use it; otherwise the same 404 as unknown."""
    engine = engine_for(request, model)
    await request.app.state.authz.require_model(
        request.scope["state"]["principal"], model, request.headers.get(PROJECT_HEADER))
    return engine


@dataclass
class _Call:
    """One generation in flight: what the response formats need to know."""

    kind: str
    id: str
    model: str
    created: int
    include_usage: bool
    started: float
    metrics: Metrics

    def usage(self, fin: Finished) -> dict[str, int]:
        return {
            "prompt_tokens": fin.prompt_tokens,
            "completion_tokens": fin.completion_tokens,
            "total_tokens": fin.prompt_tokens + fin.completion_tokens,
        }

    def account(self, fin: Finished) -> None:
        self.metrics.prompt_tokens.labels(self.model).inc(fin.prompt_tokens)
        self.metrics.completion_tokens.labels(self.model).inc(fin.completion_tokens)

    def first_token(self) -> None:
        self.metrics.ttft.labels(self.model).observe(time.perf_counter() - self.started)

    # --- chunk shapes ------------------------------------------------------------------
    def chunk(self, text: str | None, finish: str | None, first: bool = False) -> dict[str, Any]:
        if self.kind == "chat":
            delta: dict[str, Any] = {}
            if first:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            obj = "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": None, "choices": [choice]}

    def usage_chunk(self, fin: Finished) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": None, "choices": [], "usage": self.usage(fin)}

    def whole(self, text: str, fin: Finished) -> dict[str, Any]:
        if self.kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": text,
                                              "refusal": None},
                      "logprobs": None, "finish_reason": fin.finish_reason}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None,
                      "finish_reason": fin.finish_reason}
            obj = "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": None, "choices": [choice], "usage": self.usage(fin)}


async def _frames(call: _Call, events: AsyncIterator[Event]) -> AsyncIterator[bytes]:
    if call.kind == "chat":
        yield sse(call.chunk("", None, first=True))
    first = True
    async for ev in events:
        if isinstance(ev, Delta):
            if first:
                call.first_token()
                first = False
            yield sse(call.chunk(ev.text, None))
        elif isinstance(ev, Finished):
            call.account(ev)
            yield sse(call.chunk(None if call.kind == "chat" else "", ev.finish_reason))
            if call.include_usage:
                yield sse(call.usage_chunk(ev))
            yield DONE
            return
    raise EngineError("the engine ended the stream without finishing")


async def _collect(call: _Call, events: AsyncIterator[Event]) -> dict[str, Any]:
    parts: list[str] = []
    async for ev in events:
        if isinstance(ev, Delta):
            if not parts:
                call.first_token()
            parts.append(ev.text)
        elif isinstance(ev, Finished):
            call.account(ev)
            return call.whole("".join(parts), ev)
    raise EngineError("the engine ended the answer without finishing")


async def _run(request: Request, call: _Call, engine: Engine, gen: GenerationRequest,
               stream: bool) -> Response:
    events = engine.generate(gen)
    try:
        first = await race_disconnect(request.receive, anext(events))
    except ClientDisconnected:
        return Response(status_code=499)
    if not isinstance(first, Started):
        raise EngineError("the engine did not acknowledge the request")
    if stream:
        return SSEResponse(_frames(call, events))  # type: ignore[return-value]
    try:
        body = await race_disconnect(request.receive, _collect(call, events))
    except ClientDisconnected:
        return Response(status_code=499)
    return Response(orjson.dumps(body), media_type="application/json")


def _owner(request: Request) -> str:
    principal = request.scope["state"].get("principal")
    return principal.id if principal is not None else "anonymous"


async def _serve(request: Request, engine: Engine, gen: GenerationRequest,
                 req: ChatCompletionRequest | CompletionRequest, t0: float) -> Response:
    if request.app.state.settings.log_prompts:
        log.info("prompt", extra={"messages": gen.messages, "prompt": gen.prompt})
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    prefix = "chatcmpl" if gen.kind == "chat" else "cmpl"
    call = _Call(gen.kind, f"{prefix}-{uuid.uuid4().hex}", req.model, int(time.time()),
                 include_usage, t0, request.app.state.metrics)
    return await _run(request, call, engine, gen, req.stream)


async def chat_completions(request: Request) -> Response:
    t0 = time.perf_counter()
    raw, data = await read_json(request)
    engine = await authorized_engine(request, data.get("model"))
    if isinstance(engine, UpstreamEngine):
        stream = check_minimal("chat", data)
        return await forward(request, engine, "/chat/completions", data, raw, stream, t0)
    req: ChatCompletionRequest = parse(ChatCompletionRequest, data)
    req.check()
    gen = GenerationRequest(
        kind="chat", messages=req.wire_messages(), max_tokens=req.effective_max_tokens(),
        sampling=req.sampling(req.json_object), stop=req.stop_list(), owner=_owner(request),
    )
    return await _serve(request, engine, gen, req, t0)


async def completions(request: Request) -> Response:
    t0 = time.perf_counter()
    raw, data = await read_json(request)
    engine = await authorized_engine(request, data.get("model"))
    if isinstance(engine, UpstreamEngine):
        stream = check_minimal("completion", data)
        return await forward(request, engine, "/completions", data, raw, stream, t0)
    req: CompletionRequest = parse(CompletionRequest, data)
    req.check()
    gen = GenerationRequest(
        kind="completion", prompt=req.prompt_text(), max_tokens=req.max_tokens,
        sampling=req.sampling(False), stop=req.stop_list(), owner=_owner(request),
    )
    return await _serve(request, engine, gen, req, t0)
