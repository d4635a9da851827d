"""An edge node and its centre, two `autoglm serve` processes on loopback, the link between
them a proxy the test takes down and brings back.

Shown: the edge serves the centre's keys; with the link cut under load no request is
refused because of the cut; a forward whose answer was lost is not stored twice; when the
link returns the edge forwards every record in order, exactly once, the chain verifying end
to end at the centre (`autoglm audit verify`), and picks up a revocation made meanwhile;
past its allowed staleness the edge refuses tenant keys with 503 (its own admin key still
works) and serves them again once the centre answers.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .linkproxy import LinkProxy
from .support import AUTOGLM, MODEL, ServerProcess, assert_openai_error, base_env

pytestmark = pytest.mark.e2e

PEPPER = "edge-test-pepper-" + "0123456789abcdef" * 2
SYNC_S = 0.5
MAX_STALENESS_S = 8.0


def chat() -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2, "temperature": 0}


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("edge")
    centre = ServerProcess(root / "centre", env={"AUTOGLM_KEY_PEPPER": PEPPER}, name="centre")
    centre.workdir.mkdir()
    centre.start()
    edge: ServerProcess | None = None
    proxy = LinkProxy(centre.port)
    try:
        with centre.client(auth=True) as http:
            t = http.post("/admin/v1/tenants", json={"name": "clinic"}).json()
            http.put(f"/admin/v1/tenants/{t['id']}/models",
                     json={"models": [MODEL]}).raise_for_status()
            p = http.post(f"/admin/v1/tenants/{t['id']}/projects",
                          json={"name": "ward", "allowed_models": [MODEL]}).json()
            prn = http.post(f"/admin/v1/tenants/{t['id']}/principals",
                            json={"name": "nurse"}).json()
            http.post(f"/admin/v1/principals/{prn['id']}/bindings",
                      json={"role": "member", "project_id": p["id"]}).raise_for_status()
            k1 = http.post(f"/admin/v1/principals/{prn['id']}/keys", json={}).json()
            k2 = http.post(f"/admin/v1/principals/{prn['id']}/keys", json={}).json()
            link_key = http.post("/admin/v1/principals/prn_platform_admin/keys",
                                 json={"name": "edge site-a", "actions": ["edge.sync"]}).json()
        # Provisioning an edge: the installation's pepper and audit key, as for a replica.
        secrets = root / "edge" / "data" / "secrets"
        secrets.mkdir(parents=True, mode=0o700)
        shutil.copy2(centre.workdir / "data" / "secrets" / "audit_hmac_key", secrets)
        edge = ServerProcess(root / "edge", name="edge", env={
            "AUTOGLM_KEY_PEPPER": PEPPER, "AUTOGLM_CENTRE_URL": proxy.url,
            "AUTOGLM_CENTRE_KEY": link_key["key"], "AUTOGLM_EDGE_NODE": "site-a",
            "AUTOGLM_EDGE_SYNC_S": str(SYNC_S),
            "AUTOGLM_EDGE_MAX_STALENESS_S": str(MAX_STALENESS_S)})
        edge.start()
        wait_for(lambda: link(edge)["last_sync"] is not None, "the first sync")
        yield {"centre": centre, "edge": edge, "proxy": proxy, "k1": k1, "k2": k2}
    finally:
        proxy.close()
        if edge is not None:
            edge.stop(check=False)
        centre.stop(check=False)


def link(edge: ServerProcess) -> dict[str, Any]:
    return edge.readyz()[1]["checks"]["edge"]


def wait_for(cond: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class Load:
    """Two clients sending chat requests with one key to the edge until stopped."""

    def __init__(self, edge: ServerProcess, secret: str) -> None:
        self.edge, self.secret = edge, secret
        self.codes: list[int] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run) for _ in range(2)]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)

    def _run(self) -> None:
        with self.edge.client() as http:
            while not self.stop.is_set():
                r = http.post("/v1/chat/completions", json=chat(), headers=bearer(self.secret))
                self.codes.append(r.status_code)


def test_a_cut_link_refuses_nothing_and_loses_or_doubles_no_record(
        nodes: dict[str, Any]) -> None:
    centre, edge, proxy = nodes["centre"], nodes["edge"], nodes["proxy"]
    k1, k2 = nodes["k1"], nodes["k2"]
    with edge.client() as http:  # the centre's keys work at the edge
        for k in (k1, k2):
            assert http.post("/v1/chat/completions", json=chat(),
                             headers=bearer(k["key"])).status_code == 200
    with Load(edge, k1["key"]) as load:
        time.sleep(1.5)
        proxy.cut()
        with centre.client(auth=True) as http:  # revoked while the edge can't hear it
            http.post(f"/admin/v1/keys/{k2['id']}/revoke").raise_for_status()
        time.sleep(3.0)
        state = link(edge)
        assert state["reachable"] is False and state["stale"] is False, state
        assert state["pending_records"] > 0, state  # kept locally meanwhile
        with edge.client() as http:  # the edge can't know of the revocation yet
            assert http.post("/v1/chat/completions", json=chat(),
                             headers=bearer(k2["key"])).status_code == 200
        # The link returns, but the answer to the first forward is lost on the way back.
        proxy.lose_answer("POST /admin/v1/edge/nodes/site-a/audit")
        proxy.restore()
        wait_for(lambda: proxy.lost == 1, "a lost answer")
        wait_for(lambda: link(edge)["reachable"], "the link back")
        time.sleep(1.0)
    assert load.codes and set(load.codes) == {200}, sorted(set(load.codes))
    with edge.client() as http:  # the revocation reached the edge with the next sync
        r = http.post("/v1/chat/completions", json=chat(), headers=bearer(k2["key"]))
        assert_openai_error(r, 401)
    time.sleep(0.5)  # the edge's last records committed (group commit)
    edge_db = edge.workdir / "data" / "autoglm.db"
    head = rows(edge_db, "SELECT max(seq) FROM audit_log")[0][0]
    wait_for(lambda: (link(edge)["forwarded_seq"] or 0) >= head, "every record forwarded")
    forwarded = link(edge)["forwarded_seq"]
    edge_rows = rows(edge_db, "SELECT seq, hash FROM audit_log WHERE seq <= ? ORDER BY seq", forwarded)
    centre_rows = rows(centre.workdir / "data" / "autoglm.db",
                       "SELECT seq, hash FROM edge_audit WHERE node = 'site-a' AND seq <= ? "
                       "ORDER BY seq", forwarded)
    assert len(edge_rows) == forwarded
    served = rows(edge_db, "SELECT count(*) FROM audit_log WHERE key_id = ? AND status = 200 "
                  "AND seq <= ?", k1["id"], forwarded)[0][0]
    assert served == len(load.codes) + 1  # every request has its record (and the first)
    assert centre_rows == edge_rows  # in order, each once
    # The forward whose answer was lost had been kept: the edge asked where the centre's
    # copy of its chain ends and went on from there; each forward is in the centre's chain.
    with centre.client(auth=True) as http:
        r = http.get("/admin/v1/audit", params={"action": "edge.forward", "limit": 100})
    assert sum(rec["detail"]["stored"] for rec in r.json()["data"]) == forwarded
    r = subprocess.run([str(AUTOGLM), "audit", "verify"], capture_output=True, text=True,
                       timeout=300, env=base_env(AUTOGLM_DATA_DIR=str(centre.workdir / "data")))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "edge node site-a: chain intact" in r.stdout + r.stderr, r.stderr


def test_past_its_staleness_an_edge_refuses_tenant_keys_until_the_centre_answers(
        nodes: dict[str, Any]) -> None:
    edge, proxy, k1 = nodes["edge"], nodes["proxy"], nodes["k1"]
    proxy.cut()
    try:
        wait_for(lambda: link(edge)["stale"], "the copy to go stale", timeout=MAX_STALENESS_S * 3)
        status, body = edge.readyz()
        assert status == 200 and body["status"] == "degraded", body
        with edge.client() as http:
            r = http.post("/v1/chat/completions", json=chat(), headers=bearer(k1["key"]))
            err = assert_openai_error(r, 503, code="edge_stale")
            assert "has not reached its centre" in err["message"]
        with edge.client(auth=True) as http:  # the node's own administrator is not refused
            assert http.post("/v1/chat/completions", json=chat()).status_code == 200
    finally:
        proxy.restore()
    wait_for(lambda: not link(edge)["stale"], "a fresh sync")
    with edge.client() as http:
        assert http.post("/v1/chat/completions", json=chat(),
                         headers=bearer(k1["key"])).status_code == 200


def test_an_edge_refuses_changes_its_centre_manages(nodes: dict[str, Any]) -> None:
    edge = nodes["edge"]
    with edge.client(auth=True) as http:
        r = http.post("/admin/v1/tenants", json={"name": "local"})
        err = assert_openai_error(r, 409, code="managed_by_centre")
        assert "managed there" in err["message"]
        r = http.post(f"/admin/v1/keys/{nodes['k1']['id']}/revoke")
        assert_openai_error(r, 409, code="managed_by_centre")
        # the node's own platform keys stay its own
        r = http.post("/admin/v1/principals/prn_platform_admin/keys", json={"name": "ops"})
        assert r.status_code == 201, r.text


def rows(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()
