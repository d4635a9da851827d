"""The identity admin API: two tenants set up over HTTP, isolation, keys, audit."""

from __future__ import annotations

import asyncio

from collections.abc import AsyncIterator

import pytest

from autoglm.api.routes import ROUTES
from autoglm.store.models import AuditRecord
from tests.conftest import MODEL, make_settings, pg_database, start_app

pytestmark = pytest.mark.model

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _app(tmp_path_factory: pytest.TempPathFactory, backend: str) -> AsyncIterator:
    data = tmp_path_factory.mktemp(f"idadmin-{backend}")
    if backend == "sqlite":
        async for client in start_app(make_settings(data)):
            yield client
        return
    with pg_database() as url:
        async for client in start_app(make_settings(data, database_url=url)):
            yield client


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
async def setup(request: pytest.FixtureRequest,
                tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict]:
    async for client in _app(tmp_path_factory, request.param):
        post = client.post
        w: dict = {"client": client, "ids": {}, "keys": {}}
        for t in ("bank", "hospital"):
            tenant = (await post("/admin/v1/tenants", {"name": t})).json()
            w["ids"][t] = tenant["id"]
            granted = await client.http.put(f"/admin/v1/tenants/{tenant['id']}/models",
                                            json={"models": [MODEL]}, headers=client.auth)
            assert granted.status_code == 200, granted.text
            proj = (await post(f"/admin/v1/tenants/{tenant['id']}/projects",
                               {"name": "main", "allowed_models": [MODEL]})).json()
            w["ids"][f"{t}/main"] = proj["id"]
            for who, role in (("admin", "tenant_admin"), ("member", "member"),
                              ("guest", "guest")):
                prn = (await post(f"/admin/v1/tenants/{tenant['id']}/principals",
                                  {"name": f"{t}-{who}"})).json()
                w["ids"][f"{t}/{who}"] = prn["id"]
                b = await post(f"/admin/v1/principals/{prn['id']}/bindings",
                               {"role": role, "project_id": proj["id"]})
                assert b.status_code == 201, b.text
                k = (await post(f"/admin/v1/principals/{prn['id']}/keys", {"name": who})).json()
                w["keys"][f"{t}/{who}"] = k["key"]
        yield w


async def test_two_tenants_set_up_and_used(setup) -> None:
    http, k = setup["client"].http, setup["keys"]
    for t in ("bank", "hospital"):
        r = await http.post("/v1/chat/completions", json=CHAT, headers=bearer(k[f"{t}/member"]))
        assert r.status_code == 200, r.text
        r = await http.post("/v1/chat/completions", json=CHAT, headers=bearer(k[f"{t}/guest"]))
        assert r.status_code == 404


async def test_tenant_admin_sees_own_tenant_and_gets_404_for_the_other(setup) -> None:
    http, k, ids = setup["client"].http, setup["keys"], setup["ids"]
    h = bearer(k["bank/admin"])
    own = await http.get(f"/admin/v1/tenants/{ids['bank']}/principals", headers=h)
    assert own.status_code == 200 and len(own.json()["data"]) == 3
    other = await http.get(f"/admin/v1/tenants/{ids['hospital']}/principals", headers=h)
    missing = await http.get("/admin/v1/tenants/ten_0000000000000000/principals", headers=h)
    assert other.status_code == missing.status_code == 404
    assert other.json() == missing.json()
    listed = (await http.get("/admin/v1/tenants", headers=h)).json()["data"]
    assert [t["id"] for t in listed] == [ids["bank"]]
    # a key for a principal of the other tenant, or a binding across tenants: 404
    r = await http.post(f"/admin/v1/principals/{ids['hospital/member']}/keys", json={},
                        headers=h)
    assert r.status_code == 404
    r = await http.post(f"/admin/v1/principals/{ids['bank/member']}/bindings",
                        json={"role": "member", "project_id": ids["hospital/main"]}, headers=h)
    assert r.status_code == 404
    r = await http.post(f"/admin/v1/principals/{ids['bank/member']}/bindings",
                        json={"role": "platform_admin"}, headers=h)
    assert r.status_code == 400


async def test_keys_are_shown_once_and_never_listed(setup) -> None:
    client, ids = setup["client"], setup["ids"]
    created = (await client.post(f"/admin/v1/principals/{ids['bank/member']}/keys",
                                 {"name": "ci", "models": [MODEL]})).json()
    assert created["key"].startswith("agk_") and "key_hash" not in created
    listed = (await client.get(f"/admin/v1/principals/{ids['bank/member']}/keys")).json()
    assert all("key" not in k and "key_hash" not in k for k in listed["data"])
    assert created["id"] in {k["id"] for k in listed["data"]}
    one = (await client.get(f"/admin/v1/keys/{created['id']}")).json()
    assert one["id"] == created["id"] and "key" not in one and "key_hash" not in one
    prn = (await client.get(f"/admin/v1/principals/{ids['bank/member']}")).json()
    assert prn["bindings"][0]["role"] == "member"
    proj = (await client.get(f"/admin/v1/projects/{ids['bank/main']}")).json()
    assert proj["allowed_models"] == [MODEL]


async def test_rotate_with_grace_and_revoke_over_http(setup) -> None:
    client, ids = setup["client"], setup["ids"]
    old = (await client.post(f"/admin/v1/principals/{ids['bank/member']}/keys", {})).json()
    rotated = await client.post(f"/admin/v1/keys/{old['id']}/rotate", {"grace_hours": 1})
    assert rotated.status_code == 201 and rotated.json()["rotated_from"] == old["id"]
    new = rotated.json()["key"]
    for key in (old["key"], new):  # both work inside the grace window
        assert (await client.http.post("/v1/chat/completions", json=CHAT,
                                       headers=bearer(key))).status_code == 200
    forced = await client.post(f"/admin/v1/keys/{rotated.json()['id']}/rotate",
                               {"immediate": True})
    assert (await client.http.get("/v1/models", headers=bearer(new))).status_code == 401
    newest = forced.json()["key"]
    assert (await client.post(f"/admin/v1/keys/{forced.json()['id']}/revoke")).status_code == 200
    assert (await client.http.get("/v1/models", headers=bearer(newest))).status_code == 401


async def test_every_admin_act_is_audited(setup) -> None:
    client = setup["client"]
    t = (await client.post("/admin/v1/tenants", {"name": "audited"})).json()
    await client.http.post(f"/admin/v1/tenants/{t['id']}/projects", json={"name": "x"},
                           headers=bearer(setup["keys"]["bank/admin"]))  # denied
    with client.app.state.db.session() as s:
        events = s.query(AuditRecord).order_by(AuditRecord.seq).all()
    acts = [(e.action, e.decision) for e in events]
    assert ("tenant.create", "allow") in acts and ("key.create", "allow") in acts
    assert ("binding.create", "allow") in acts and ("project.create", "deny") in acts
    mine = [e for e in events if e.resource == t["id"]]
    assert mine[0].actor == "prn_platform_admin" and mine[0].request_id


async def test_pagination_and_bad_input(setup) -> None:
    client = setup["client"]
    first = (await client.get("/admin/v1/tenants?limit=2")).json()
    assert len(first["data"]) == 2 and first["has_more"]
    rest = (await client.get(f"/admin/v1/tenants?limit=100&after={first['last_id']}")).json()
    assert first["last_id"] not in {t["id"] for t in rest["data"]}
    assert (await client.get("/admin/v1/tenants?limit=0")).status_code == 400
    assert (await client.post("/admin/v1/tenants", {"name": ""})).status_code == 400
    dup = await client.post("/admin/v1/tenants", {"name": "bank"})
    assert dup.status_code == 400 and "already exists" in dup.json()["error"]["message"]
    # a Unicode digit is not a number here (it was a 500)
    assert (await client.get("/admin/v1/tenants?limit=%C2%B2")).status_code == 400


async def test_numbers_in_the_admin_api_are_bounded(setup) -> None:
    client, ids = setup["client"], setup["ids"]
    keys_url = f"/admin/v1/principals/{ids['bank/member']}/keys"
    for hours in (1e12, 1e-300, 0, -1):  # overflow, an expiry before creation, nonsense
        r = await client.post(keys_url, {"expires_in_hours": hours})
        assert r.status_code == 400, (hours, r.text)
        assert r.json()["error"]["param"] == "expires_in_hours"
    key = (await client.post(keys_url, {"expires_in_hours": 1})).json()
    r = await client.post(f"/admin/v1/keys/{key['id']}/rotate", {"grace_hours": 1e8})
    assert r.status_code == 400 and r.json()["error"]["param"] == "grace_hours", r.text


async def test_policy_read_and_validate(setup) -> None:
    client = setup["client"]
    body = (await client.get("/admin/v1/policy")).json()
    assert "member" in body["policy"]["roles"] and body["last_error"] is None
    bad = await client.http.post("/admin/v1/policy/validate", content=b"version: 1\nroles: {x: []}",
                                 headers=client.auth)
    assert bad.json()["valid"] is False and "unknown role" in bad.json()["error"]
    denied = await client.http.get("/admin/v1/policy", headers=bearer(setup["keys"]["bank/admin"]))
    assert denied.status_code == 403


# --- the isolation matrix, generated from the route table --------------------------------
# Which roles may call each admin action on their OWN tenant's objects. Nobody but the
# platform admin may ever touch another tenant's. A route whose action is missing here
# fails the test: every new route needs a decision.
EXPECTED = {
    "tenant.create": {"platform_admin"}, "tenant.list": {"platform_admin", "tenant_admin"},
    "tenant.read": {"platform_admin", "tenant_admin"}, "tenant.grant": {"platform_admin"},
    "project.create": {"platform_admin", "tenant_admin"},
    "project.list": {"platform_admin", "tenant_admin"},
    "project.update": {"platform_admin", "tenant_admin"},
    "project.read": {"platform_admin", "tenant_admin"},
    "principal.read": {"platform_admin", "tenant_admin"},
    "key.read": {"platform_admin", "tenant_admin"},
    "principal.create": {"platform_admin", "tenant_admin"},
    "principal.list": {"platform_admin", "tenant_admin"},
    "binding.create": {"platform_admin", "tenant_admin"},
    "binding.delete": {"platform_admin", "tenant_admin"},
    "key.create": {"platform_admin", "tenant_admin"},
    "key.list": {"platform_admin", "tenant_admin"},
    "key.rotate": {"platform_admin", "tenant_admin"},
    "key.revoke": {"platform_admin", "tenant_admin"},
    "policy.read": {"platform_admin"}, "policy.validate": {"platform_admin"},
    "engine.read": {"platform_admin"}, "engine.write": {"platform_admin"},
    # what a centre serves its edge nodes: platform keys only
    "edge.sync": {"platform_admin"}, "edge.read": {"platform_admin"},
    # a project's limits (LIMITS below): its tenant's admins (a tenant's own: platform only)
    "limit.read": {"platform_admin", "tenant_admin"},
    "limit.write": {"platform_admin", "tenant_admin"},
    # a tenant admin reads their own tenant's audit records (named by ?tenant=, QUERY below)
    "audit.read": {"platform_admin", "tenant_admin"},
    # usage alerts of their own tenant (named by ?tenant=, QUERY below)
    "alert.read": {"platform_admin", "tenant_admin"},
    # usage of a project (named by ?project=): its members and guests read it too
    "usage.read": {"platform_admin", "tenant_admin", "member", "guest"},
    # /v1: using (and seeing) the project's model
    "inference": {"platform_admin", "tenant_admin", "member"},
    "model.list": {"platform_admin", "tenant_admin", "member", "guest"},
    # /v1/files and /v1/batches of the project: its guests follow its batches, no more
    "file.create": {"platform_admin", "tenant_admin", "member"},
    "file.read": {"platform_admin", "tenant_admin", "member"},
    "file.delete": {"platform_admin", "tenant_admin", "member"},
    "job.create": {"platform_admin", "tenant_admin", "member"},
    "job.read": {"platform_admin", "tenant_admin", "member", "guest"},
    "job.cancel": {"platform_admin", "tenant_admin", "member"},
}


# routes that name their tenant or project in the query, not the path: the matrix names it there
QUERY = {"audit.read": "?tenant={tenant}", "alert.read": "?tenant={tenant}",
         "usage.read": "?project={project}"}


BATCH_FILE = (b'{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":'
              b'{"model":"%s","max_tokens":2,"messages":[{"role":"user","content":"hi"}]}}\n'
              % MODEL.encode())


async def _batch_allowed(client, method: str, path: str, headers: dict) -> tuple[bool, int]:
    """(allowed, status) for a /v1/files or /v1/batches route, on a file and a batch the
    platform admin just made in the project the caller names: a list is allowed when it
    shows them."""
    http, project = client.http, {"OpenAI-Project": headers["OpenAI-Project"]}
    made = {}
    for kind, route, body in (("file", "/v1/files", None), ("batch", "/v1/batches", True)):
        if body is None:
            r = await http.post(route, headers={**client.auth, **project},
                                files={"file": ("in.jsonl", BATCH_FILE)},
                                data={"purpose": "batch"})
        else:
            r = await http.post(route, headers={**client.auth, **project}, json={
                "input_file_id": made["file"], "endpoint": "/v1/chat/completions",
                "completion_window": "24h"})
        assert r.status_code == 200, r.text
        made[kind] = r.json()["id"]
    url = path.replace("{file_id}", made["file"]).replace("{batch_id}", made["batch"])
    if method == "POST" and path == "/v1/files":
        r = await http.post(url, headers=headers, files={"file": ("in.jsonl", BATCH_FILE)},
                            data={"purpose": "batch"})
    elif method == "POST" and path == "/v1/batches":
        r = await http.post(url, headers=headers, json={
            "input_file_id": made["file"], "endpoint": "/v1/chat/completions",
            "completion_window": "24h"})
    elif method == "GET" and path in ("/v1/files", "/v1/batches"):
        r = await http.get(url, headers=headers)
        mine = made["file" if path == "/v1/files" else "batch"]
        return mine in {x["id"] for x in r.json()["data"]}, r.status_code
    else:
        r = await http.request(method, url, headers=headers)
    return r.status_code == 200, r.status_code


async def _v1_allowed(http, method: str, path: str, headers: dict) -> tuple[bool, int]:
    """(allowed, status) for a /v1 route: a denied model is a 404, or absent from the list."""
    if path == "/v1/models":
        r = await http.get(path, headers=headers)
        return MODEL in {m["id"] for m in r.json()["data"]}, r.status_code
    if method == "GET":
        r = await http.get(path.replace("{model:path}", MODEL), headers=headers)
    elif path.endswith("chat/completions"):
        r = await http.post(path, json=CHAT, headers=headers)
    else:
        r = await http.post(path, json={"model": MODEL, "prompt": "hi", "max_tokens": 2},
                            headers=headers)
    return r.status_code == 200, r.status_code


async def test_v1_isolation_matrix(setup) -> None:
    client, ids, keys = setup["client"], setup["ids"], setup["keys"]
    client.app.state.batch.worker.concurrency = 0  # batches stay cancellable throughout
    callers = {"platform_admin": client.auth["Authorization"].split()[1],
               "tenant_admin": keys["bank/admin"], "member": keys["bank/member"],
               "guest": keys["bank/guest"]}
    failures = []
    for method, path, _, action, *_ in ROUTES:
        if not path.startswith("/v1/"):
            continue
        assert action in EXPECTED, f"no isolation expectation for {method} {path} ({action})"
        for side, t in (("own", "bank"), ("other", "hospital")):
            for role, secret in callers.items():
                headers = {**bearer(secret), "OpenAI-Project": ids[f"{t}/main"]}
                statuses: tuple[int, ...] = (200, 404)
                if path.startswith(("/v1/files", "/v1/batches")):
                    allowed, status = await _batch_allowed(client, method, path, headers)
                    statuses = (200, 403, 404)  # 403: it sees the object, may not act on it
                else:
                    allowed, status = await _v1_allowed(client.http, method, path, headers)
                expected = role in EXPECTED[action] and (side == "own" or role == "platform_admin")
                if allowed != expected or status not in statuses:
                    failures.append((role, side, method, path, status))
    assert failures == []


async def test_isolation_matrix(setup) -> None:
    client, ids, keys = setup["client"], setup["ids"], setup["keys"]
    http = client.http
    callers = {"platform_admin": client.auth["Authorization"].split()[1],
               "tenant_admin": keys["bank/admin"], "member": keys["bank/member"],
               "guest": keys["bank/guest"]}
    failures = []
    for method, path, _, action, *_ in ROUTES:
        if not path.startswith("/admin/"):
            continue
        assert action in EXPECTED, f"no isolation expectation for {method} {path} ({action})"
        for side in ("own", "other"):
            t = "bank" if side == "own" else "hospital"
            for role, secret in callers.items():
                n = len(failures) + 1000 * [(r.method, r.path) for r in ROUTES].index((method, path))
                tag = f"{role}-{side}-{n}"
                # fresh objects per call, so destructive routes have something to act on
                prn = (await client.post(f"/admin/v1/tenants/{ids[t]}/principals",
                                         {"name": f"p-{tag}"})).json()
                bnd = (await client.post(f"/admin/v1/principals/{prn['id']}/bindings",
                                         {"role": "guest", "project_id": ids[f"{t}/main"]})).json()
                key = (await client.post(f"/admin/v1/principals/{prn['id']}/keys", {})).json()
                url = (path.replace("{scope}/{id}", f"project/{ids[f'{t}/main']}")
                       .replace("{tenant}", ids[t]).replace("{project}", ids[f"{t}/main"])
                       .replace("{principal}", prn["id"]).replace("{binding}", bnd["id"])
                       .replace("{key}", key["id"]).replace("{model}", MODEL)
                       .replace("{name}", "embedded").replace("{node}", "edge-a"))
                url += QUERY.get(action, "").format(tenant=ids[t], project=ids[f"{t}/main"])
                body: dict = {}
                if path.endswith(("/tenants", "/projects", "/principals")):
                    body = {"name": f"n-{tag}"}
                elif path.endswith("/bindings"):
                    body = {"role": "member", "project_id": ids[f"{t}/main"]}
                elif path.endswith("{project}"):
                    body = {"allowed_models": [MODEL]}
                elif path.endswith("{tenant}/models"):
                    body = {"models": [MODEL]}
                r = await http.request(method, url, json=body if method in ("POST", "PATCH", "PUT")
                                       else None, headers=bearer(secret))
                allowed = role in EXPECTED[action] and (side == "own" or role == "platform_admin"
                                                       or action == "tenant.list")
                ok = r.status_code < 400 or (r.status_code == 400 and allowed)
                if allowed != ok or (not allowed and r.status_code not in (403, 404)):
                    failures.append((role, side, method, path, r.status_code))
    assert failures == []


async def test_openapi_describes_every_route(setup) -> None:
    doc = (await setup["client"].http.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    for method, path, _, action, *_ in ROUTES:
        op = doc["paths"][path.replace("{model:path}", "{model}")][method.lower()]
        assert op.get("x-autoglm-action") == action
    key_op = doc["paths"]["/admin/v1/principals/{principal}/keys"]["post"]
    assert key_op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("KeyIn")
    assert "KeyIn" in doc["components"]["schemas"]


async def test_a_binding_exists_once_and_deleting_it_ends_the_role(setup) -> None:
    client, ids = setup["client"], setup["ids"]
    prn = (await client.post(f"/admin/v1/tenants/{ids['bank']}/principals",
                             {"name": "twice-admin"})).json()
    key = (await client.post(f"/admin/v1/principals/{prn['id']}/keys", {})).json()["key"]
    first = await client.post(f"/admin/v1/principals/{prn['id']}/bindings",
                              {"role": "tenant_admin"})
    assert first.status_code == 201, first.text
    for _ in range(2):
        again = await client.post(f"/admin/v1/principals/{prn['id']}/bindings",
                                  {"role": "tenant_admin"})
        assert again.status_code == 400 and "already exists" in again.text
    assert (await client.http.get(f"/admin/v1/tenants/{ids['bank']}",
                                  headers=bearer(key))).status_code == 200
    assert (await client.http.request("DELETE", f"/admin/v1/bindings/{first.json()['id']}",
                                      headers=client.auth)).status_code == 200
    await asyncio.sleep(2.1)  # the key cache (2 s) holds the old bindings at most that long
    r = await client.http.get(f"/admin/v1/tenants/{ids['bank']}", headers=bearer(key))
    assert r.status_code in (403, 404), r.text


async def test_model_list_is_its_own_right(setup) -> None:
    """A key narrowed to model.list sees the project's model but cannot use it; a key
    narrowed to inference can use it but not list it."""
    client, ids = setup["client"], setup["ids"]
    keys_url = f"/admin/v1/principals/{ids['bank/member']}/keys"
    lister = (await client.post(keys_url, {"actions": ["model.list"]})).json()["key"]
    user = (await client.post(keys_url, {"actions": ["inference"]})).json()["key"]
    project = {"OpenAI-Project": ids["bank/main"]}
    listed = await client.http.get("/v1/models", headers={**bearer(lister), **project})
    assert [m["id"] for m in listed.json()["data"]] == [MODEL]
    assert (await client.http.get(f"/v1/models/{MODEL}",
                                  headers={**bearer(lister), **project})).status_code == 200
    chat = await client.http.post("/v1/chat/completions", json=CHAT,
                                  headers={**bearer(lister), **project})
    assert chat.status_code == 404
    assert (await client.http.get("/v1/models", headers={**bearer(user), **project})
            ).json()["data"] == []
    used = await client.http.post("/v1/chat/completions", json=CHAT,
                                  headers={**bearer(user), **project})
    assert used.status_code == 200, used.text


async def test_who_may_not_read_a_tenant_may_not_list_tenants(setup) -> None:
    client, ids, keys = setup["client"], setup["ids"], setup["keys"]
    loner = (await client.post(f"/admin/v1/tenants/{ids['bank']}/principals",
                               {"name": "no-binding"})).json()
    key = (await client.post(f"/admin/v1/principals/{loner['id']}/keys", {})).json()["key"]
    for secret in (key, keys["bank/member"], keys["bank/guest"]):
        assert (await client.http.get("/admin/v1/tenants",
                                      headers=bearer(secret))).status_code == 403
    own = await client.http.get("/admin/v1/tenants", headers=bearer(keys["bank/admin"]))
    assert [t["id"] for t in own.json()["data"]] == [ids["bank"]]


async def test_ids_that_cannot_exist_are_answered_without_the_database(setup) -> None:
    """On PostgreSQL a path id longer than its column was a 500 (value too long)."""
    from sqlalchemy import event

    client = setup["client"]
    engine = client.app.state.db.engine
    await client.get("/admin/v1/tenants")  # the admin key is now in the cache
    statements: list[str] = []

    def count(conn, cursor, statement, *args) -> None:  # noqa: ANN001
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        long_id = "ten_" + "a" * 300
        for method, url, body in (
            ("GET", f"/admin/v1/tenants/{long_id}", None),
            ("POST", f"/admin/v1/tenants/{long_id}/projects", {"name": "p"}),
            ("GET", f"/admin/v1/keys/key_{'b' * 300}", None),
            ("GET", "/admin/v1/projects/../../etc", None),
            ("POST", f"/admin/v1/principals/{'X' * 40}/keys", {}),
        ):
            r = await client.http.request(method, url, json=body, headers=client.auth)
            assert r.status_code == 404, (url, r.status_code, r.text)
        r = await client.get(f"/admin/v1/tenants?after={long_id}")
        assert r.status_code == 400
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert statements == []


async def test_a_refused_path_is_audited_without_the_personal_data_in_it(setup) -> None:
    """A path id is the caller's text: one that cannot be an id is refused unrecorded, an
    id-shaped one holding personal data is recorded masked (issue 11)."""
    client, h = setup["client"], bearer(setup["keys"]["bank/admin"])
    with client.app.state.db.session() as s:
        before = s.query(AuditRecord).count()
    for path in ("/admin/v1/principals/zhang.wei@example.com",
                 "/admin/v1/keys/11010519491231002X"):
        r = await client.http.get(path, headers=h)
        assert r.status_code == 404, r.text
    with client.app.state.db.session() as s:
        assert s.query(AuditRecord).count() == before  # named nothing: nothing recorded
    r = await client.http.get("/admin/v1/principals/prn_13812345678", headers=h)
    assert r.status_code == 404, r.text
    with client.app.state.db.session() as s:
        rec = s.query(AuditRecord).order_by(AuditRecord.seq.desc()).first()
    assert (rec.action, rec.decision, rec.status) == ("principal.read", "deny", 404)
    assert rec.resource == "prn_138****5678"


async def test_a_tenant_uses_only_the_models_granted_to_it(setup) -> None:
    """A tenant admin sending no project used every model on the platform; now the tenant's
    grant bounds every caller of the tenant, and projects can only narrow it."""
    client, http = setup["client"], setup["client"].http
    tenant = (await client.post("/admin/v1/tenants", {"name": "clinic"})).json()
    tid = tenant["id"]
    assert (await client.get(f"/admin/v1/tenants/{tid}/models")).json()["models"] == []
    refused = await client.post(f"/admin/v1/tenants/{tid}/projects",
                                {"name": "wide", "allowed_models": [MODEL]})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "allowed_models"
    prn = (await client.post(f"/admin/v1/tenants/{tid}/principals", {"name": "c-admin"})).json()
    await client.post(f"/admin/v1/principals/{prn['id']}/bindings", {"role": "tenant_admin"})
    admin = bearer((await client.post(f"/admin/v1/principals/{prn['id']}/keys", {})).json()["key"])

    async def usable(headers: dict) -> tuple[int, list[str]]:
        chat = await http.post("/v1/chat/completions", json=CHAT, headers=headers)
        listed = (await http.get("/v1/models", headers=headers)).json()["data"]
        return chat.status_code, [m["id"] for m in listed]

    assert await usable(admin) == (404, [])  # no project, nothing granted: nothing
    # the tenant admin may read its grant, never change it
    assert (await http.get(f"/admin/v1/tenants/{tid}/models", headers=admin)).status_code == 200
    own = await http.put(f"/admin/v1/tenants/{tid}/models", json={"models": [MODEL]},
                         headers=admin)
    assert own.status_code == 403
    granted = await http.put(f"/admin/v1/tenants/{tid}/models", json={"models": [MODEL]},
                             headers=client.auth)
    assert granted.json()["models"] == [MODEL]
    assert await usable(admin) == (200, [MODEL])  # at once: the grant change clears the cache
    proj = (await client.post(f"/admin/v1/tenants/{tid}/projects",
                              {"name": "main", "allowed_models": [MODEL]})).json()
    narrow = (await client.post(f"/admin/v1/tenants/{tid}/projects",
                                {"name": "narrow", "allowed_models": []})).json()
    assert await usable({**admin, "OpenAI-Project": proj["id"]}) == (200, [MODEL])
    assert await usable({**admin, "OpenAI-Project": narrow["id"]}) == (404, [])
    # taking the grant back ends it for the project that still lists the model
    await http.put(f"/admin/v1/tenants/{tid}/models", json={"models": []}, headers=client.auth)
    assert await usable({**admin, "OpenAI-Project": proj["id"]}) == (404, [])
    assert await usable(admin) == (404, [])
    with client.app.state.db.session() as s:
        acts = [(e.decision, e.detail.get("granted_models")) for e in s.query(AuditRecord)
                .filter(AuditRecord.resource == tid, AuditRecord.action == "tenant.grant")
                .order_by(AuditRecord.seq)]
    assert acts == [("deny", None), ("allow", [MODEL]), ("allow", [])]
    bad = await http.put(f"/admin/v1/tenants/{tid}/models", json={"models": "all"},
                         headers=client.auth)
    assert bad.status_code == 400


async def test_no_database_call_runs_on_the_event_loop(setup) -> None:
    """Every admin route, allowed and refused (a refusal writes an audit row), and the /v1
    routes: each SQL statement runs on a worker thread, never on the loop's thread."""
    import threading

    from sqlalchemy import event

    client, ids, keys = setup["client"], setup["ids"], setup["keys"]
    loop_thread = threading.get_ident()
    on_loop: list[str] = []
    seen: list[str] = []

    def watch(conn, cursor, statement, *args) -> None:  # noqa: ANN001
        seen.append(statement)
        if threading.get_ident() == loop_thread:
            on_loop.append(statement.split("\n")[0][:80])

    engine = client.app.state.db.engine
    client.app.state.authz._cache.clear()  # project and tenant lookups go to the database
    event.listen(engine, "before_cursor_execute", watch)
    try:
        for method, path, _, action, *_ in ROUTES:
            if not path.startswith(("/admin/", "/v1/")) or "{name}" in path:
                continue
            prn = (await client.post(f"/admin/v1/tenants/{ids['bank']}/principals",
                                     {"name": f"loop-{len(seen)}"})).json()
            bnd = (await client.post(f"/admin/v1/principals/{prn['id']}/bindings",
                                     {"role": "guest", "project_id": ids["bank/main"]})).json()
            key = (await client.post(f"/admin/v1/principals/{prn['id']}/keys", {})).json()
            url = (path.replace("{tenant}", ids["bank"]).replace("{project}", ids["bank/main"])
                   .replace("{principal}", prn["id"]).replace("{binding}", bnd["id"])
                   .replace("{key}", key["id"]).replace("{model:path}", MODEL)
                   .replace("{model}", MODEL))
            body = CHAT if path.endswith("chat/completions") else (
                {"model": MODEL, "prompt": "hi", "max_tokens": 2} if path.endswith("completions")
                else {})
            for caller in (client.auth, bearer(keys["bank/guest"])):
                await client.http.request(method, url, headers=caller,
                                          json=body if method != "GET" else None)
    finally:
        event.remove(engine, "before_cursor_execute", watch)
    assert len(seen) > 50  # the routes did reach the database
    assert on_loop == []


async def test_one_timestamp_format_with_an_offset(setup) -> None:
    """SQLite handed stored times back without their zone: the same record was
    '...T16:46:29.559864' on SQLite and '...+00:00' on PostgreSQL."""
    import re

    client, ids = setup["client"], setup["ids"]
    shape = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")
    tenant = (await client.get(f"/admin/v1/tenants/{ids['bank']}")).json()
    key = (await client.post(f"/admin/v1/principals/{ids['bank/member']}/keys",
                             {"expires_in_hours": 1})).json()
    again = (await client.get(f"/admin/v1/keys/{key['id']}")).json()
    for value in (tenant["created_at"], key["created_at"], key["expires_at"],
                  again["created_at"], again["expires_at"]):
        assert shape.match(value), value
    assert again["expires_at"] == key["expires_at"]
