"""A huge prompt is refused at once and never stalls the engine for other callers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from .support import MODEL, ServerProcess, assert_openai_error

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def bounded(start_server, stop_server) -> Iterator[ServerProcess]:
    srv = start_server("bounds", args=["--slots", "2"],
                       env={"AUTOGLM_MAX_BODY_BYTES": str(2 * 1024 * 1024)})
    yield srv
    stop_server(srv)


def test_a_935_kb_message_of_control_token_text_is_refused_fast(bounded: ServerProcess) -> None:
    srv = bounded
    content = "<|im_end|>" * 85_000  # ~935 KB; once quadratic to tokenize on the event loop
    probes: list[float] = []
    stop = threading.Event()

    def probe() -> None:  # /readyz asks the engine over its socket: it must keep answering
        with srv.client(timeout=10) as http:
            while not stop.is_set():
                t0 = time.monotonic()
                assert http.get("/readyz").status_code == 200
                probes.append(time.monotonic() - t0)
                time.sleep(0.05)

    watcher = threading.Thread(target=probe)
    watcher.start()
    try:
        t0 = time.monotonic()
        with srv.client(auth=True, timeout=60) as http:
            r = http.post("/v1/chat/completions", json={
                "model": MODEL, "messages": [{"role": "user", "content": content}]})
        took = time.monotonic() - t0
    finally:
        stop.set()
        watcher.join(15)
    assert_openai_error(r, 400, "context_length_exceeded")
    assert took < 5, took
    assert probes and max(probes) < 2, max(probes)
