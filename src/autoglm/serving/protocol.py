"""uvicorn's HTTP protocol with deadlines, against slow clients (slow-loris).

A connection gets ``header_timeout_s`` from its first byte (or from accepting it) to send a
request's headers, then ``body_timeout_s`` for the body; past either deadline it is closed.
Between requests uvicorn's own keep-alive timeout applies, and answering takes as long as
the answer takes (no deadline once the request is in). Beyond ``max_connections`` open at
once, a new connection gets an OpenAI-shaped 503 and is closed. Together they keep a crowd
of half-open connections from holding the gateway.

Two costs per request are cut here, both measured under ``bench/gateway.py``:

- the deadline is one timer per connection, not two per request: arming it stores the
  deadline, and the timer, when it fires early (the deadline moved on), sleeps again for
  the rest. A new timer is made only when a deadline comes sooner than the one pending.
- what the server writes in one turn of the event loop leaves in one ``send``
  (``CoalescingTransport``): uvicorn writes a response's head and its body separately, two
  system calls and two TCP segments for every JSON answer; now one.
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


class CoalescingTransport:
    """A transport whose writes made in one turn of the event loop are sent together, at the
    end of that turn (or at once past ``FLUSH_BYTES``). ``close`` sends what is pending
    first; ``abort`` drops it. Everything else is the wrapped transport's."""

    FLUSH_BYTES = 64 * 1024

    __slots__ = ("_transport", "_loop", "_parts", "_size")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._parts: list[bytes] | None = None
        self._size = 0

    def write(self, data: bytes) -> None:
        parts = self._parts
        if parts is None:
            self._parts = [data]
            self._size = len(data)
            self._loop.call_soon(self.flush)
        else:
            parts.append(data)
            self._size += len(data)
        if self._size >= self.FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        parts, self._parts = self._parts, None
        if parts and not self._transport.is_closing():
            self._transport.write(parts[0] if len(parts) == 1 else b"".join(parts))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._parts = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, pause_reading, ...
        return getattr(self._transport, name)


class DeadlineProtocol(HttpToolsProtocol):
    header_timeout_s = 10.0
    body_timeout_s = 60.0
    max_connections = 4096

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # when the pending timer fires
        self._deadline_at: float | None = None  # None: no deadline now

    def _arm(self, seconds: float) -> None:
        at = self._deadline_at = self.loop.time() + seconds
        if self._timer is None or at < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = at
            self._timer = self.loop.call_at(at, self._expire)

    def _disarm(self) -> None:
        self._deadline_at = None  # a pending timer finds nothing to do

    def _expire(self) -> None:
        self._timer = None
        at = self._deadline_at
        if at is None:
            return
        if self.loop.time() < at:  # moved on since this timer was set: wait for the rest
            self._timer_at = at
            self._timer = self.loop.call_at(at, self._expire)
            return
        self._deadline_at = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
        if len(self.connections) > self.max_connections:  # the OpenAI shape, then close
            transport.write(FULL)
            transport.close()
            return
        self._arm(self.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline_at = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
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
