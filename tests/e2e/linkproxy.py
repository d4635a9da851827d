"""A TCP proxy on 127.0.0.1 standing for the network link between an edge and its centre.

``cut()`` takes the link down: open connections are closed and new ones are closed as soon
as they are accepted, until ``restore()``. ``lose_answer(prefix)``: the next request whose
head starts with ``prefix`` reaches the centre, but its answer never comes back (the link
fails after the centre acted on it).
"""

from __future__ import annotations

import socket
import threading
import time

from tests.e2e.support import free_port


class LinkProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.down = False
        self.lost = 0  # answers dropped by lose_answer
        self.refused = 0  # connections closed while the link was down
        self._lose: str | None = None
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            self.down = True
            socks, self._open = list(self._open), set()
        _close(*socks)

    def restore(self) -> None:
        with self._lock:
            self.down = False

    def lose_answer(self, prefix: str) -> None:
        with self._lock:
            self._lose = prefix

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                down = self.down
                if down:
                    self.refused += 1
            if down:
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            state = {"drop": False}
            with self._lock:
                self._open |= {client, upstream}
            threading.Thread(target=self._up, args=(client, upstream, state),
                             daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client, state),
                             daemon=True).start()

    def _up(self, src: socket.socket, dst: socket.socket, state: dict) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    if self._lose is not None and data.startswith(self._lose.encode()):
                        self._lose = None
                        state["drop"] = True
                dst.sendall(data)
        except OSError:
            pass
        _close(src, dst)

    def _down(self, src: socket.socket, dst: socket.socket, state: dict) -> None:
        try:
            while data := src.recv(65536):
                if state["drop"]:  # the centre answered: that answer is lost on the way
                    time.sleep(0.2)  # let the rest of it arrive here, then fail the link
                    with self._lock:
                        self.lost += 1
                    break
                dst.sendall(data)
        except OSError:
            pass
        _close(src, dst)

    def close(self) -> None:
        self._server.close()
        self.cut()


def _close(*socks: socket.socket) -> None:
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()
