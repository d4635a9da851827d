"""``GET /admin/v1/usage`` and ``autoglm usage`` after real requests through the app (SQLite
and PostgreSQL): the numbers are those of the audit records and of the answers the
clients got, and each role sees what it may: members and guests their project (guests
with key ids masked), tenant admins their tenant, platform admins everything."""

from __future__ import annotations

import asyncio
import json
from collections import Counter, defaultdict
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from autoglm.cli.main import app as cli_app
from autoglm.store.models import AuditRecord
from tests.conftest import MODEL, make_settings, pg_database, start_app

pytestmark = pytest.mark.model

SUMS = ("requests", "errors", "denials", "prompt_tokens", "completion_tokens")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def chat(model: str = MODEL) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


async def _app(tmp_path_factory: pytest.TempPathFactory, backend: str) -> AsyncIterator:
    data = tmp_path_factory.mktemp(f"usage-{backend}")
    if backend == "sqlite":
        async for client in start_app(make_settings(data)):
            yield client, data, None
        return
    with pg_database() as url:
        async for client in start_app(make_settings(data, database_url=url)):
            yield client, data, url


async def use(w: dict, who: str, n: int, project: str, model: str = MODEL,
              status: int = 200) -> None:
    """``n`` chat completions by ``who`` in ``project``; what they used, as the answers say."""
    for _ in range(n):
        r = await w["client"].http.post("/v1/chat/completions", json=chat(model),
                                        headers={**bearer(w["keys"][who]),
                                                 "OpenAI-Project": w["ids"][project]})
        assert r.status_code == status, r.text
        # a model that does not exist is not recorded: the request is still counted
        row = w["usage"][(project, who, model if model == MODEL else None)]
        row["requests"] += 1
        if status == 200:
            row["prompt_tokens"] += r.json()["usage"]["prompt_tokens"]
            row["completion_tokens"] += r.json()["usage"]["completion_tokens"]
        else:
            row["denials"] += 1


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
async def world(request: pytest.FixtureRequest,
                tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict]:
    """bank (projects main and side) and hospital (main); a tenant admin, a member and a
    guest of bank/main, a member of hospital/main; then real requests by each."""
    async for client, data, url in _app(tmp_path_factory, request.param):
        post, http = client.post, client.http
        w: dict = {"client": client, "data": data, "url": url, "ids": {}, "keys": {},
                   "key_ids": {}, "usage": defaultdict(Counter)}
        ids = w["ids"]
        for t in ("bank", "hospital"):
            tenant = (await post("/admin/v1/tenants", {"name": t})).json()
            ids[t] = tenant["id"]
            await http.put(f"/admin/v1/tenants/{tenant['id']}/models",
                           json={"models": [MODEL]}, headers=client.auth)
            for p in ("main", "side") if t == "bank" else ("main",):
                proj = (await post(f"/admin/v1/tenants/{tenant['id']}/projects",
                                   {"name": p, "allowed_models": [MODEL]})).json()
                ids[f"{t}/{p}"] = proj["id"]
            who_roles = ((("admin", "tenant_admin"), ("member", "member"), ("guest", "guest"))
                         if t == "bank" else (("member", "member"),))
            for who, role in who_roles:
                prn = (await post(f"/admin/v1/tenants/{tenant['id']}/principals",
                                  {"name": f"{t}-{who}"})).json()
                r = await post(f"/admin/v1/principals/{prn['id']}/bindings",
                               {"role": role, "project_id": ids[f"{t}/main"]})
                assert r.status_code == 201, r.text
                ids[f"{t}/{who}/principal"] = prn["id"]
                k = (await post(f"/admin/v1/principals/{prn['id']}/keys", {})).json()
                w["keys"][f"{t}/{who}"], w["key_ids"][f"{t}/{who}"] = k["key"], k["id"]

        await use(w, "bank/member", 3, "bank/main")
        await use(w, "bank/member", 1, "bank/main", model="no-such-model", status=404)
        await use(w, "bank/admin", 2, "bank/side")
        await use(w, "bank/guest", 1, "bank/main", status=404)  # guests may not infer
        await use(w, "hospital/member", 2, "hospital/main")
        await asyncio.to_thread(client.app.state.audit.flush, 30)
        yield w


async def usage(w: dict, who: str | None = None, query: str = "") -> tuple[int, dict]:
    headers = w["client"].auth if who is None else bearer(w["keys"][who])
    r = await w["client"].http.get(f"/admin/v1/usage{query}", headers=headers)
    return r.status_code, r.json()


def summed(rows: list[dict]) -> dict[tuple, Counter]:
    out: dict[tuple, Counter] = defaultdict(Counter)
    for row in rows:
        key = (row["tenant_id"], row["project_id"], row["key_id"], row["model"])
        out[key].update({n: row[n] for n in SUMS})
    return out


async def test_usage_is_what_the_records_and_the_answers_say(world) -> None:
    w, ids = world, world["ids"]
    status, hours = await usage(w, query="?bucket=hour")
    assert status == 200 and not hours["has_more"]
    with w["client"].app.state.db.session() as s:
        records = s.scalars(select(AuditRecord).where(AuditRecord.action == "inference")).all()
    from_records: dict[tuple, Counter] = defaultdict(Counter)
    for r in records:
        row = from_records[(r.tenant_id, r.project_id, r.key_id, r.model)]
        row["requests"] += r.count
        row["errors"] += r.count if r.decision == "error" or (r.status or 0) >= 500 else 0
        row["denials"] += r.count if r.decision == "deny" else 0
        row["prompt_tokens"] += (r.prompt_tokens or 0) * r.count
        row["completion_tokens"] += (r.completion_tokens or 0) * r.count
    table = summed(hours["data"])
    assert {k: +v for k, v in table.items()} == {k: +v for k, v in from_records.items()}
    # and what the clients were answered, token for token
    for (project, who, model), want in w["usage"].items():
        tenant = ids[project.split("/")[0]]
        got = table[(tenant, ids[project], w["key_ids"][who], model)]
        assert {n: got[n] for n in want} == dict(want), (project, who, model)
    assert sum(r["requests"] for r in hours["data"]) == 9
    _, days = await usage(w, query="?bucket=day")
    assert summed(days["data"]) == table  # the same requests, counted per day
    for row in hours["data"]:
        if row["model"] == MODEL and row["denials"] == 0:
            p50, p95, p99 = row["latency_p50_ms"], row["latency_p95_ms"], row["latency_p99_ms"]
            assert 0 < p50 <= p95 <= p99 <= row["latency_max_ms"], row
            assert row["total_tokens"] == row["prompt_tokens"] + row["completion_tokens"] > 0


async def test_member_reads_its_project_only(world) -> None:
    w, ids = world, world["ids"]
    status, body = await usage(w, "bank/member")
    assert status == 200
    assert {r["project_id"] for r in body["data"]} == {ids["bank/main"]}
    keys = {r["key_id"] for r in body["data"]}
    assert keys == {w["key_ids"]["bank/member"], w["key_ids"]["bank/guest"]}  # unmasked
    assert (await usage(w, "bank/member", f"?tenant={ids['bank']}"))[1]["data"] == body["data"]
    assert (await usage(w, "bank/member", f"?project={ids['bank/side']}"))[0] == 403
    assert (await usage(w, "bank/member", f"?tenant={ids['hospital']}"))[0] == 404
    assert (await usage(w, "bank/member", f"?project={ids['hospital/main']}"))[0] == 404
    status, other = await usage(w, "hospital/member")
    assert status == 200 and {r["tenant_id"] for r in other["data"]} == {ids["hospital"]}


async def test_guest_reads_its_project_with_key_ids_masked(world) -> None:
    w, ids = world, world["ids"]
    r = await w["client"].http.get("/admin/v1/usage", headers=bearer(w["keys"]["bank/guest"]))
    assert r.status_code == 200
    rows = r.json()["data"]
    assert rows and {row["project_id"] for row in rows} == {ids["bank/main"]}
    for key_id in w["key_ids"].values():
        assert key_id not in r.text  # no full key id anywhere in the answer
    real = {w["key_ids"]["bank/member"], w["key_ids"]["bank/guest"]}
    for row in rows:
        shown = row["key_id"]
        assert shown.endswith("…") and len(shown) <= 9
        assert any(k.startswith(shown[:-1]) for k in real)
    assert sum(row["requests"] for row in rows) == 5  # the counts are not masked
    assert (await usage(w, "bank/guest", f"?project={ids['bank/side']}"))[0] == 403


async def test_tenant_admin_reads_its_tenant_and_no_other(world) -> None:
    w, ids = world, world["ids"]
    status, body = await usage(w, "bank/admin")
    assert status == 200
    assert {r["project_id"] for r in body["data"]} == {ids["bank/main"], ids["bank/side"]}
    assert all("…" not in (r["key_id"] or "") for r in body["data"])
    other = await w["client"].http.get(f"/admin/v1/usage?tenant={ids['hospital']}",
                                       headers=bearer(w["keys"]["bank/admin"]))
    missing = await w["client"].http.get("/admin/v1/usage?tenant=ten_0000000000000000",
                                         headers=bearer(w["keys"]["bank/admin"]))
    assert other.status_code == missing.status_code == 404
    assert other.json() == missing.json()
    status, side = await usage(w, "bank/admin", f"?project={ids['bank/side']}&bucket=hour")
    assert status == 200 and sum(r["requests"] for r in side["data"]) == 2


async def test_filters_and_pages(world) -> None:
    w = world
    _, everything = await usage(w, query="?bucket=hour")
    pages, after = [], ""
    while True:
        status, page = await usage(w, query=f"?bucket=hour&limit=1{after}")
        assert status == 200 and len(page["data"]) <= 1
        pages += page["data"]
        if not page["has_more"]:
            break
        after = f"&after={page['last_id']}"
    assert pages == everything["data"]
    _, one_key = await usage(w, query=f"?bucket=hour&key={w['key_ids']['bank/member']}")
    assert {r["key_id"] for r in one_key["data"]} == {w["key_ids"]["bank/member"]}
    _, one_model = await usage(w, query=f"?model={MODEL}")
    assert {r["model"] for r in one_model["data"]} == {MODEL}
    assert sum(r["requests"] for r in one_model["data"]) == 8  # all but the unknown model
    _, future = await usage(w, query="?since=2999-01-01&until=2999-02-01")
    assert future["data"] == []


@pytest.mark.parametrize(("query", "param"), [
    ("?bucket=week", "bucket"), ("?since=yesterday", "since"), ("?until=2025-13-01", "until"),
    ("?since=2025-05-02&until=2025-05-01", "since"), ("?since=99999999d", "since"),
    ("?limit=0", "limit"), ("?limit=%C2%B2", "limit"), ("?after=x", "after"),
    ("?after=123456", "after"), ("?tenant=BANK", "tenant"), ("?project=../x", "project"),
    ("?key=agk_secret", "key"), ("?model=" + "m" * 200, "model"), ("?model=a%00b", "model"), ("?tennant=x", "tennant"),
    ("?bucket=day&bucket=hour", "bucket"),
])
async def test_bad_parameters_are_a_400_naming_them(world, query: str, param: str) -> None:
    status, body = await usage(world, query=query)
    assert status == 400, body
    assert body["error"]["param"] == param


async def test_cli_prints_the_same_usage(world, monkeypatch: pytest.MonkeyPatch) -> None:
    w = world
    monkeypatch.setenv("AUTOGLM_DATA_DIR", str(w["data"]))
    if w["url"]:
        monkeypatch.setenv("AUTOGLM_DATABASE_URL", w["url"])
    runner = CliRunner()
    as_json = await asyncio.to_thread(runner.invoke, cli_app,
                                      ["usage", "--bucket", "hour", "--json"])
    assert as_json.exit_code == 0, as_json.output
    _, api = await usage(w, query="?bucket=hour")
    assert json.loads(as_json.stdout)["data"] == api["data"]
    table = await asyncio.to_thread(runner.invoke, cli_app,
                                    ["usage", "--bucket", "hour", "--tenant", w["ids"]["bank"]])
    assert table.exit_code == 0, table.output
    assert w["key_ids"]["bank/member"] in table.stdout and "total" in table.stdout
    assert w["ids"]["hospital"] not in table.stdout
    assert "7" in table.stdout.split("total")[1]  # bank's 7 requests
    bad = await asyncio.to_thread(runner.invoke, cli_app, ["usage", "--bucket", "week"])
    assert bad.exit_code == 1 and "bucket must be hour or day" in bad.output


async def test_a_narrowed_key_reads_only_what_it_was_narrowed_to(world) -> None:
    w, ids = world, world["ids"]
    keys = f"/admin/v1/principals/{ids['bank/admin/principal']}/keys"
    side_only = (await w["client"].post(keys, {"projects": [ids["bank/side"]]})).json()["key"]
    r = await w["client"].http.get("/admin/v1/usage", headers=bearer(side_only))
    assert r.status_code == 200
    assert {row["project_id"] for row in r.json()["data"]} == {ids["bank/side"]}
    r = await w["client"].http.get(f"/admin/v1/usage?project={ids['bank/main']}",
                                   headers=bearer(side_only))
    assert r.status_code == 403
    no_usage = (await w["client"].post(keys, {"actions": ["inference"]})).json()["key"]
    r = await w["client"].http.get("/admin/v1/usage", headers=bearer(no_usage))
    assert r.status_code == 403
