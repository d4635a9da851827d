"""Answers from upstream engines: JSON as received, SSE passed through chunk by chunk.

Nothing is buffered on a stream: each chunk the upstream sends is sent on at once. A
client that goes away aborts the upstream request (the upstream stops generating); an
upstream that fails mid-stream ends the stream with an error event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from autoglm.api.metrics import Metrics
from autoglm.api.streaming import ClientDisconnected, race_disconnect, sse
from autoglm.engine.upstream.client import Opened, UpstreamEngine, upstream_client_error
from autoglm.errors import InvalidRequestError, UpstreamError, UpstreamTimeoutError

log = logging.getLogger("autoglm.api")


def check_minimal(kind: str, payload: dict[str, Any]) -> bool:
    """What we check before forwarding; the upstream validates the rest. Returns stream."""
    stream = payload.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequestError("Invalid value for 'stream': must be a boolean", param="stream")
    if kind == "chat":
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequestError("'messages' must be a non-empty array", param="messages")
    elif "prompt" not in payload:
        raise InvalidRequestError("'prompt' is a required property", param="prompt")
    return stream


def _account(metrics: Metrics, model: str, body: bytes) -> None:
    try:
        usage = orjson.loads(body).get("usage") or {}
        metrics.prompt_tokens.labels(model).inc(int(usage.get("prompt_tokens") or 0))
        metrics.completion_tokens.labels(model).inc(int(usage.get("completion_tokens") or 0))
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        pass


async def forward(request: Request, engine: UpstreamEngine, path: str, payload: dict[str, Any],
                  raw: bytes, stream: bool, t0: float) -> Response:
    try:
        opened = await race_disconnect(request.receive, engine.open(path, payload, raw))
    except ClientDisconnected:
        return Response(status_code=499)
    resp = opened.response
    metrics: Metrics = request.app.state.metrics
    if resp.status >= 400:
        body = await resp.read()
        opened.release()
        raise upstream_client_error(resp.status, body)
    content_type = resp.headers.get("Content-Type", "application/json")
    if stream and content_type.startswith("text/event-stream"):
        return PassthroughStream(opened, metrics, engine.model.id, t0)  # type: ignore[return-value]
    try:
        body = await race_disconnect(request.receive, resp.read())
    except ClientDisconnected:
        opened.release(abort=True)
        return Response(status_code=499)
    except asyncio.TimeoutError:
        opened.release(failure="timeout reading the answer")
        raise UpstreamTimeoutError(
            f"model '{engine.model.id}': the upstream did not finish in time") from None
    except aiohttp.ClientError as exc:
        opened.release(failure=f"read: {type(exc).__name__}")
        raise UpstreamError(f"model '{engine.model.id}': the upstream connection broke") from None
    opened.release()
    if resp.status == 200:
        metrics.ttft.labels(engine.model.id).observe(time.perf_counter() - t0)
        _account(metrics, engine.model.id, body)
    return Response(body, status_code=resp.status, media_type=content_type)


class PassthroughStream:
    def __init__(self, opened: Opened, metrics: Metrics, model: str, t0: float) -> None:
        self.opened = opened
        self.metrics = metrics
        self.model = model
        self.t0 = t0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"text/event-stream; charset=utf-8"),
                   (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        try:
            await race_disconnect(receive, self._pump(send))
        except ClientDisconnected:
            self.opened.release(abort=True)
            log.info("client disconnected during stream; upstream request aborted")
            return
        finally:
            self.opened.release()  # no-op when already released
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _pump(self, send: Send) -> None:
        first = True
        try:
            async for chunk in self.opened.response.content.iter_any():
                if first:
                    self.metrics.ttft.labels(self.model).observe(time.perf_counter() - self.t0)
                    first = False
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            reason = "timeout" if isinstance(exc, asyncio.TimeoutError) else type(exc).__name__
            rest = _salvage(self.opened.response.content)
            if rest:  # what arrived together with the break still goes to the client
                await send({"type": "http.response.body", "body": rest, "more_body": True})
            self.opened.release(failure=f"stream: {reason}")
            err = UpstreamError(f"model '{self.model}': the upstream stream broke off")
            log.error("upstream stream ended by error", extra={"model": self.model,
                                                               "reason": reason})
            await send({"type": "http.response.body", "body": sse(err.to_dict()),
                        "more_body": True})


def _salvage(content: aiohttp.StreamReader) -> bytes:
    """Bytes received before the connection broke. aiohttp raises the stored error before
    handing out its buffer, so read the buffer directly (if this aiohttp still has it)."""
    read_nowait = getattr(content, "_read_nowait", None)
    try:
        return bytes(read_nowait(-1)) if read_nowait else b""
    except Exception:  # noqa: BLE001 - best effort on a broken stream
        return b""
