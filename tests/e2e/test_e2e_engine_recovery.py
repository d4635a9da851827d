"""kill -9 of the engine process: the gateway stays up, answers 503 meanwhile, and
restarts the engine after the configured backoff."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import openai
import pytest

from .support import MODEL, ServerProcess, assert_openai_error, sse_events

pytestmark = pytest.mark.e2e

BACKOFF_S = 3.0
RECOVERY_DEADLINE_S = 30.0


@pytest.fixture(scope="module")
def crash_server(start_server, stop_server) -> Iterator[ServerProcess]:
    srv = start_server(
        "crash", args=["--slots", "2"],
        env={"AUTOGLM_ENGINE_RESTART_BACKOFF_MIN_S": str(BACKOFF_S)},
    )
    yield srv
    stop_server(srv)


def _chat(srv: ServerProcess, max_tokens: int = 4, **kw):
    with srv.openai(**kw) as client:
        return client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Say hi."}], temperature=0,
            max_tokens=max_tokens,
        )


def test_engine_killed_then_restarted(crash_server: ServerProcess) -> None:
    srv = crash_server
    assert _chat(srv).usage.completion_tokens >= 1
    status, body = srv.readyz()
    assert status == 200 and body["status"] == "ready"
    check = body["checks"][MODEL]
    old_pid, old_restarts = check["pid"], check["restarts"]
    assert isinstance(old_pid, int) and old_pid != srv.proc.pid
    assert old_restarts == 0
    assert srv.metric("autoglm_engine_up", model=MODEL) == 1.0

    with srv.client(auth=True) as http:
        # A long stream is in flight when the engine dies.
        with http.stream("POST", "/v1/completions", json={
            "model": MODEL, "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", "temperature": 0,
            "max_tokens": 1500, "stream": True,
        }) as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()
            seen = 0
            for line in lines:
                if line.startswith("data:"):
                    seen += 1
                    if seen >= 3:
                        break

            os.kill(old_pid, signal.SIGKILL)
            killed_at = time.monotonic()

            # The in-flight stream ends promptly with an error event, not a hang.
            rest = sse_events(lines)
        assert time.monotonic() - killed_at < 10
        assert rest, "the stream ended without telling the client anything"
        assert "[DONE]" not in rest, "a broken answer must not look complete"
        last = rest[-1]
        assert isinstance(last, dict) and set(last) == {"error"}, last
        assert set(last["error"]) == {"message", "type", "param", "code"}
        assert last["error"]["code"] == "engine_crashed"

        # The gateway process itself is fine.
        assert http.get("/healthz").status_code == 200
        assert srv.proc is not None and srv.proc.poll() is None

        # Not ready while the engine is down.
        r = http.get("/readyz")
        assert r.status_code == 503, r.text
        assert r.json()["status"] == "not_ready"
        assert r.json()["checks"][MODEL]["status"] in ("down", "starting")
        assert r.headers.get("retry-after")

    # New requests get a 503 with Retry-After right away (not a hang, not a 500).
    t0 = time.monotonic()
    with pytest.raises(openai.InternalServerError) as exc:
        _chat(srv)
    assert time.monotonic() - t0 < 5
    assert exc.value.status_code == 503
    err = assert_openai_error(exc.value.response, 503, "engine_unavailable", "server_error")
    assert MODEL in err["message"]
    retry_after = exc.value.response.headers.get("retry-after")
    assert retry_after is not None and retry_after.isdigit(), exc.value.response.headers
    assert 1 <= int(retry_after) <= BACKOFF_S + 2
    assert srv.metric("autoglm_engine_up", model=MODEL) == 0.0
    # The engine slot held by the killed stream was given back.
    assert srv.metric("autoglm_busy_slots", model=MODEL) == 0.0

    # Back within the deadline, with a new process, after (not before) the backoff.
    deadline = killed_at + RECOVERY_DEADLINE_S
    status, body = srv.readyz()
    while status != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
        status, body = srv.readyz()
    recovered_after = time.monotonic() - killed_at
    assert status == 200, f"not ready {RECOVERY_DEADLINE_S:g} s after the kill: {body}"
    check = body["checks"][MODEL]
    assert check["pid"] != old_pid and isinstance(check["pid"], int)
    assert check["restarts"] >= 1
    assert check["last_exit"] == -signal.SIGKILL
    assert recovered_after >= BACKOFF_S - 0.5, (
        f"restarted after {recovered_after:.2f} s; backoff is {BACKOFF_S} s"
    )

    r = _chat(srv, max_tokens=8)
    assert r.choices[0].message.content
    assert r.usage.completion_tokens >= 1
    assert srv.metric("autoglm_engine_up", model=MODEL) == 1.0
    assert srv.metric("autoglm_engine_restarts_total", model=MODEL) == float(check["restarts"])


def test_requests_racing_an_engine_death_get_503_never_500(crash_server: ServerProcess) -> None:
    """Kill the engine while requests keep arriving: whichever request first finds it dead
    (connection refused, or an answer cut before it started) is a 503 with Retry-After."""
    srv = crash_server
    status, body = srv.readyz()
    deadline = time.monotonic() + RECOVERY_DEADLINE_S
    while status != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
        status, body = srv.readyz()
    assert status == 200, body
    pid = body["checks"][MODEL]["pid"]
    seen: list[int] = []
    with srv.client(auth=True, timeout=30) as http:
        def ask() -> None:
            r = http.post("/v1/chat/completions", json={
                "model": MODEL, "messages": [{"role": "user", "content": "Say hi."}],
                "max_tokens": 24})
            seen.append(r.status_code)
            if r.status_code != 200:
                assert_openai_error(r, 503, None, "server_error")
                assert r.headers.get("retry-after", "").isdigit(), r.headers

        ask()
        os.kill(pid, signal.SIGKILL)
        for _ in range(5):
            ask()
    assert seen[0] == 200
    assert 503 in seen[1:] and 500 not in seen, seen
