"""Client-disconnect awareness for long requests, and the SSE response.

Waiting for a slot, generating a JSON answer, or streaming: each runs next to a watcher
of ``http.disconnect``. When the client goes away, the work is cancelled at once, which
closes the engine connection and frees the slot.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from starlette.types import Receive, Scope, Send

from autoglm.api.errors import to_error
from autoglm.errors import AutoGLMError
from autoglm.pipeline.openai_format import sse
from autoglm.pipeline.service import Answer

log = logging.getLogger("autoglm.api")
T = TypeVar("T")



class ClientDisconnected(Exception):
    """The client closed the connection; nobody is left to answer."""


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


WATCH_AFTER_S = 0.02


async def race_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """Await ``work`` in this task; if the client disconnects first, cancel it and raise.

    The watcher of ``http.disconnect`` starts only after ``WATCH_AFTER_S``: most requests
    through a fast upstream are done by then and cost one timer instead of a task. A
    client gone earlier is seen the moment the watcher starts.
    """
    current = asyncio.current_task()
    if current is None:
        raise RuntimeError("race_disconnect must run inside a task")
    loop = asyncio.get_running_loop()
    watcher: list[asyncio.Task[None]] = []

    def on_disconnect(task: asyncio.Future[None]) -> None:
        if not task.cancelled() and task.exception() is None:
            current.cancel()

    def watch() -> None:
        task = loop.create_task(_wait_disconnect(receive))
        task.add_done_callback(on_disconnect)
        watcher.append(task)

    timer = loop.call_later(WATCH_AFTER_S, watch)
    try:
        return await work
    except asyncio.CancelledError:
        if watcher and watcher[0].done() and not watcher[0].cancelled() \
                and watcher[0].exception() is None:
            current.uncancel()
            raise ClientDisconnected() from None
        raise
    finally:
        timer.cancel()
        if watcher:
            watcher[0].remove_done_callback(on_disconnect)
            watcher[0].cancel()


class SSEResponse:
    """Streams pre-encoded SSE frames of an answer; an error mid-stream ends it with an
    error event. However the stream ends, the answer is closed (its slot freed) here."""

    def __init__(self, answer: Answer, frames: AsyncIterator[bytes]) -> None:
        self.answer = answer
        self.frames = frames

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        try:
            await race_disconnect(receive, self._pump(send))
        except ClientDisconnected:
            log.info("client disconnected during stream; generation cancelled")
            return
        finally:
            await self.answer.aclose()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _pump(self, send: Send) -> None:
        try:
            async for frame in self.frames:
                await send({"type": "http.response.body", "body": frame, "more_body": True})
        except OSError:  # the transport is gone
            raise
        except Exception as exc:  # noqa: BLE001 - the stream's own error event
            err = to_error(exc)
            if isinstance(exc, AutoGLMError):
                log.error("stream ended by error", extra={"error": err.message, "code": err.code})
            await send({"type": "http.response.body", "body": sse(err.to_dict()),
                        "more_body": True})
        finally:
            await self.frames.aclose()  # type: ignore[attr-defined]


_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"x-accel-buffering", b"no"),
]
