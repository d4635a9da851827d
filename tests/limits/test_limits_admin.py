"""Setting one key's, project's or tenant's limits through the admin API: audited,
applied at once, tenant admins for their own projects and keys only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select

from autoglm.store.models import AuditRecord
from tests.conftest import MODEL, make_settings, start_app
from tests.limits.conftest import WINDOW_S

pytestmark = pytest.mark.model


def chat() -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}


@pytest.fixture(scope="module")
async def world(tmp_path_factory) -> AsyncIterator[dict[str, Any]]:  # noqa: ANN001
    settings = make_settings(tmp_path_factory.mktemp("limits-admin"),
                             rate_limit_window_s=WINDOW_S,
                             rate_limits={"tenant": {"tokens_per_day": 1_000_000}})
    async for client in start_app(settings):
        out: dict[str, Any] = {"client": client}
        for name in ("a", "b"):
            t = (await client.post("/admin/v1/tenants", {"name": f"lim-{name}"})).json()["id"]
            await client.http.put(f"/admin/v1/tenants/{t}/models", json={"models": [MODEL]},
                                  headers=client.auth)
            prj = (await client.post(f"/admin/v1/tenants/{t}/projects",
                                     {"name": "p", "allowed_models": [MODEL]})).json()["id"]
            prn = (await client.post(f"/admin/v1/tenants/{t}/principals",
                                     {"name": "admin"})).json()["id"]
            await client.post(f"/admin/v1/principals/{prn}/bindings", {"role": "tenant_admin"})
            key = (await client.post(f"/admin/v1/principals/{prn}/keys", {})).json()
            out[name] = {"tenant": t, "project": prj, "key_id": key["id"],
                         "auth": {"Authorization": f"Bearer {key['key']}"}}
        yield out


async def test_a_keys_limit_applies_at_once_and_is_audited(world) -> None:  # noqa: ANN001
    client, a = world["client"], world["a"]
    r = await client.http.put(f"/admin/v1/limits/key/{a['key_id']}",
                              json={"requests_per_minute": 1}, headers=client.auth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["effective"] == {"requests_per_minute": 1, "tokens_per_minute": None,
                                 "tokens_per_day": None}
    assert body["own"]["requests_per_minute"] == 1
    first = await client.http.post("/v1/chat/completions", json=chat(), headers=a["auth"])
    second = await client.http.post("/v1/chat/completions", json=chat(), headers=a["auth"])
    assert (first.status_code, second.status_code) == (200, 429), second.text
    assert first.headers["x-ratelimit-limit-requests"] == "1"
    tenant = await client.get(f"/admin/v1/limits/tenant/{a['tenant']}")
    assert tenant.json()["effective"]["tokens_per_day"] == 1_000_000  # the default
    back = await client.http.put(f"/admin/v1/limits/key/{a['key_id']}", json={},
                                 headers=client.auth)  # to the defaults again
    assert back.json()["own"] == {}
    assert (await client.http.post("/v1/chat/completions", json=chat(),
                                   headers=a["auth"])).status_code == 200
    with client.app.state.db.session() as s:
        sets = s.scalars(select(AuditRecord).where(AuditRecord.action == "limit.set")).all()
    assert [r.resource for r in sets][-2:] == [f"key:{a['key_id']}"] * 2
    assert sets[-2].detail["limits"]["requests_per_minute"] == 1


async def test_tenant_admins_set_their_projects_but_not_their_tenant(world) -> None:  # noqa: ANN001
    client, a, b = world["client"], world["a"], world["b"]
    own = await client.http.put(f"/admin/v1/limits/project/{a['project']}",
                                json={"tokens_per_minute": 5000}, headers=a["auth"])
    assert own.status_code == 200 and own.json()["effective"]["tokens_per_minute"] == 5000
    lift = await client.http.put(f"/admin/v1/limits/tenant/{a['tenant']}",
                                 json={"tokens_per_day": 0}, headers=a["auth"])
    assert lift.status_code == 403
    other = await client.http.put(f"/admin/v1/limits/project/{b['project']}",
                                  json={"tokens_per_minute": 1}, headers=a["auth"])
    assert other.status_code == 404  # another tenant's: as if it did not exist
    read = await client.http.get(f"/admin/v1/limits/tenant/{a['tenant']}", headers=a["auth"])
    assert read.status_code == 200


@pytest.mark.parametrize(("path", "body", "status"), [
    ("/admin/v1/limits/galaxy/ten_0a1b2c3d4e5f6789", {}, 404),
    ("/admin/v1/limits/key/prj_0a1b2c3d4e5f6789", {}, 404),
    ("/admin/v1/limits/key/key_0a1b2c3d4e5f6789", {}, 404),  # shaped right, not there
    ("/admin/v1/limits/tenant/{tenant}", {"requests_per_minute": -1}, 400),
    ("/admin/v1/limits/tenant/{tenant}", {"requests_per_minute": "5"}, 400),
    ("/admin/v1/limits/tenant/{tenant}", {"rpm": 5}, 400),
])
async def test_bad_requests(world, path: str, body: dict, status: int) -> None:  # noqa: ANN001
    client = world["client"]
    r = await client.http.put(path.format(tenant=world["a"]["tenant"]), json=body,
                              headers=client.auth)
    assert r.status_code == status, r.text
    assert r.json()["error"]["message"]
