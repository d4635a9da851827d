"""A webhook receiver on 127.0.0.1 for the tests: a real HTTP server in a thread that keeps
what it was sent, and answers each POST with the next status of ``statuses`` (then 200)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int


@dataclass
class Receiver:
    url: str
    statuses: list[int] = field(default_factory=list)
    got: list[Received] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, count: int, timeout_s: float = 30.0) -> list[Received]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.got) >= count, timeout_s)
            return list(self.got)


@contextmanager
def receiver(statuses: list[int] | None = None) -> Iterator[Receiver]:
    box: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # http.server's name for it
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            r = box[0]
            with r.arrived:  # kept before the answer: the client sees it once answered
                status = r.statuses.pop(0) if r.statuses else 200
                r.got.append(Received({k.lower(): v for k, v in self.headers.items()}, body,
                                      status))
                r.arrived.notify_all()
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    box.append(Receiver(f"http://127.0.0.1:{server.server_port}/hooks/autoglm",
                        list(statuses or [])))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield box[0]
    finally:
        server.shutdown()
        server.server_close()
