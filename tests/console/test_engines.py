"""The models page for a platform admin with an upstream pool: each instance with its
state, drained and resumed through the console's forms (the /admin/v1 handlers, audited
there); a form without the page's CSRF token changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from autoglm.store.models import AuditRecord
from tests.conftest import ADMIN_KEY, make_settings
from tests.console.support import ConsoleClient, running
from tests.standin import Standin


@pytest.fixture
async def pool(tmp_path: Path):
    up = Standin("gpu-a", tmp_path).start()
    settings = make_settings(tmp_path / "data", models=[
        {"id": "pool-model", "engine": "openai",
         "instances": [{"url": up.url, "name": "gpu-a"}]}])
    try:
        async for app in running(settings):
            yield app
    finally:
        up.kill()


def _state(html: str) -> str:
    row = html.split("<td>gpu-a</td>", 1)[1]
    return row.split("</td>", 1)[0].rsplit(">", 1)[1]


async def test_a_platform_admin_drains_and_resumes_an_instance(pool) -> None:
    c = ConsoleClient(pool)
    try:
        assert (await c.sign_in(ADMIN_KEY)).status_code == 303
        page = (await c.get("/console/models")).text
        assert _state(page) == "up"
        assert "/console/models/pool-model/instances/gpu-a/drain" in page
        r = await c.submit("/console/models",
                           "/console/models/pool-model/instances/gpu-a/drain")
        assert r.status_code == 303
        page = (await c.get("/console/models")).text
        assert _state(page) == "draining"
        assert "/console/models/pool-model/instances/gpu-a/resume" in page
        r = await c.submit("/console/models",
                           "/console/models/pool-model/instances/gpu-a/resume")
        assert r.status_code == 303
        assert _state((await c.get("/console/models")).text) == "up"
        # without this page's CSRF token nothing changes
        r = await c.http.post("/console/models/pool-model/instances/gpu-a/drain",
                              data={"csrf": "forged"})
        assert r.status_code == 403
        assert _state((await c.get("/console/models")).text) == "up"
    finally:
        await c.close()
    with pool.state.db.session() as s:
        acts = [(r.action, r.detail.get("instance")) for r in s.scalars(
            select(AuditRecord).where(AuditRecord.action.like("engine.instance.%"))
            .order_by(AuditRecord.seq))]
    assert acts == [("engine.instance.drain", "gpu-a"), ("engine.instance.resume", "gpu-a")]
