"""A gateway with two tenants and a principal per role, made through the admin API, for
the console's in-process tests (no engine: these pages need none)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from autoglm.audit import Record
from tests.conftest import MODEL, make_settings
from tests.console.support import admin_api, running


async def _world(app) -> dict:
    ids: dict[str, str] = {}
    keys: dict[str, str] = {}
    for t in ("bank", "hospital"):
        tenant = await admin_api(app, "POST", "/admin/v1/tenants", {"name": t})
        ids[t] = tenant["id"]
        await admin_api(app, "PUT", f"/admin/v1/tenants/{tenant['id']}/models",
                        {"models": [MODEL]})
        project = await admin_api(app, "POST", f"/admin/v1/tenants/{tenant['id']}/projects",
                                  {"name": "main", "allowed_models": [MODEL]})
        ids[f"{t}/main"] = project["id"]
        for role in ("tenant_admin", "member", "guest"):
            prn = await admin_api(app, "POST", f"/admin/v1/tenants/{tenant['id']}/principals",
                                  {"name": f"{t}-{role}"})
            ids[f"{t}/{role}"] = prn["id"]
            await admin_api(app, "POST", f"/admin/v1/principals/{prn['id']}/bindings",
                            {"role": role, "project_id": project["id"]})
            made = await admin_api(app, "POST", f"/admin/v1/principals/{prn['id']}/keys",
                                   {"name": "laptop"})
            keys[f"{t}/{role}"] = made["key"]
            ids[f"{t}/{role}/key"] = made["id"]
    # usage of the bank's member, recorded as the pipeline's audit stage records it
    app.state.audit.append([Record(
        action="inference", status=200, actor=ids["bank/member"],
        key_id=ids["bank/member/key"], tenant_id=ids["bank"], project_id=ids["bank/main"],
        resource=MODEL, model=MODEL, prompt_tokens=11, completion_tokens=7, latency_ms=42.0,
        ts=datetime.now(UTC)) for _ in range(3)])
    return {"ids": ids, "keys": keys}


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict]:
    settings = make_settings(tmp_path_factory.mktemp("console"), auth_failure_limit=1000)
    async for app in running(settings, engines={}):
        yield {"app": app, **await _world(app)}
