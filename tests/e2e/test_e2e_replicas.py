"""Two `autoglm serve` replicas on one PostgreSQL database: a key revoked on one stops
working on the other within 5 seconds."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import pg_database

from .support import ServerProcess
from .test_e2e_pool import Standin

pytestmark = pytest.mark.e2e


def test_revocation_reaches_the_other_replica_within_5_s(tmp_path: Path) -> None:
    up = Standin("up", tmp_path).start()
    cfg = tmp_path / "models.yaml"
    cfg.write_text(yaml.safe_dump({"models": [{"id": "m", "engine": "openai",
                                               "instances": [{"url": up.url}]}]}))
    with pg_database() as url:
        env = {"AUTOGLM_DATABASE_URL": url, "AUTOGLM_KEY_PEPPER": "x" * 40}
        a = ServerProcess(tmp_path / "a", args=["--config", str(cfg)], env=env, name="a")
        b = ServerProcess(tmp_path / "b", args=["--config", str(cfg)], env=env, name="b")
        for srv in (a, b):
            srv.workdir.mkdir()
            srv.start()
        try:
            with a.client(auth=True) as http:
                t = http.post("/admin/v1/tenants", json={"name": "t"}).json()
                http.put(f"/admin/v1/tenants/{t['id']}/models",
                         json={"models": ["m"]}).raise_for_status()
                p = http.post(f"/admin/v1/tenants/{t['id']}/projects",
                              json={"name": "p", "allowed_models": ["m"]}).json()
                prn = http.post(f"/admin/v1/tenants/{t['id']}/principals",
                                json={"name": "u"}).json()
                http.post(f"/admin/v1/principals/{prn['id']}/bindings",
                          json={"role": "member", "project_id": p["id"]}).raise_for_status()
                key = http.post(f"/admin/v1/principals/{prn['id']}/keys", json={}).json()
            chat = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
            hdr = {"Authorization": f"Bearer {key['key']}"}
            with b.client() as hb:
                assert hb.post("/v1/chat/completions", json=chat, headers=hdr).status_code == 200
                with a.client(auth=True) as http:
                    http.post(f"/admin/v1/keys/{key['id']}/revoke").raise_for_status()
                    assert http.post("/v1/chat/completions", json=chat,
                                     headers=hdr).status_code == 401  # at once on A
                t0 = time.monotonic()
                while hb.post("/v1/chat/completions", json=chat, headers=hdr).status_code == 200:
                    assert time.monotonic() - t0 < 5.0, "B still accepts the revoked key"
                    time.sleep(0.1)
                assert hb.post("/v1/chat/completions", json=chat, headers=hdr).status_code == 401
        finally:
            a.stop(check=False)
            b.stop(check=False)
            up.kill()
