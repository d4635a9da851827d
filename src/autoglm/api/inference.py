"""``POST /v1/chat/completions`` and ``POST /v1/completions``: thin HTTP adapters.

The body and the request context go to the inference service (``pipeline/``), which
runs every stage and the engine; the answer comes back as one JSON body or as an SSE
stream. The client going away at any point cancels the work, and frees its slot.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from autoglm.api.streaming import ClientDisconnected, SSEResponse, race_disconnect
from autoglm.pipeline.context import RequestContext
from autoglm.pipeline.openai_format import OpenAIEncoder
from autoglm.pipeline.request import InferenceRequest, Kind
from autoglm.pipeline.service import Answer, InferenceService

async def _answer(service: InferenceService, ctx: RequestContext,
                  req: InferenceRequest) -> tuple[OpenAIEncoder, Answer | dict[str, Any]]:
    """The stream to send, or (for JSON) the whole answer; one disconnect watcher."""
    answer = await service.open(ctx, req)
    enc = OpenAIEncoder(req, answer)
    if req.stream and answer.started.raw is None:  # an upstream may answer JSON anyway
        return enc, answer
    return enc, await enc.collect(answer)


class InferenceEndpoint:
    """A pure ASGI endpoint: the body, the context the edge middleware made, and the
    service; no request or response objects on the hottest path of the gateway."""

    def __init__(self, kind: Kind, name: str, doc: str) -> None:
        self.kind = kind
        self.__name__ = name  # the OpenAPI operation id
        self.__doc__ = doc

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx: RequestContext = scope["state"]["ctx"]
        for key, value in scope["headers"]:  # the response cache, asked for per request
            if key == b"x-autoglm-cache":
                ctx.cache = value.decode("latin-1")
                break
        raw = await _read_body(receive)
        if raw is None:
            return  # the client left while sending: counted as 499
        req = InferenceRequest(self.kind, raw=raw)
        try:
            enc, result = await race_disconnect(
                receive, _answer(scope["app"].state.service, ctx, req))
        except ClientDisconnected:
            return
        if isinstance(result, Answer):
            await SSEResponse(result, enc.frames(result))(scope, receive, send)
            return
        body = orjson.dumps(result)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


chat_completions = InferenceEndpoint(
    "chat", "chat_completions", "Create a chat completion (JSON, or SSE with stream).")
completions = InferenceEndpoint(
    "completion", "completions", "Create a text completion (JSON, or SSE with stream).")
