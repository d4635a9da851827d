"""A TCP proxy on 127.0.0.1 that can cut one connection mid-answer, for tests of resume.

``CutProxy(port).arm(after_bytes)``: the next connection whose answer passes ``after_bytes``
is closed at that point, both ways (a network cut). Every request's head that went through
is kept (``requests``), so a test can see a ``Range`` a client sent after the cut.
"""

from __future__ import annotations

import socket
import threading

from tests.e2e.support import free_port


class CutProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[str] = []  # request heads, as sent
        self.cuts = 0
        self._cut_after: int | None = None
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, after_bytes: int) -> None:
        with self._lock:
            self._cut_after = after_bytes

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            self._open += [client, upstream]
            threading.Thread(target=self._up, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client), daemon=True).start()

    def _up(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if b"HTTP/1.1\r\n" in data:
                    self.requests.append(data.split(b"\r\n\r\n", 1)[0].decode("latin-1"))
                dst.sendall(data)
        except OSError:
            pass
        _close(src, dst)

    def _down(self, src: socket.socket, dst: socket.socket) -> None:
        sent = 0
        try:
            while data := src.recv(65536):
                with self._lock:
                    limit = self._cut_after
                    if limit is not None and sent + len(data) > limit:
                        self._cut_after = None
                        self.cuts += 1
                        dst.sendall(data[:limit - sent])
                        break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        _close(src, dst)

    def close(self) -> None:
        self._server.close()
        for s in self._open:
            _close(s)


def _close(*socks: socket.socket) -> None:
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()
