"""``GET /admin/v1/audit`` over records the app itself wrote (admin acts, inference,
refusals), on SQLite and PostgreSQL: filters, keyset pages, every field, tenant isolation,
and bad filters named."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from autoglm.audit.record import COLUMNS
from autoglm.store.models import AuditRecord
from autoglm.timefmt import stamp
from tests.conftest import MODEL, make_settings, pg_database, start_app

pytestmark = pytest.mark.model

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
STAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}\+00:00$")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _app(tmp_path_factory: pytest.TempPathFactory, backend: str) -> AsyncIterator:
    data = tmp_path_factory.mktemp(f"auditread-{backend}")
    if backend == "sqlite":
        async for client in start_app(make_settings(data)):
            yield client
        return
    with pg_database() as url:
        async for client in start_app(make_settings(data, database_url=url)):
            yield client


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
async def world(request: pytest.FixtureRequest,
                tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict]:
    """Two tenants, each with an admin, a member and a guest; then inference by the
    members, and refusals (a guest's inference, a member at an admin route)."""
    async for client in _app(tmp_path_factory, request.param):
        w: dict = {"client": client, "ids": {}, "keys": {}}
        for t in ("bank", "hospital"):
            tenant = (await client.post("/admin/v1/tenants", {"name": t})).json()
            w["ids"][t] = tid = tenant["id"]
            await client.http.put(f"/admin/v1/tenants/{tid}/models", json={"models": [MODEL]},
                                  headers=client.auth)
            proj = (await client.post(f"/admin/v1/tenants/{tid}/projects",
                                      {"name": "main", "allowed_models": [MODEL]})).json()
            for who, role in (("admin", "tenant_admin"), ("member", "member"),
                              ("guest", "guest")):
                prn = (await client.post(f"/admin/v1/tenants/{tid}/principals",
                                         {"name": f"{t}-{who}"})).json()
                w["ids"][f"{t}/{who}"] = prn["id"]
                await client.post(f"/admin/v1/principals/{prn['id']}/bindings",
                                  {"role": role, "project_id": proj["id"]})
                key = (await client.post(f"/admin/v1/principals/{prn['id']}/keys", {})).json()
                w["keys"][f"{t}/{who}"] = key["key"]
        for t in ("bank", "hospital"):
            for _ in range(3):
                r = await client.http.post("/v1/chat/completions", json=CHAT,
                                           headers=bearer(w["keys"][f"{t}/member"]))
                assert r.status_code == 200, r.text
            r = await client.http.post("/v1/chat/completions", json=CHAT,
                                       headers=bearer(w["keys"][f"{t}/guest"]))
            assert r.status_code == 404
            r = await client.http.get(f"/admin/v1/tenants/{w['ids'][t]}/principals",
                                      headers=bearer(w["keys"][f"{t}/member"]))
            assert r.status_code == 403
        client.app.state.audit.flush()  # the queued inference records are committed
        yield w


def stored(client, **where) -> list[dict]:  # noqa: ANN001
    """The records in the database, as the API shows them."""
    client.app.state.audit.flush()
    with client.app.state.db.engine.connect() as conn:
        q = select(AuditRecord.__table__).order_by(AuditRecord.seq)
        for column, value in where.items():
            q = q.where(AuditRecord.__table__.c[column] == value)
        rows = [dict(r._mapping) for r in conn.execute(q)]
    client.app.state.audit.vault.open_rows(rows)  # personal fields opened, as the API does
    return [{"text": None, "erased": False, **r, "ts": stamp(r["ts"]),
             "detail": r["detail"] or {}} for r in rows]


async def all_pages(client, query: str, headers: dict,  # noqa: ANN001
                    limit: int = 7) -> list[dict]:
    out: list[dict] = []
    after = ""
    while True:
        r = await client.http.get(f"/admin/v1/audit?limit={limit}{query}{after}",
                                  headers=headers)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["data"]) <= limit
        out += page["data"]
        assert page["last_seq"] == (page["data"][-1]["seq"] if page["data"] else None)
        if not page["has_more"]:
            return out
        assert len(page["data"]) == limit
        after = f"&after={page['last_seq']}"


async def test_pages_cover_every_record_once_in_seq_order_with_every_field(world) -> None:
    client = world["client"]
    got = await all_pages(client, "", client.auth)
    want = stored(client)
    assert [r["seq"] for r in got] == [r["seq"] for r in want]  # none twice, none missed
    assert got == want  # every field, as stored
    assert set(got[0]) == {*COLUMNS, "text", "erased"}
    sealed = [r for r in got if r["personal"] is not None]  # the acts of a client
    assert sealed and all(r["personal"].startswith("pd1.") and r["client_addr"] == "127.0.0.1"
                          for r in sealed)
    assert all(STAMP.match(r["ts"]) and re.fullmatch("[0-9a-f]{64}", r["hash"]) for r in got)
    actions = {r["action"] for r in got}
    assert {"tenant.create", "key.create", "inference", "principal.list"} <= actions
    inference = next(r for r in got if r["action"] == "inference" and r["decision"] == "allow")
    assert inference["model"] == MODEL and inference["completion_tokens"] >= 1


@pytest.mark.parametrize("name", ["tenant", "actor", "action", "decision"])
async def test_each_filter_returns_exactly_its_records(world, name: str) -> None:
    client, ids = world["client"], world["ids"]
    value = {"tenant": ids["bank"], "actor": ids["bank/member"], "action": "inference",
             "decision": "deny"}[name]
    column = "tenant_id" if name == "tenant" else name
    want = stored(client, **{column: value})
    assert len(want) >= 2
    got = await all_pages(client, f"&{name}={value}", client.auth, limit=2)
    assert got == want


async def test_filters_combine_and_time_windows_are_exact(world) -> None:
    client, ids = world["client"], world["ids"]
    want = stored(client, tenant_id=ids["hospital"], action="inference")
    got = await all_pages(client, f"&tenant={ids['hospital']}&action=inference", client.auth)
    assert got == want and len(got) == 4  # 3 answered, 1 refused
    everything = stored(client)
    middle = everything[len(everything) // 3]["ts"]
    later = everything[2 * len(everything) // 3]["ts"]
    window = [r for r in everything if middle <= r["ts"] < later]
    q = f"&since={middle.replace('+00:00', 'Z')}&until={later.replace('+', '%2B')}"
    assert await all_pages(client, q, client.auth, limit=3) == window
    assert window and len(window) < len(everything)
    # an offset other than UTC names the same instant
    at = datetime.fromisoformat(middle).astimezone(timezone(timedelta(hours=8)))
    q8 = f"&since={at.isoformat().replace('+', '%2B')}&until={later.replace('+', '%2B')}"
    assert await all_pages(client, q8, client.auth) == window
    future = stamp(datetime.now(UTC) + timedelta(days=1)).replace("+", "%2B")
    empty = (await client.get(f"/admin/v1/audit?since={future}")).json()
    assert empty == {"object": "list", "data": [], "has_more": False, "last_seq": None}


async def test_a_tenant_admin_reads_only_their_tenant(world) -> None:
    client, ids, keys = world["client"], world["ids"], world["keys"]
    admin = bearer(keys["bank/admin"])
    own = await all_pages(client, "", admin)
    assert own == stored(client, tenant_id=ids["bank"])
    assert {r["tenant_id"] for r in own} == {ids["bank"]}
    assert await all_pages(client, f"&tenant={ids['bank']}", admin) == own
    other = await client.http.get(f"/admin/v1/audit?tenant={ids['hospital']}", headers=admin)
    missing = await client.http.get("/admin/v1/audit?tenant=ten_0000000000000000",
                                    headers=admin)
    assert other.status_code == missing.status_code == 404
    assert other.json() == missing.json()
    # filters cannot widen it: another tenant's actor gives nothing
    r = await client.http.get(f"/admin/v1/audit?actor={ids['hospital/member']}", headers=admin)
    assert r.status_code == 200 and r.json()["data"] == []


async def test_members_and_guests_may_not_read_the_audit_log(world) -> None:
    client, ids, keys = world["client"], world["ids"], world["keys"]
    for who in ("member", "guest"):
        h = bearer(keys[f"bank/{who}"])
        assert (await client.http.get("/admin/v1/audit", headers=h)).status_code == 403
        own = await client.http.get(f"/admin/v1/audit?tenant={ids['bank']}", headers=h)
        assert own.status_code == 403
        other = await client.http.get(f"/admin/v1/audit?tenant={ids['hospital']}", headers=h)
        assert other.status_code == 404
    refused = stored(client, action="audit.read", decision="deny")
    assert {r["actor"] for r in refused} >= {ids["bank/member"], ids["bank/guest"]}


@pytest.mark.parametrize(("query", "param"), [
    ("since=yesterday", "since"),
    ("until=2026-01-01", "until"),  # a date is not a time
    ("since=2026-01-01T00:00:00", "since"),  # no offset
    ("since=2026-02-30T00:00:00Z", "since"),
    ("since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z", "until"),
    ("decision=maybe", "decision"),
    ("tenant=bank", "tenant"),
    ("actor=", "actor"),
    ("action=" + "x" * 65, "action"),
    ("limit=0", "limit"),
    ("limit=101", "limit"),
    ("after=-1", "after"),
    ("after=99999999999999999999", "after"),
    ("tenant_id=ten_0000000000000000", "tenant_id"),  # a typo must not return everything
    ("action=a&action=b", "action"),
])
async def test_bad_filters_are_400_naming_the_parameter(world, query: str, param: str) -> None:
    client = world["client"]
    r = await client.get(f"/admin/v1/audit?{query}")
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
