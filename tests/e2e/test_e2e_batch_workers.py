"""Batches on the Redis stream with `autoglm worker` processes: a 200-line batch made with
the unchanged openai SDK completes with exactly 200 results although one worker is
killed (SIGKILL) in the middle; another worker takes over the dead one's lines once their
lease runs out, and no line is in the output twice."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.redis_server import RedisServer

from .support import AUTOGLM, MODEL, base_env

pytestmark = [pytest.mark.e2e, pytest.mark.model]

LINES = 200
LEASE_S = "3"


def _input() -> bytes:
    lines = [{"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": MODEL, "max_tokens": 1, "temperature": 0,
                       "messages": [{"role": "user", "content": f"Say {i}."}]}}
             for i in range(LINES)]
    return "".join(json.dumps(x, separators=(",", ":")) + "\n" for x in lines).encode()


def _worker(tmp_path: Path, name: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = (tmp_path / f"{name}.log").open("wb")
    return subprocess.Popen([str(AUTOGLM), "worker", "--concurrency", "2"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def test_a_killed_worker_loses_no_line(tmp_path: Path, start_server, stop_server) -> None:  # noqa: ANN001
    redis = RedisServer(tmp_path).start()
    shared = {"AUTOGLM_REDIS_URL": redis.url,
              "AUTOGLM_REDIS_PREFIX": f"e2e-{uuid.uuid4().hex[:8]}:",
              "AUTOGLM_BATCH_LEASE_S": LEASE_S, "AUTOGLM_BATCH_POLL_S": "0.2",
              "AUTOGLM_SLOTS": "2"}
    # the server runs no lines itself: the workers do
    srv = start_server("batch-workers", env={**shared, "AUTOGLM_BATCH_CONCURRENCY": "0"})
    env = base_env(**shared, AUTOGLM_DATA_DIR=str(srv.workdir / "data"))
    workers = [_worker(tmp_path, f"worker-{n}", env) for n in range(2)]
    try:
        with srv.openai() as client:
            f = client.files.create(file=("lines.jsonl", io.BytesIO(_input())), purpose="batch")
            batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                          completion_window="24h")
            deadline = time.monotonic() + 240
            killed = False
            while batch.status not in ("completed", "failed", "expired", "cancelled"):
                assert time.monotonic() < deadline, batch
                if not killed and batch.request_counts.completed >= 40:
                    os.killpg(workers[0].pid, signal.SIGKILL)  # mid-batch, lines in hand
                    workers[0].wait()
                    killed = True
                    at_kill = batch.request_counts.completed
                time.sleep(0.3)
                batch = client.batches.retrieve(batch.id)
            assert killed and at_kill < LINES, "the batch ended before a worker was killed"
            assert batch.status == "completed", batch
            assert batch.request_counts.model_dump() == {"total": LINES, "completed": LINES,
                                                         "failed": 0}
            out = [json.loads(x) for x in
                   client.files.content(batch.output_file_id).text.splitlines()]
        ids = [o["custom_id"] for o in out]
        assert len(ids) == LINES and sorted(ids) == sorted(f"line-{i}" for i in range(LINES))
        assert all(o["error"] is None and o["response"]["status_code"] == 200 for o in out)
        assert workers[1].poll() is None  # the survivor is still running
    finally:
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        for w in workers:
            try:
                w.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(w.pid, signal.SIGKILL)
        stop_server(srv)
        redis.stop()
