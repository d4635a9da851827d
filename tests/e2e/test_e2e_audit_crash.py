"""A server killed with SIGKILL under load loses no audit record of a request it answered
before the last flush interval, and the chain it leaves verifies."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from autoglm.audit import AuditPaths, verify
from autoglm.store.db import Database
from autoglm.store.models import AuditRecord

from .support import MODEL, ServerProcess

pytestmark = pytest.mark.e2e

FLUSH_MS = 10
CLIENTS = 3


def test_sigkill_under_load_loses_no_answered_record(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path, name="audit-crash", args=["--slots", "2"],
                        env={"AUTOGLM_AUDIT_FLUSH_MS": str(FLUSH_MS)}).start()
    answered: list[tuple[str, float]] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=srv.base_url, headers=srv.auth, timeout=30,
                          trust_env=False) as http:
            while not stop.is_set():
                try:
                    r = http.post("/v1/chat/completions", json={
                        "model": MODEL, "max_tokens": 1,
                        "messages": [{"role": "user", "content": "Hi"}]})
                except httpx.HTTPError:
                    return  # the server is gone
                if r.status_code == 200:
                    answered.append((r.headers["x-request-id"], time.monotonic()))

    threads = [threading.Thread(target=load) for _ in range(CLIENTS)]
    try:
        for t in threads:
            t.start()
        # under load for a while: at least 4 s and 30 answers (a busy machine is slower)
        started = time.monotonic()
        while time.monotonic() - started < 30 and (
                time.monotonic() - started < 4.0 or len(answered) < 30):
            time.sleep(0.1)
        killed_at = time.monotonic()
        os.killpg(srv.proc.pid, signal.SIGKILL)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        srv.proc.wait(10)
    # answered more than one flush interval (plus a commit) before the kill: recorded
    due = {rid for rid, at in answered if at < killed_at - FLUSH_MS / 1000 - 0.05}
    assert len(due) > 20, len(answered)
    data = tmp_path / "data"
    db = Database(f"sqlite:///{data / 'autoglm.db'}")
    try:
        with db.session() as s:
            stored = set(s.scalars(select(AuditRecord.request_id)
                                   .where(AuditRecord.action == "inference")))
        assert due <= stored, f"{len(due - stored)} answered requests have no record"
        report = verify(db, AuditPaths.under(data))
        assert report.intact, report.fault
    finally:
        db.close()
