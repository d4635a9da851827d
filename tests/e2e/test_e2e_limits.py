"""Limits across gateway processes: ``autoglm serve --workers 2`` on one Redis. The two
workers lease a key's budget from Redis, so the sum of what they accept holds the limit
(within the slices a worker may leave unused, under 5%), though most decisions are made
without a round trip."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.redis_server import RedisServer

from .support import MODEL

pytestmark = pytest.mark.e2e

LIMIT = 100
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}


def test_two_workers_hold_a_shared_limit(tmp_path: Path, start_server, stop_server) -> None:  # noqa: ANN001
    redis = RedisServer(tmp_path).start()
    srv = start_server("limits", args=["--workers", "2", "--slots", "2"], env={
        "AUTOGLM_REDIS_URL": redis.url, "AUTOGLM_REDIS_PREFIX": f"e2e-{uuid.uuid4().hex[:8]}:",
        "AUTOGLM_RATE_LIMITS": json.dumps({"key": {"requests_per_minute": LIMIT}}),
        "AUTOGLM_RATE_LIMIT_WINDOW_S": "3600"})  # one window for the whole test
    try:
        def one(_: int) -> tuple[int, str]:
            with srv.client(auth=True) as http:  # a connection each: both workers serve
                r = http.post("/v1/chat/completions", json=CHAT)
                return r.status_code, r.headers.get("x-ratelimit-limit-requests", "")

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(LIMIT + 40)))
        codes = Counter(code for code, _ in results)
        assert set(codes) <= {200, 429}, codes
        assert LIMIT * 0.95 <= codes[200] <= LIMIT, codes
        assert codes[429] >= 40
        assert {limit for _, limit in results} == {str(LIMIT)}
        served_by = {json.loads(line).get("component") for line in
                     srv.stderr_path.read_text(errors="replace").splitlines()
                     if '"msg":"request"' in line and '"status":200' in line}
        assert len(served_by - {None}) == 2, served_by  # both workers took part
    finally:
        stop_server(srv)
        redis.stop()


def test_redis_outage_under_load_loses_no_request(tmp_path: Path, start_server,  # noqa: ANN001
                                                  stop_server) -> None:
    """Requests keep coming while Redis stops and starts again: every one is answered
    (limits per process meanwhile, the cache bypassed), /readyz says degraded and then
    ready, a new batch is refused with a 503 during the outage and accepted after it."""
    import io
    import threading
    import time

    redis = RedisServer(tmp_path).start()
    srv = start_server("outage", args=["--slots", "2"], env={
        "AUTOGLM_REDIS_URL": redis.url, "AUTOGLM_REDIS_PREFIX": f"e2e-{uuid.uuid4().hex[:8]}:",
        "AUTOGLM_RATE_LIMITS": json.dumps({"key": {"requests_per_minute": 100_000}}),
        "AUTOGLM_BATCH_CONCURRENCY": "0"})
    codes: Counter[int] = Counter()
    caches: Counter[str] = Counter()
    stop = threading.Event()

    def load() -> None:
        with srv.client(auth=True) as http:
            while not stop.is_set():
                r = http.post("/v1/chat/completions", json={**CHAT, "temperature": 0},
                              headers={"X-AutoGLM-Cache": "use"})
                codes[r.status_code] += 1
                caches[r.headers.get("x-autoglm-cache", "")] += 1

    line = json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
                       "body": CHAT}).encode() + b"\n"
    threads = [threading.Thread(target=load) for _ in range(3)]
    try:
        for t in threads:
            t.start()
        time.sleep(2)
        redis.stop()
        time.sleep(1.5)
        with srv.client(auth=True) as http:
            ready = http.get("/readyz").json()
            assert ready["status"] == "degraded", ready
            f = http.post("/v1/files", files={"file": ("in.jsonl", io.BytesIO(line))},
                          data={"purpose": "batch"}).json()
            refused = http.post("/v1/batches", json={
                "input_file_id": f["id"], "endpoint": "/v1/chat/completions",
                "completion_window": "24h"})
            assert refused.status_code == 503, refused.text
            assert refused.headers.get("retry-after")
        redis.start()
        time.sleep(3)  # a failed call marks Redis down for a second; then it is probed
        with srv.client(auth=True) as http:
            assert http.get("/readyz").json()["status"] == "ready"
            accepted = http.post("/v1/batches", json={
                "input_file_id": f["id"], "endpoint": "/v1/chat/completions",
                "completion_window": "24h"})
            assert accepted.status_code == 200, accepted.text
        time.sleep(1)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
        stop_server(srv)
        redis.stop()
    assert set(codes) == {200}, codes  # nothing failed, during the outage or after
    assert codes[200] >= 20
    assert caches["bypass"] >= 1 and caches["hit"] >= 1, caches
