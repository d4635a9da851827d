"""``autoglm serve --workers 2``: two gateway processes on one port, one engine per model.

A key revoked through one worker is refused by both within 2 s (each keeps a 2 s key
cache, as replicas do), and the engine processes are the same before and after.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .support import MODEL, ServerProcess

pytestmark = pytest.mark.e2e

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def two_workers(start_server, stop_server) -> Iterator[ServerProcess]:
    srv = start_server("workers", args=["--workers", "2", "--slots", "2"])
    yield srv
    stop_server(srv)


def _descendants(pid: int) -> dict[int, str]:
    """pid -> command line of every process below ``pid``."""
    children: dict[int, list[int]] = {}
    cmd: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out: dict[int, str] = {}
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out[child] = cmd.get(child, "")
            todo.append(child)
    return out


def _engines(srv: ServerProcess) -> set[int]:
    assert srv.proc is not None
    return {p for p, c in _descendants(srv.proc.pid).items() if "engine.llamacpp.worker" in c}


def _workers_by_request(srv: ServerProcess) -> dict[str, str]:
    """The client's request id -> the worker (log component) that served it."""
    out = {}
    for line in srv.stderr_path.read_text(errors="replace").splitlines():
        if '"msg":"request"' in line:
            try:
                rec = json.loads(line)
            except ValueError:  # the line being written as we read
                continue
            if rec.get("client_request_id"):
                out[rec["client_request_id"]] = rec["component"]
    return out


def _chat_everywhere(srv: ServerProcess, key: str, want: int, deadline_s: float) -> set[str]:
    """Send requests on fresh connections until both workers answered ``want``; returns
    the workers that did. Fails on any other status."""
    seen: set[str] = set()
    ids: list[str] = []
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline and len(seen) < 2:
        rid = f"w-{uuid.uuid4().hex[:12]}"
        with httpx.Client(base_url=srv.base_url, timeout=30, trust_env=False) as http:
            r = http.post("/v1/chat/completions", json=CHAT,
                          headers={"Authorization": f"Bearer {key}", "X-Request-ID": rid})
        assert r.status_code == want, r.text
        ids.append(rid)
        time.sleep(0.05)
        served = _workers_by_request(srv)
        seen = {served[i] for i in ids if i in served}
    return seen


def test_two_workers_share_one_engine_and_see_revocations(two_workers: ServerProcess) -> None:
    srv = two_workers
    engines_before = _engines(srv)
    assert len(engines_before) == 1, _descendants(srv.proc.pid)  # not one per worker
    workers = [c for c in _descendants(srv.proc.pid).values() if "serving.worker" in c]
    assert len(workers) == 2

    with srv.client(auth=True) as http:
        key = http.post("/admin/v1/principals/prn_platform_admin/keys",
                        json={"name": "two-workers"}).json()
    assert _chat_everywhere(srv, key["key"], 200, 60) == {"gateway-0", "gateway-1"}

    with srv.client(auth=True) as http:
        http.post(f"/admin/v1/keys/{key['id']}/revoke").raise_for_status()
    revoked_at = time.monotonic()
    time.sleep(2.0)  # the other worker's cache holds the key at most 2 s
    assert _chat_everywhere(srv, key["key"], 401, 60) == {"gateway-0", "gateway-1"}
    assert time.monotonic() - revoked_at < 65
    assert _engines(srv) == engines_before
