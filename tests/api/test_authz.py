"""Authorization in the request path, with tenants, projects and keys in the real store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from starlette.routing import Route

from autoglm.api.routes import CONSOLE_ROUTES, ROUTES, RouteTable
from autoglm.store.models import Principal, Project, RoleBinding, Tenant
from tests.conftest import MODEL, make_settings, start_app

pytestmark = pytest.mark.model

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def test_every_route_of_the_app_is_in_the_route_table(tmp_path: Path) -> None:
    from autoglm.api.app import create_app

    app = create_app(make_settings(tmp_path / "d"), engines={})
    served = {(m, r.path) for r in app.routes if isinstance(r, Route) for m in r.methods or ()
              if m != "HEAD"}
    table = {(r.method, r.path) for r in ROUTES + CONSOLE_ROUTES}
    assert served == table
    for method, path, _, action, *_ in ROUTES:
        protected = path.startswith(("/v1/", "/admin/"))
        assert (action is not None) == protected, (method, path)
    routes = RouteTable(ROUTES)
    assert routes.protected_prefixes == ("/admin/", "/v1/")
    assert not routes.edge_authenticated("/v1/chat/completions")  # the pipeline's first stage
    assert routes.edge_authenticated("/v1/models") and routes.edge_authenticated("/v1/unknown")
    assert routes.label("/admin/v1/keys/key_1/rotate") == "/admin/v1/keys/{key}/rotate"
    assert routes.label("/v1/models/a/b") == "/v1/models/{model}"
    assert routes.label("/nope") == "unmatched"
    # the console: its session, not a key; only the sign-in page and its files are public
    everything = RouteTable(ROUTES + CONSOLE_ROUTES)
    assert everything.protected_prefixes == ("/admin/", "/v1/")
    assert everything.console_route("/console/login") is False
    assert everything.console_route("/console/static/console.css") is False
    assert everything.console_route("/console") and everything.console_route("/console/x")
    assert everything.console_route("/consoles") is None
    assert everything.console_route("/admin/v1/tenants") is None


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict]:
    settings = make_settings(tmp_path_factory.mktemp("authz"))
    async for client in start_app(settings):
        db, keys = client.app.state.db, client.app.state.auth.keys
        ids: dict[str, str] = {}
        with db.session() as s, s.begin():
            for tname in ("bank", "hospital"):
                t = Tenant(name=tname, granted_models=[MODEL])
                s.add(t)
                s.flush()
                ids[tname] = t.id
                for pname, models in (("open", [MODEL]), ("closed", [])):
                    p = Project(tenant_id=t.id, name=pname, allowed_models=models)
                    s.add(p)
                    s.flush()
                    ids[f"{tname}/{pname}"] = p.id
            for who, role, tenant, project in (
                ("member", "member", "bank", "bank/open"),
                ("closed-member", "member", "bank", "bank/closed"),
                ("guest", "guest", "bank", "bank/open"),
                ("tadmin", "tenant_admin", "bank", None),
                ("other-member", "member", "hospital", "hospital/open"),
            ):
                prn = Principal(tenant_id=ids[tenant], name=who)
                s.add(prn)
                s.flush()
                ids[who] = prn.id
                s.add(RoleBinding(principal_id=prn.id, role=role, tenant_id=ids[tenant],
                                  project_id=ids[project] if project else None))
        secrets = {who: keys.create(ids[who])[0]
                   for who in ("member", "closed-member", "guest", "tadmin", "other-member")}
        secrets["narrow"] = keys.create(ids["member"], models=["other-model"])[0]
        yield {"client": client, "ids": ids, "keys": secrets}


def auth(key: str, project: str | None = None) -> dict[str, str]:
    h = {"Authorization": f"Bearer {key}"}
    if project:
        h["OpenAI-Project"] = project
    return h


async def test_member_uses_its_projects_models(world) -> None:
    http, k = world["client"].http, world["keys"]
    r = await http.post("/v1/chat/completions", json=CHAT, headers=auth(k["member"]))
    assert r.status_code == 200
    listed = (await http.get("/v1/models", headers=auth(k["member"]))).json()["data"]
    assert [m["id"] for m in listed] == [MODEL]


async def test_model_not_in_project_is_the_same_404_as_unknown(world) -> None:
    http, k = world["client"].http, world["keys"]
    denied = await http.post("/v1/chat/completions", json=CHAT, headers=auth(k["closed-member"]))
    unknown = await http.post("/v1/chat/completions", json={**CHAT, "model": "no-such"},
                              headers=auth(k["closed-member"]))
    assert denied.status_code == unknown.status_code == 404
    assert denied.json()["error"]["code"] == unknown.json()["error"]["code"] == "model_not_found"
    assert (await http.get("/v1/models", headers=auth(k["closed-member"]))).json()["data"] == []
    assert (await http.get(f"/v1/models/{MODEL}",
                           headers=auth(k["closed-member"]))).status_code == 404


async def test_guest_cannot_infer(world) -> None:
    http, k = world["client"].http, world["keys"]
    r = await http.post("/v1/chat/completions", json=CHAT, headers=auth(k["guest"]))
    assert r.status_code == 404


async def test_other_tenants_project_is_invisible(world) -> None:
    http, k, ids = world["client"].http, world["keys"], world["ids"]
    theirs = await http.post("/v1/chat/completions", json=CHAT,
                             headers=auth(k["member"], ids["hospital/open"]))
    nowhere = await http.post("/v1/chat/completions", json=CHAT,
                              headers=auth(k["member"], "prj_doesnotexist"))
    assert theirs.status_code == nowhere.status_code == 404
    assert theirs.json() == nowhere.json()
    ok = await http.post("/v1/chat/completions", json=CHAT,
                         headers=auth(k["other-member"], ids["hospital/open"]))
    assert ok.status_code == 200


async def test_key_narrowing_applies(world) -> None:
    http, k = world["client"].http, world["keys"]
    r = await http.post("/v1/chat/completions", json=CHAT, headers=auth(k["narrow"]))
    assert r.status_code == 404


async def test_only_platform_admins_manage_engines(world) -> None:
    client, k = world["client"], world["keys"]
    r = await client.http.get("/admin/v1/engines", headers=auth(k["tadmin"]))
    assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"
    from autoglm.store.models import AuditRecord

    with client.app.state.db.session() as s:
        last = (s.query(AuditRecord).filter(AuditRecord.action == "engine.read")
                .order_by(AuditRecord.seq.desc()).first())
    assert (last.action, last.decision, last.status, last.actor) == (
        "engine.read", "deny", 403, world["ids"]["tadmin"])
    assert (await client.get("/admin/v1/engines")).status_code == 200  # the platform admin


async def test_revoked_key_fails_at_once(world) -> None:
    client, ids = world["client"], world["ids"]
    keys = client.app.state.auth.keys
    secret, record = keys.create(ids["member"])
    assert (await client.http.get("/v1/models", headers=auth(secret))).status_code == 200
    keys.revoke(record.id)
    r = await client.http.get("/v1/models", headers=auth(secret))
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
