"""Where one request's events go: written by the decode thread straight to its socket.

Each decode step costs one small non-blocking write per busy slot, with no wake-up of
the event loop, so the engine adds almost nothing per token. If the socket ever cannot
take a whole write (a slow reader), the rest and everything after it goes through the
event loop's transport instead, in order. The lock makes closing safe: after ``close``
the decode thread never touches the file descriptor again, even if its number is
reused by a new connection.
"""

from __future__ import annotations

import asyncio
import os
import threading

import orjson


class SocketSink:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._loop = asyncio.get_running_loop()
        self._fd = writer.get_extra_info("socket").fileno()
        self._lock = threading.Lock()
        self._closed = False
        self._direct = True
        self.finished: asyncio.Future[None] = self._loop.create_future()

    def start_direct(self) -> None:
        """Direct writes only while the transport holds nothing unsent (keeps order)."""
        self._direct = self._writer.transport.get_write_buffer_size() == 0

    def send(self, events: list[dict]) -> None:
        """Called on the decode thread."""
        data = b"".join([orjson.dumps(e) + b"\n" for e in events])
        with self._lock:
            if self._closed:
                return
            if self._direct:
                try:
                    written = os.write(self._fd, data)
                except BlockingIOError:
                    written = 0
                except OSError:  # the gateway is gone; the hang-up path cleans up
                    written = len(data)
                data = data[written:]
                if data:
                    self._direct = False
        if data:
            self._loop.call_soon_threadsafe(self._write_later, data)
        if events[-1]["ev"] in ("done", "error"):
            self._loop.call_soon_threadsafe(self._finish)

    def _write_later(self, data: bytes) -> None:
        if not self._closed:
            self._writer.write(data)

    def _finish(self) -> None:
        if not self.finished.done():
            self.finished.set_result(None)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._writer.close()
