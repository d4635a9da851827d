"""A small HTTP/1.1 client for upstream servers: a keep-alive pool per origin, on asyncio's
transport layer with the ``httptools`` parser (the one uvicorn already uses).

Why not aiohttp: on the gateway's hot path, the HTTP client was the largest part of the CPU
each proxied request costs (about 230 µs of a bare proxy's 340 on the 2-core machine, most
of it in general-purpose machinery: cookie jars, tracing hooks, redirects, multipart, a
response object per request with its own reader). This client does only what the upstream
pool needs: POST or GET with a body, a response read whole or chunk by chunk, connect /
first-byte / between-chunks / total timeouts, keep-alive reuse, and errors that say whether
anything was received yet (the pool retries only before the first byte).

Errors: ``ConnectError`` (nothing received: refused, reset, a pooled connection that the
server had closed), ``BrokenError`` (the connection broke or the answer was malformed after
the response started), ``asyncio.TimeoutError`` (a deadline passed).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import urlsplit

import httptools

READ_BUFFER_HIGH = 256 * 1024  # pause reading from the upstream beyond this much unread


class HttpError(Exception):
    pass


class ConnectError(HttpError):
    """Nothing of a response was received: it is safe to try another server."""


class BrokenError(HttpError):
    """The response started, then the connection broke or the bytes made no sense."""


@dataclass(frozen=True)
class Timeouts:
    connect: float
    first_byte: float  # until the response headers, and the longest gap between chunks
    total: float


class Origin(NamedTuple):  # a tuple: hashed and compared in C (a pool key, per request)
    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, url: str) -> tuple[Origin, str]:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(parts.scheme, parts.hostname, port), target

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


class Response:
    """A response whose status and headers are in; the body is read with ``read`` or
    ``chunks``. ``release`` when done (the connection goes back to the pool if it can),
    ``close`` to drop the connection (the upstream then stops generating)."""

    def __init__(self, conn: _Connection, deadline: float, gap: float) -> None:
        self._conn = conn
        self._deadline = deadline
        self._gap = gap
        self.status = 0
        self.headers: dict[str, str] = {}
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._complete = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._released = False

    # --- fed by the connection -------------------------------------------------------------
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > READ_BUFFER_HIGH:
            self._conn.pause()
        self._wake()

    def _finish(self) -> None:
        self._complete = True
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if not self._complete and self._error is None:
            self._error = exc
        self._wake()

    # --- read by the caller ----------------------------------------------------------------
    async def _wait(self) -> None:
        timeout = min(self._gap, self._deadline - time.monotonic())
        if timeout <= 0:
            raise asyncio.TimeoutError()
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _take(self) -> bytes:
        data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        self._conn.resume()
        return data

    async def chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive (what arrived before a break comes first)."""
        while True:
            if self._chunks:
                yield self._take()
                continue
            if self._complete:
                return
            if self._error is not None:
                raise self._error
            await self._wait()

    async def read(self) -> bytes:
        parts = [chunk async for chunk in self.chunks()]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._conn.done(reusable=self._complete and self._error is None)

    def close(self) -> None:
        if not self._released:
            self._released = True
            self._conn.done(reusable=False)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(asyncio.TimeoutError())


class _Connection(asyncio.Protocol):
    """One keep-alive connection; at most one response in flight."""

    def __init__(self, pool: HttpClient, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.got_bytes = False  # of the current response
        self.keep_alive = True
        self.closed = False
        self.idle_since = 0.0
        self.reused = False
        self._paused = False

    # --- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._break(BrokenError("the upstream sent a malformed HTTP response"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        response = self.response
        if response is not None and not response._complete:
            if self.got_bytes:
                response._fail(BrokenError("the upstream closed the connection mid-answer"))
            else:
                response._fail(ConnectError("the upstream closed the connection"))
        self.pool._forget(self)

    # --- httptools callbacks ---------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        if self.response is not None:
            self.response.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        if self.response is not None:
            self.response.status = self.parser.get_status_code()
            self.keep_alive = self.parser.should_keep_alive()
            self.response._wake()

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response._feed(body)

    def on_message_complete(self) -> None:
        if self.response is not None:
            self.response._finish()

    # --- used by the pool ------------------------------------------------------------------
    def send(self, data: bytes, response: Response) -> None:
        if self.transport is None or self.closed or self.transport.is_closing():
            raise ConnectError("connection closed")
        self.response = response
        self.got_bytes = False
        self.transport.write(data)

    def pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def done(self, reusable: bool) -> None:
        self.response = None
        self.resume()
        if reusable and self.keep_alive and not self.closed:
            self.pool._put(self)
        else:
            self.close()

    def _break(self, exc: BaseException) -> None:
        if self.response is not None:
            self.response._fail(exc)
        self.close()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True
        self.pool._forget(self)


class HttpClient:
    """Keep-alive connections per origin, at most ``limit`` open at once in all."""

    def __init__(self, limit: int, timeouts: Timeouts, keepalive_s: float = 60.0) -> None:
        self.limit = limit
        self.timeouts = timeouts
        self.keepalive_s = keepalive_s
        self._idle: dict[Origin, deque[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._slots = asyncio.Semaphore(limit)
        self._ssl: ssl.SSLContext | None = None
        # (method, url) -> origin and the request line with its Host header: the few URLs
        # of the configured upstreams, parsed once rather than per request
        self._starts: dict[tuple[str, str], tuple[Origin, str]] = {}

    async def request(self, method: str, url: str, headers: dict[str, str], body: bytes = b"",
                      *, timeouts: Timeouts | None = None) -> Response:
        """Send; return once the status and headers are in (the body is still to read)."""
        t = timeouts or self.timeouts
        origin, start = self._start_of(method, url)
        head = [start, f"Content-Length: {len(body)}\r\n"]
        head += [f"{k}: {v}\r\n" for k, v in headers.items()]
        head.append("\r\n")
        data = "".join(head).encode("latin-1") + body
        deadline = time.monotonic() + t.total
        for attempt in range(2):  # a pooled connection the server had closed: once more, fresh
            conn = self._pooled(origin) if attempt == 0 else None
            if conn is None:
                conn = await self._connect(origin, t.connect)
            response = Response(conn, deadline, t.first_byte)
            try:
                conn.send(data, response)
                while not response.status:
                    if response._error is not None:
                        raise response._error
                    await response._wait()
            except ConnectError:
                response.close()
                if conn.reused and attempt == 0:
                    continue
                raise
            except BaseException:
                response.close()
                raise
            return response
        raise ConnectError("unreachable")  # the loop returns or raises

    def _start_of(self, method: str, url: str) -> tuple[Origin, str]:
        found = self._starts.get((method, url))
        if found is None:
            origin, target = Origin.of(url)
            found = (origin, f"{method} {target} HTTP/1.1\r\nHost: {origin.host_header}\r\n")
            if len(self._starts) >= 256:  # not a handful of upstreams: keep it bounded
                self._starts.clear()
            self._starts[(method, url)] = found
        return found

    def _pooled(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self.keepalive_s:
                conn.reused = True
                return conn
            conn.close()
        return None

    async def _connect(self, origin: Origin, timeout: float) -> _Connection:
        await self._slots.acquire()
        loop = asyncio.get_running_loop()
        ctx = None
        if origin.scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            ctx = self._ssl
        try:
            _, conn = await asyncio.wait_for(loop.create_connection(
                lambda: _Connection(self, origin), origin.host, origin.port, ssl=ctx), timeout)
        except asyncio.TimeoutError:
            self._slots.release()
            raise ConnectError(f"no connection within {timeout:g} s") from None
        except OSError as exc:
            self._slots.release()
            raise ConnectError(exc.strerror or type(exc).__name__) from None
        self._open.add(conn)
        return conn

    def _put(self, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        self._idle.setdefault(conn.origin, deque()).append(conn)

    def _forget(self, conn: _Connection) -> None:
        if conn in self._open:
            self._open.discard(conn)
            self._slots.release()
        idle = self._idle.get(conn.origin)
        if idle is not None:
            with contextlib.suppress(ValueError):
                idle.remove(conn)

    async def close(self) -> None:
        for conn in list(self._open):
            conn.close()
        self._idle.clear()
