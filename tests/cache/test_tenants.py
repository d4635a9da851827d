"""A tenant's opt-in, and no entry ever shared across tenants, on the real model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.cache.support import USE, chat, json_text
from tests.conftest import MODEL, AppClient, make_settings, start_app

pytestmark = pytest.mark.model


async def make_tenant(client: AppClient, name: str) -> dict[str, Any]:
    t = (await client.post("/admin/v1/tenants", {"name": name})).json()["id"]
    await client.http.put(f"/admin/v1/tenants/{t}/models", json={"models": [MODEL]},
                          headers=client.auth)
    prn = (await client.post(f"/admin/v1/tenants/{t}/principals", {"name": "dev"})).json()["id"]
    await client.post(f"/admin/v1/principals/{prn}/bindings", {"role": "tenant_admin"})
    key = (await client.post(f"/admin/v1/principals/{prn}/keys", {})).json()["key"]
    return {"tenant": t, "auth": {"Authorization": f"Bearer {key}"}}


async def test_tenants_opt_in_and_never_share(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async for client in start_app(make_settings(data)):
        a = await make_tenant(client, "cache-a")
        b = await make_tenant(client, "cache-b")
    # the same server again, now with tenant a opted in
    async for client in start_app(make_settings(data, response_cache_tenants=[a["tenant"]])):
        async def ask(who: dict[str, Any], **headers: str) -> tuple[str | None, str]:
            r = await client.http.post("/v1/chat/completions", json=chat("Name a city."),
                                       headers={**who["auth"], **headers})
            assert r.status_code == 200, r.text
            return r.headers.get("x-autoglm-cache"), json_text(r)

        a1, a2 = await ask(a), await ask(a)  # no header: the tenant's setting
        assert (a1[0], a2[0]) == ("miss", "hit") and a1[1] == a2[1]
        assert (await ask(b))[0] is None  # b did not opt in: not even looked up
        # b asks for the cache with the identical request: a's entry is not b's
        b1, b2 = await ask(b, **USE), await ask(b, **USE)
        assert (b1[0], b2[0]) == ("miss", "hit")
        platform = await client.post("/v1/chat/completions", chat("Name a city."),
                                     headers=USE)  # the admin: no tenant, its own scope
        assert platform.headers["x-autoglm-cache"] == "miss"
        assert len(client.app.state.response_cache.store) == 3
