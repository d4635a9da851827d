"""Slow clients cannot exhaust the gateway: 500 connections that send their headers a byte
at a time are held open while ordinary requests keep succeeding, and each is closed once
its header deadline passes; beyond max_connections a new connection gets a clean 503."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from .support import MODEL, ServerProcess

pytestmark = pytest.mark.e2e

HEADER_TIMEOUT_S = 3.0
SLOW = 500


@pytest.fixture(scope="module")
def guarded(start_server, stop_server) -> Iterator[ServerProcess]:
    srv = start_server("slow-clients", args=["--slots", "2"],
                       env={"AUTOGLM_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
                            "AUTOGLM_MAX_CONNECTIONS": "700"})
    yield srv
    stop_server(srv)


def _slow_loris(port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        socks.append(s)
    return socks


def _closed_by_server(s: socket.socket) -> bool:
    s.settimeout(0.01)
    try:
        return s.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def test_slow_connections_are_closed_and_others_are_served(guarded: ServerProcess) -> None:
    srv = guarded
    socks = _slow_loris(srv.port, SLOW)
    stop = threading.Event()

    def dribble() -> None:  # one more header byte now and then: never finishing
        while not stop.is_set():
            for s in socks:
                try:
                    s.send(b"X")
                except OSError:
                    pass
            stop.wait(0.5)

    feeder = threading.Thread(target=dribble)
    feeder.start()
    try:
        t0 = time.monotonic()
        with srv.client(auth=True, timeout=30) as http:
            for _ in range(5):  # ordinary requests, while 500 slow ones are open
                r = http.post("/v1/chat/completions", json={
                    "model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
                    "max_tokens": 2})
                assert r.status_code == 200, r.text
        served_in = time.monotonic() - t0
        deadline = time.monotonic() + HEADER_TIMEOUT_S + 5
        while time.monotonic() < deadline:
            if all(_closed_by_server(s) for s in socks):
                break
            time.sleep(0.2)
        closed = sum(_closed_by_server(s) for s in socks)
    finally:
        stop.set()
        feeder.join(5)
        for s in socks:
            s.close()
    assert served_in < 15, served_in
    assert closed == SLOW, f"only {closed} of {SLOW} slow connections were closed"


def test_header_deadline_holds_for_a_later_request_on_a_kept_connection(
        guarded: ServerProcess) -> None:
    """One timer per connection: after a finished request, the next one's headers still get
    exactly the header deadline (the timer set for the first request wakes early, finds the
    deadline moved on, and sleeps again for the rest)."""
    s = socket.create_connection(("127.0.0.1", guarded.port), timeout=10)
    try:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        seen = b""
        while b"\r\n\r\n" not in seen:
            seen += s.recv(4096)
        head, _, body = seen.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head[:100]
        length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        while len(body) < length:  # the whole answer read: what comes next is the close
            body += s.recv(4096)
        time.sleep(1.0)  # part of the first request's header deadline passes unused
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finished
        t0 = time.monotonic()
        closed_at = None
        while time.monotonic() - t0 < HEADER_TIMEOUT_S + 5:
            if _closed_by_server(s):
                closed_at = time.monotonic() - t0
                break
            time.sleep(0.05)
    finally:
        s.close()
    assert closed_at is not None, "the unfinished request was never cut off"
    assert HEADER_TIMEOUT_S - 0.3 <= closed_at <= HEADER_TIMEOUT_S + 1.5, closed_at


def test_beyond_max_connections_a_new_one_gets_a_clean_503(guarded: ServerProcess) -> None:
    srv = guarded
    socks = _slow_loris(srv.port, 720)
    try:
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        s.settimeout(5)
        data = s.recv(4096)
        s.close()
    finally:
        for held in socks:
            held.close()
    assert data.startswith(b"HTTP/1.1 503"), data[:80]
    assert b"retry-after: 1" in data and b'"code":"too_many_connections"' in data
