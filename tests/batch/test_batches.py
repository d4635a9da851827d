"""``/v1/batches`` in process, with the real bundled model: a batch runs to its files,
through every stage (audited with transport "batch"), tenant-scoped, cancellable, and
under its creating key's current identity."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from sqlalchemy import select

from autoglm.store.models import AuditRecord
from tests.batch.conftest import (
    CHAT,
    MODEL,
    auth,
    jsonl,
    line,
    read_lines,
    start_batch,
    upload,
    wait_batch,
)

pytestmark = pytest.mark.model


@contextmanager
def paused(world) -> Iterator[None]:
    """The worker claims nothing meanwhile (lines already running go on)."""
    worker = world["client"].app.state.batch.worker
    before, worker.concurrency = worker.concurrency, 0
    try:
        yield
    finally:
        worker.concurrency = before
        worker.wake()


async def _content(world, key: str, file_id: str) -> list[dict]:
    r = await world["http"].get(f"/v1/files/{file_id}/content", headers=auth(key))
    assert r.status_code == 200, r.text
    return read_lines(r.content)


async def test_a_batch_runs_to_its_output_and_error_files(world) -> None:
    http, key = world["http"], world["keys"]["member"]
    created = await start_batch(http, key, jsonl(
        line("one"), line("two", "Name a colour."), line("ghost", model="no-such-model"),
        line("three", max_tokens=3)))
    assert created["status"] == "in_progress" and created["object"] == "batch"
    assert created["request_counts"] == {"total": 4, "completed": 0, "failed": 0}
    assert created["model"] is None and created["output_file_id"] is None
    done = await wait_batch(http, key, created["id"])
    assert done["status"] == "completed", done
    assert done["request_counts"] == {"total": 4, "completed": 3, "failed": 1}
    assert done["completed_at"] >= done["finalizing_at"] >= done["in_progress_at"]
    assert done["usage"]["input_tokens"] > 0 and done["usage"]["output_tokens"] > 0
    out = await _content(world, key, done["output_file_id"])
    assert [o["custom_id"] for o in out] == ["one", "two", "three"]  # line order
    for o in out:
        assert set(o) == {"id", "custom_id", "response", "error"} and o["error"] is None
        assert o["id"].startswith("batch_req_")
        resp = o["response"]
        assert resp["status_code"] == 200 and resp["request_id"].startswith("req_")
        assert resp["body"]["object"] == "chat.completion" and resp["body"]["model"] == MODEL
    errors = await _content(world, key, done["error_file_id"])
    assert [(e["custom_id"], e["response"]["status_code"]) for e in errors] == [("ghost", 404)]
    assert errors[0]["response"]["body"]["error"]["code"] == "model_not_found"
    meta = (await http.get(f"/v1/files/{done['output_file_id']}", headers=auth(key))).json()
    assert meta["purpose"] == "batch_output" and meta["bytes"] > 0
    # every line went through the pipeline's audit stage, as the batch's owner
    rids = {o["response"]["request_id"] for o in out + errors}
    app = world["client"].app
    await asyncio.to_thread(app.state.audit.flush, 5.0)
    with app.state.db.session() as s:
        recs = s.scalars(select(AuditRecord).where(AuditRecord.request_id.in_(rids))).all()
    assert len(recs) == 4
    assert {(r.detail["transport"], r.actor, r.project_id) for r in recs} == {
        ("batch", world["ids"]["member"], world["ids"]["bank/open"])}
    assert sorted(r.status for r in recs) == [200, 200, 200, 404]


async def test_another_tenants_batch_is_a_404(world) -> None:
    http, k = world["http"], world["keys"]
    with paused(world):
        b = await start_batch(http, k["member"], jsonl(line("q")))
        for method, path in (("GET", f"/v1/batches/{b['id']}"),
                             ("POST", f"/v1/batches/{b['id']}/cancel")):
            theirs = await http.request(method, path, headers=auth(k["other"]))
            nowhere = await http.request(method, path.replace(b["id"][-8:], "00000000"),
                                         headers=auth(k["other"]))
            assert theirs.status_code == nowhere.status_code == 404, (path, theirs.text)
            assert theirs.json() == nowhere.json()
        listed = (await http.get("/v1/batches", headers=auth(k["other"]))).json()
        assert b["id"] not in [x["id"] for x in listed["data"]]
        ours = (await http.get("/v1/batches?limit=100", headers=auth(k["member"]))).json()
        assert b["id"] in [x["id"] for x in ours["data"]]
        # its project's guest follows it but may not cancel it; its tenant's admin may
        assert (await http.get(f"/v1/batches/{b['id']}",
                               headers=auth(k["guest"]))).status_code == 200
        guest = await http.post(f"/v1/batches/{b['id']}/cancel", headers=auth(k["guest"]))
        assert guest.status_code == 403
        # a batch from another tenant's file: that file is not found
        f = (await http.get("/v1/files", headers=auth(k["member"]))).json()["data"][0]["id"]
        r = await http.post("/v1/batches", headers=auth(k["other"]), json={
            "input_file_id": f, "endpoint": CHAT, "completion_window": "24h"})
        assert r.status_code == 404 and r.json()["error"]["param"] == "input_file_id"
        cancelled = await http.post(f"/v1/batches/{b['id']}/cancel", headers=auth(k["tadmin"]))
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelling"
    final = await wait_batch(http, k["member"], b["id"], timeout_s=10)
    assert final["status"] == "cancelled" and final["cancelled_at"] is not None


async def test_create_checks_its_arguments(world) -> None:
    http, key = world["http"], world["keys"]["member"]
    f = (await upload(http, key, jsonl(line("a")))).json()["id"]
    for body, param in (
        ({"input_file_id": f, "endpoint": "/v1/completions", "completion_window": "24h"},
         "endpoint"),  # the file's lines are chat
        ({"input_file_id": f, "endpoint": "/v1/embeddings", "completion_window": "24h"},
         "endpoint"),
        ({"input_file_id": f, "endpoint": CHAT, "completion_window": "1h"},
         "completion_window"),
        ({"input_file_id": f, "endpoint": CHAT, "completion_window": "24h",
          "metadata": {"k": "v" * 513}}, "metadata.k"),
        ({"endpoint": CHAT, "completion_window": "24h"}, "input_file_id"),
    ):
        r = await http.post("/v1/batches", headers=auth(key), json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (body, r.text)
    assert (await http.get("/v1/batches?limit=0", headers=auth(key))).status_code == 400
    assert (await http.get("/v1/batches?after=nope", headers=auth(key))).status_code == 400


async def test_cancel_stops_lines_in_flight_within_seconds(world) -> None:
    http, key = world["http"], world["keys"]["member"]
    worker = world["client"].app.state.batch.worker
    b = await start_batch(http, key, jsonl(*(
        line(f"long-{i}", "Tell a long story about a dragon.", max_tokens=400)
        for i in range(6))))
    deadline = time.monotonic() + 20
    while worker.running == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert worker.running > 0
    r = await http.post(f"/v1/batches/{b['id']}/cancel", headers=auth(key))
    assert r.status_code == 200 and r.json()["status"] == "cancelling"
    asked = time.monotonic()
    final = await wait_batch(http, key, b["id"], timeout_s=15)
    assert final["status"] == "cancelled", final
    assert time.monotonic() - asked < 5
    assert final["request_counts"]["completed"] < 6
    assert worker.running == 0
    again = await http.post(f"/v1/batches/{b['id']}/cancel", headers=auth(key))
    assert again.status_code == 200 and again.json()["status"] == "cancelled"


async def test_lines_run_under_the_creating_keys_identity_now(world) -> None:
    http, app, ids = world["http"], world["client"].app, world["ids"]
    keys = app.state.auth.keys
    revoked, _ = keys.create(ids["member"], name="revoked later")
    rotated, record = keys.create(ids["member"], name="rotated later")
    with paused(world):  # both keys change before any of their lines runs
        gone = await start_batch(http, revoked, jsonl(line("r1"), line("r2")))
        kept = await start_batch(http, rotated, jsonl(line("k1")))
        keys.revoke(keys.lookup(revoked).key_id)
        keys.rotate(record.id, timedelta(0))  # the old key ends now; its successor goes on
    final = await wait_batch(http, world["keys"]["member"], gone["id"])
    assert final["status"] == "completed" and final["request_counts"]["failed"] == 2
    errs = await _content(world, world["keys"]["member"], final["error_file_id"])
    assert {e["response"]["status_code"] for e in errs} == {401}
    assert {e["response"]["body"]["error"]["code"] for e in errs} == {"invalid_api_key"}
    ok = await wait_batch(http, world["keys"]["member"], kept["id"])
    assert ok["request_counts"] == {"total": 1, "completed": 1, "failed": 0}

