"""One app with the real bundled model and two tenants, for the batch API tests; and the
helpers that make input files and wait for batches."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from autoglm.store.db import Database
from autoglm.store.models import Principal, Project, RoleBinding, Tenant
from tests.conftest import MODEL, AppClient, make_settings, pg_database, start_app

CHAT = "/v1/chat/completions"
FINAL = ("completed", "failed", "expired", "cancelled")


def line(custom_id: str, content: str = "Say hi.", *, max_tokens: int = 2, url: str = CHAT,
         model: str = MODEL, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "temperature": 0}
    if url == CHAT:
        body["messages"] = [{"role": "user", "content": content}]
    else:
        body["prompt"] = content
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body, **extra}


def jsonl(*items: Any) -> bytes:
    return b"".join((i if isinstance(i, bytes) else orjson.dumps(i)) + b"\n" for i in items)


def auth(key: str, project: str | None = None) -> dict[str, str]:
    h = {"Authorization": f"Bearer {key}"}
    if project:
        h["OpenAI-Project"] = project
    return h


async def upload(http: httpx.AsyncClient, key: str, data: bytes,
                 purpose: str = "batch", project: str | None = None) -> httpx.Response:
    return await http.post("/v1/files", headers=auth(key, project),
                           files={"file": ("input.jsonl", data, "application/jsonl")},
                           data={"purpose": purpose})


async def start_batch(http: httpx.AsyncClient, key: str, data: bytes,
                      project: str | None = None) -> dict[str, Any]:
    up = await upload(http, key, data, project=project)
    assert up.status_code == 200, up.text
    r = await http.post("/v1/batches", headers=auth(key, project), json={
        "input_file_id": up.json()["id"], "endpoint": CHAT, "completion_window": "24h"})
    assert r.status_code == 200, r.text
    return r.json()


async def wait_batch(http: httpx.AsyncClient, key: str, batch_id: str,
                     until: tuple[str, ...] = FINAL, timeout_s: float = 60.0
                     ) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        r = await http.get(f"/v1/batches/{batch_id}", headers=auth(key))
        assert r.status_code == 200, r.text
        if r.json()["status"] in until or time.monotonic() > deadline:
            return r.json()
        await asyncio.sleep(0.1)


def read_lines(raw: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in raw.splitlines() if x.strip()]


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated control-plane database of its own, on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        database = Database(f"sqlite:///{tmp_path / 'cp.db'}")
        database.upgrade()
        yield database
        database.close()
        return
    with pg_database() as url:
        database = Database(url)
        try:
            database.upgrade()
            yield database
        finally:
            database.close()


@pytest.fixture(scope="package")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, Any]]:
    settings = make_settings(tmp_path_factory.mktemp("batch"), max_body_bytes=65_536,
                             batch_poll_s=0.1, batch_concurrency=2, batch_file_sweep_s=0.2)
    async for client in start_app(settings):
        db, keys = client.app.state.db, client.app.state.auth.keys
        ids: dict[str, str] = {}
        with db.session() as s, s.begin():
            for tname in ("bank", "hospital"):
                t = Tenant(name=tname, granted_models=[MODEL])
                s.add(t)
                s.flush()
                ids[tname] = t.id
                p = Project(tenant_id=t.id, name="open", allowed_models=[MODEL])
                s.add(p)
                s.flush()
                ids[f"{tname}/open"] = p.id
            for who, role, tenant, project in (
                ("member", "member", "bank", "bank/open"),
                ("guest", "guest", "bank", "bank/open"),
                ("tadmin", "tenant_admin", "bank", None),
                ("other", "member", "hospital", "hospital/open"),
            ):
                prn = Principal(tenant_id=ids[tenant], name=who)
                s.add(prn)
                s.flush()
                ids[who] = prn.id
                s.add(RoleBinding(principal_id=prn.id, role=role, tenant_id=ids[tenant],
                                  project_id=ids[project] if project else None))
        secrets = {who: keys.create(ids[who])[0] for who in ("member", "guest", "tadmin",
                                                              "other")}
        yield {"client": client, "http": client.http, "ids": ids, "keys": secrets}


__all__ = ["MODEL", "AppClient"]
