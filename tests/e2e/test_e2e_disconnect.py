"""A client that hangs up frees its slot (or its place in the queue) at once.

One server with one slot and room for one waiter, so anything left behind blocks the
next request visibly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from .support import MODEL, ServerProcess

pytestmark = pytest.mark.e2e

PROMPT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"  # the model keeps counting: no early stop
LONG_MAX_TOKENS = 1500
FREED_WITHIN_S = 2.0


@pytest.fixture(scope="module")
def one_slot_server(start_server, stop_server) -> Iterator[ServerProcess]:
    srv = start_server("one-slot", args=["--slots", "1"], env={"AUTOGLM_MAX_QUEUE": "1"})
    yield srv
    stop_server(srv)


def _busy(srv: ServerProcess) -> float | None:
    return srv.metric("autoglm_busy_slots", model=MODEL)


def _queued(srv: ServerProcess) -> float | None:
    return srv.metric("autoglm_queue_depth", model=MODEL)


def _wait_for(probe, want: float, within: float) -> float | None:
    deadline = time.monotonic() + within
    value = probe()
    while value != want and time.monotonic() < deadline:
        time.sleep(0.05)
        value = probe()
    return value


def _long(stream: bool = False) -> dict:
    return {"model": MODEL, "prompt": PROMPT, "temperature": 0, "max_tokens": LONG_MAX_TOKENS,
            "stream": stream}


def _short_request_is_served_now(srv: ServerProcess, within: float = 5.0) -> None:
    """A 4-token answer arrives in seconds, not after an abandoned 1500-token one (~12 s)."""
    t0 = time.monotonic()
    with srv.client(auth=True, timeout=60) as http:
        r = http.post("/v1/completions", json={
            "model": MODEL, "prompt": PROMPT, "temperature": 0, "max_tokens": 4})
    assert r.status_code == 200, r.text
    assert time.monotonic() - t0 < within


def test_client_disconnect_frees_the_slot(one_slot_server: ServerProcess) -> None:
    srv = one_slot_server
    assert srv.metric("autoglm_slots", model=MODEL) == 1.0
    with srv.client(auth=True) as http:
        # Calibrate: how long does a token take here, right now?
        t0 = time.monotonic()
        r = http.post("/v1/completions", json={
            "model": MODEL, "prompt": PROMPT, "temperature": 0, "max_tokens": 64})
        per_token = (time.monotonic() - t0) / 64
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["finish_reason"] == "length", "the model stopped early"
    long_answer_s = LONG_MAX_TOKENS * per_token

    with srv.client(auth=True) as http:
        with http.stream("POST", "/v1/completions", json={
            "model": MODEL, "prompt": PROMPT, "temperature": 0,
            "max_tokens": LONG_MAX_TOKENS, "stream": True,
        }) as stream:
            assert stream.status_code == 200
            chunks = 0
            lines = stream.iter_lines()  # keep a reference: a dropped iterator hangs up
            for line in lines:
                if line.startswith("data:"):
                    chunks += 1
                    if chunks >= 3:
                        break
            assert _busy(srv) == 1.0, "the streaming request should hold the only slot"
        # leaving both blocks closes the response and the connection
    closed_at = time.monotonic()

    busy = _busy(srv)
    while busy != 0.0 and time.monotonic() - closed_at < FREED_WITHIN_S:
        time.sleep(0.05)
        busy = _busy(srv)
    assert busy == 0.0, f"slot still busy {FREED_WITHIN_S} s after the client hung up"

    # The engine freed its slot too: with one slot, a new request is served now,
    # not after the abandoned 1500-token answer.
    t0 = time.monotonic()
    with srv.client(auth=True, timeout=max(30.0, long_answer_s * 2)) as http:
        r = http.post("/v1/completions", json={
            "model": MODEL, "prompt": PROMPT, "temperature": 0, "max_tokens": 8})
    took = time.monotonic() - t0
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 8
    assert took < long_answer_s / 3, (
        f"short request took {took:.2f} s; the abandoned answer needed ~{long_answer_s:.1f} s"
    )
    assert _busy(srv) == 0.0


def test_abandoned_non_streamed_request_frees_the_slot(one_slot_server: ServerProcess) -> None:
    srv = one_slot_server
    with srv.client(auth=True, timeout=httpx.Timeout(30.0, read=1.0)) as http:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up after 1 s
            http.post("/v1/completions", json=_long())
    assert _wait_for(lambda: _busy(srv), 0.0, FREED_WITHIN_S) == 0.0
    _short_request_is_served_now(srv)


def test_full_queue_is_503_and_a_waiter_that_leaves_is_dropped(
    one_slot_server: ServerProcess,
) -> None:
    srv = one_slot_server
    with srv.client(auth=True) as holder:
        with holder.stream("POST", "/v1/completions", json=_long(stream=True)) as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()
            next(line for line in lines if line.startswith("data:"))
            assert _busy(srv) == 1.0

            # A second request waits for the slot, then its client gives up.
            outcome: list[BaseException | httpx.Response] = []

            def waiter() -> None:
                try:
                    with srv.client(auth=True, timeout=httpx.Timeout(30.0, read=3.0)) as http:
                        outcome.append(http.post("/v1/completions", json=_long()))
                except httpx.HTTPError as exc:
                    outcome.append(exc)

            thread = threading.Thread(target=waiter, daemon=True)
            thread.start()
            assert _wait_for(lambda: _queued(srv), 1.0, 5.0) == 1.0

            # One busy slot and one waiter (max_queue=1): a third request is refused now.
            t0 = time.monotonic()
            with srv.openai() as client:
                with pytest.raises(openai.InternalServerError) as exc:
                    client.completions.create(model=MODEL, prompt="hi", max_tokens=2)
            assert time.monotonic() - t0 < 5
            assert exc.value.status_code == 503
            assert exc.value.code == "server_overloaded"
            retry_after = exc.value.response.headers.get("retry-after")
            assert retry_after is not None and int(retry_after) >= 1

            thread.join(timeout=15)
            assert not thread.is_alive()
            assert len(outcome) == 1 and isinstance(outcome[0], httpx.ReadTimeout), outcome
            # The waiter that left is out of the queue; the stream still holds the slot.
            assert _wait_for(lambda: _queued(srv), 0.0, FREED_WITHIN_S) == 0.0
            assert _busy(srv) == 1.0
            next(line for line in lines if line.startswith("data:"))  # still streaming

    assert _wait_for(lambda: _busy(srv), 0.0, FREED_WITHIN_S) == 0.0
    assert _queued(srv) == 0.0
    _short_request_is_served_now(srv)
