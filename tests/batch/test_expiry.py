"""File expiry over HTTP, with the real bundled model: ``expires_after`` on an upload and
``output_expires_after`` on a batch set ``expires_at`` (checked as OpenAI checks them);
an expired file is a 404 and unlisted at once, and the app's own sweeper deletes its row
and bytes, with an audit record."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from autoglm.store.models import AuditRecord, StoredFile, utcnow
from tests.batch.conftest import CHAT, auth, jsonl, line, upload, wait_batch

pytestmark = pytest.mark.model

EXPIRES = {"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"}


async def _upload(http: httpx.AsyncClient, key: str, **form: str) -> httpx.Response:
    return await http.post("/v1/files", headers=auth(key),
                           files={"file": ("in.jsonl", jsonl(line("a")), "application/jsonl")},
                           data={"purpose": "batch", **form})


@pytest.mark.parametrize(("form", "param"), [
    ({"expires_after[anchor]": "last_active_at", "expires_after[seconds]": "3600"},
     "expires_after.anchor"),
    ({"expires_after[seconds]": "3600"}, "expires_after.anchor"),
    ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "3599"},
     "expires_after.seconds"),
    ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "2592001"},
     "expires_after.seconds"),
    ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "1h"},
     "expires_after.seconds"),
    ({"expires_after[anchor]": "created_at"}, "expires_after.seconds"),
])
async def test_a_bad_expires_after_is_a_400(world, form: dict[str, str], param: str) -> None:
    r = await _upload(world["http"], world["keys"]["member"], **form)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)


async def test_an_expired_file_is_gone_and_swept(world) -> None:
    http, key = world["http"], world["keys"]["member"]
    app = world["client"].app
    r = await _upload(http, key, **EXPIRES)
    assert r.status_code == 200, r.text
    f = r.json()
    assert f["expires_at"] == f["created_at"] + 3600
    path = app.state.batch.files.path(f["id"])
    assert path.exists()
    with app.state.db.session() as s, s.begin():
        s.execute(update(StoredFile).where(StoredFile.id == f["id"])
                  .values(expires_at=utcnow() - timedelta(seconds=1)))
    # gone for every reader at once, whether or not the sweeper came by yet
    assert (await http.get(f"/v1/files/{f['id']}", headers=auth(key))).status_code == 404
    assert (await http.get(f"/v1/files/{f['id']}/content",
                           headers=auth(key))).status_code == 404
    listed = (await http.get("/v1/files", headers=auth(key))).json()["data"]
    assert f["id"] not in {x["id"] for x in listed}
    r = await http.post("/v1/batches", headers=auth(key), json={
        "input_file_id": f["id"], "endpoint": CHAT, "completion_window": "24h"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "input_file_id"
    # the app's sweeper (every batch_file_sweep_s) deletes its row and bytes
    deadline = time.monotonic() + 20
    while path.exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert not path.exists()
    with app.state.db.session() as s:
        assert s.get(StoredFile, f["id"]) is None
    await asyncio.to_thread(app.state.audit.flush, 5.0)
    with app.state.db.session() as s:
        records = list(s.scalars(select(AuditRecord).where(AuditRecord.action == "file.expire",
                                                           AuditRecord.resource == f["id"])))
    assert len(records) == 1 and records[0].tenant_id == world["ids"]["bank"]


@pytest.mark.parametrize(("expires", "param"), [
    ({"anchor": "created_at", "seconds": 60}, "output_expires_after.seconds"),
    ({"anchor": "created_at", "seconds": 2592001}, "output_expires_after.seconds"),
    ({"anchor": "created_at", "seconds": "3600"}, "output_expires_after.seconds"),
    ({"anchor": "created_at"}, "output_expires_after.seconds"),
    ({"anchor": "completed_at", "seconds": 3600}, "output_expires_after.anchor"),
])
async def test_a_bad_output_expires_after_is_a_400(world, expires: dict[str, Any],
                                                   param: str) -> None:
    http, key = world["http"], world["keys"]["member"]
    up = (await upload(http, key, jsonl(line("one")))).json()
    r = await http.post("/v1/batches", headers=auth(key), json={
        "input_file_id": up["id"], "endpoint": CHAT, "completion_window": "24h",
        "output_expires_after": expires})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


async def test_a_batchs_files_expire_after_what_it_asks(world) -> None:
    http, key = world["http"], world["keys"]["member"]
    up = (await upload(http, key, jsonl(line("one"), line("ghost", model="no-such")))).json()
    r = await http.post("/v1/batches", headers=auth(key), json={
        "input_file_id": up["id"], "endpoint": CHAT, "completion_window": "24h",
        "output_expires_after": {"anchor": "created_at", "seconds": 7200}})
    assert r.status_code == 200, r.text
    done = await wait_batch(http, key, r.json()["id"])
    assert done["status"] == "completed", done
    for file_id in (done["output_file_id"], done["error_file_id"]):
        meta = (await http.get(f"/v1/files/{file_id}", headers=auth(key))).json()
        assert meta["expires_at"] == meta["created_at"] + 7200, meta
