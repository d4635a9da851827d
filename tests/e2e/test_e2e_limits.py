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
