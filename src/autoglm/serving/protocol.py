"""uvicorn's HTTP protocol with deadlines, against slow clients (slow-loris).

A connection gets ``header_timeout_s`` from its first byte (or from accepting it) to send a
request's headers, then ``body_timeout_s`` for the body; past either deadline it is closed.
Between requests uvicorn's own keep-alive timeout applies, and answering takes as long as
the answer takes (no deadline once the request is in). Beyond ``max_connections`` open at
once, a new connection gets an OpenAI-shaped 503 and is closed. Together they keep a crowd
of half-open connections from holding the gateway.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("autoglm.access")


_FULL_BODY = (b'{"error":{"message":"The server has too many connections open; retry shortly.",'
              b'"type":"server_error","param":null,"code":"too_many_connections"}}')
FULL = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
        b"retry-after: 1\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s"
        % (len(_FULL_BODY), _FULL_BODY))


class DeadlineProtocol(HttpToolsProtocol):
    header_timeout_s = 10.0
    body_timeout_s = 60.0
    max_connections = 4096

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None

    def _arm(self, seconds: float) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(seconds, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:  # the OpenAI shape, then close
            transport.write(FULL)
            transport.close()
            return
        self._arm(self.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm(self.header_timeout_s)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._arm(self.body_timeout_s)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()


def protocol_with_deadlines(header_timeout_s: float, body_timeout_s: float,
                            max_connections: int) -> type:
    return type("DeadlineHttpProtocol", (DeadlineProtocol,),
                {"header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s,
                 "max_connections": max_connections})
