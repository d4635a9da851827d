"""``POST /v1/chat/completions`` and ``POST /v1/completions``: thin HTTP adapters.

The body and the request context go to the inference service (``pipeline/``), which
runs every stage and the engine; the answer comes back as one JSON body or as an SSE
stream. The client going away at any point cancels the work, and frees its slot.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from autoglm.api.streaming import ClientDisconnected, SSEResponse, race_disconnect
from autoglm.pipeline.context import RequestContext
from autoglm.pipeline.openai_format import OpenAIEncoder
from autoglm.pipeline.request import InferenceRequest, Kind
from autoglm.pipeline.service import Answer, InferenceService

_JSON = "application/json"


async def _answer(service: InferenceService, ctx: RequestContext,
                  req: InferenceRequest) -> tuple[OpenAIEncoder, Answer | dict[str, Any]]:
    """The stream to send, or (for JSON) the whole answer; one disconnect watcher."""
    answer = await service.open(ctx, req)
    enc = OpenAIEncoder(req, answer)
    if req.stream and answer.started.raw is None:  # an upstream may answer JSON anyway
        return enc, answer
    return enc, await enc.collect(answer)


async def _infer(request: Request, kind: Kind) -> Response:
    ctx: RequestContext = request.scope["state"]["ctx"]
    req = InferenceRequest(kind, raw=await request.body())
    try:
        enc, result = await race_disconnect(
            request.receive, _answer(request.app.state.service, ctx, req))
    except ClientDisconnected:
        return Response(status_code=499)
    if isinstance(result, Answer):
        return SSEResponse(result, enc.frames(result))  # type: ignore[return-value]
    return Response(orjson.dumps(result), media_type=_JSON)


async def chat_completions(request: Request) -> Response:
    return await _infer(request, "chat")


async def completions(request: Request) -> Response:
    return await _infer(request, "completion")
