"""Every inference request leaves one audit record (refusals folded per interval), on the
real model and a stand-in upstream, and the chain verifies."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from autoglm.audit import AuditPaths, verify
from autoglm.store.models import AuditRecord
from tests.conftest import MODEL, AppClient
from tests.pipeline.conftest import UPSTREAM
from tests.pipeline.stages import RewriteStage

pytestmark = pytest.mark.model


def chat(model: str, **kw: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3,
            **kw}


async def test_one_record_per_request_refusals_folded(both: tuple[AppClient, RewriteStage]
                                                      ) -> None:
    api, _ = both
    app = api.app
    audit = app.state.audit
    audit.flush()
    with app.state.db.session() as s:
        start = s.scalar(select(AuditRecord.seq).order_by(AuditRecord.seq.desc()).limit(1)) or 0
    ids = []
    for model, stream in ((MODEL, False), (MODEL, True), (UPSTREAM, False), (UPSTREAM, True)):
        r = await api.post("/v1/chat/completions", chat(model, stream=stream))
        assert r.status_code == 200
        ids.append(r.headers["x-request-id"])
    refused = [await api.http.post("/v1/chat/completions", json=chat(MODEL),
                                   headers={"Authorization": "Bearer " + "n" * 40})
               for _ in range(5)]
    assert {r.status_code for r in refused} == {401}
    audit.flush()
    with app.state.db.session() as s:
        rows = s.scalars(select(AuditRecord).where(AuditRecord.seq > start)
                         .order_by(AuditRecord.seq)).all()
    served = {r.request_id: r for r in rows if r.action == "inference" and r.decision == "allow"}
    assert set(ids) <= set(served)
    for rid in ids:
        rec = served[rid]
        assert rec.actor == "prn_platform_admin" and rec.key_id and rec.status == 200
        assert rec.completion_tokens and rec.prompt_tokens and rec.latency_ms > 0
    denials = [r for r in rows if r.action == "inference" and r.decision == "deny"]
    assert denials and all(r.status == 401 for r in denials)
    assert sum(r.count for r in denials) <= 5  # folded: the rest is counted at the interval
    report = verify(app.state.db, AuditPaths.under(app.state.settings.data_dir))
    assert report.intact, report.fault


async def test_failed_authentication_at_the_edge_is_recorded_and_folded(
        both: tuple[AppClient, RewriteStage]) -> None:
    api, _ = both
    app = api.app
    app.state.audit.flush()
    with app.state.db.session() as s:
        start = s.scalar(select(AuditRecord.seq).order_by(AuditRecord.seq.desc()).limit(1)) or 0
    for _ in range(4):
        r = await api.http.get("/admin/v1/tenants", headers={"Authorization": "Bearer " + "z" * 40})
        assert r.status_code == 401
    app.state.audit.flush()
    with app.state.db.session() as s:
        rows = s.scalars(select(AuditRecord).where(AuditRecord.seq > start,
                                                   AuditRecord.action == "authenticate")).all()
    assert len(rows) == 1  # the first at once; the other three counted at the interval's end
    assert (rows[0].decision, rows[0].status, rows[0].resource) == ("deny", 401,
                                                                    "/admin/v1/tenants")


async def test_model_loads_and_policy_reloads_are_recorded(
        both: tuple[AppClient, RewriteStage], tmp_path) -> None:
    api, _ = both
    app = api.app
    with app.state.db.session() as s:
        loads = {r.resource: r for r in s.scalars(
            select(AuditRecord).where(AuditRecord.action == "model.load"))}
    assert {MODEL, UPSTREAM} <= set(loads)
    assert loads[MODEL].decision == "allow"
    assert loads[MODEL].detail["verification"]["verified"] is True  # what the trust check found
    store = app.state.authz.policy
    store.on_reload(False, "bad.yaml: not valid YAML")  # what a refused reload reports
    app.state.audit.flush()
    with app.state.db.session() as s:
        last = s.scalars(select(AuditRecord).where(AuditRecord.action == "policy.reload")
                         .order_by(AuditRecord.seq.desc())).first()
    assert (last.decision, last.detail) == ("error", {"error": "bad.yaml: not valid YAML"})


async def test_the_clients_id_purpose_and_consent_are_recorded(
        both: tuple[AppClient, RewriteStage]) -> None:
    api, _ = both
    r = await api.post("/v1/chat/completions", chat(MODEL), headers={
        "X-Client-Request-Id": "loan-42", "X-Processing-Purpose": "credit assessment",
        "X-Consent-Id": "consent-7"})
    assert r.status_code == 200 and r.headers["x-client-request-id"] == "loan-42"
    api.app.state.audit.flush()
    with api.app.state.db.session() as s:
        rec = s.scalars(select(AuditRecord).where(
            AuditRecord.request_id == r.headers["x-request-id"])).one()
    assert (rec.client_request_id, rec.purpose, rec.consent_id) == ("loan-42", None, "consent-7")
    opened = [{"actor": rec.actor, "ts": rec.ts, "personal": rec.personal}]
    api.app.state.audit.vault.open_rows(opened)  # the purpose is sealed with the address
    assert opened[0]["purpose"] == "credit assessment" and opened[0]["client_addr"]


async def test_personal_data_the_client_writes_into_the_record_is_masked(
        both: tuple[AppClient, RewriteStage]) -> None:
    api, _ = both
    r = await api.post("/v1/chat/completions", chat(MODEL), headers={
        "X-Client-Request-Id": "call-13812345678", "X-Processing-Purpose": "for li@example.com"})
    assert r.status_code == 200
    api.app.state.audit.flush()
    with api.app.state.db.session() as s:
        rec = s.scalars(select(AuditRecord).where(
            AuditRecord.request_id == r.headers["x-request-id"])).one()
    assert "13812345678" not in rec.client_request_id and "138****5678" in rec.client_request_id
    opened = [{"actor": rec.actor, "ts": rec.ts, "personal": rec.personal}]
    api.app.state.audit.vault.open_rows(opened)
    assert "li@example.com" not in opened[0]["purpose"] and "@example.com" in opened[0]["purpose"]
