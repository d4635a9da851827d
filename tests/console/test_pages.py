"""The console's pages per role, through the real app in-process: each role sees what the
API lets it see (the same handlers), changes go through the admin handlers and are
audited, a new key's secret is shown once, guests see masked fields and no change."""

from __future__ import annotations

import re

from sqlalchemy import select

from autoglm.console.charts import nice_max, stacked_bars
from autoglm.console.i18n import missing
from autoglm.store.models import AuditRecord
from tests.conftest import ADMIN_KEY, MODEL
from tests.console.support import ConsoleClient

POST_FORM = re.compile(r'<form[^>]*method="post"[^>]*action="([^"]+)"')


def _changes(html: str) -> list[str]:
    """The change forms of a page, sign-out aside."""
    return [a for a in POST_FORM.findall(html) if a != "/console/logout"]


async def _as(world, who: str) -> ConsoleClient:
    c = ConsoleClient(world["app"])
    key = ADMIN_KEY if who == "admin" else world["keys"][who]
    r = await c.sign_in(key)
    assert r.status_code == 303, r.text[:300]
    return c


async def test_admin_makes_a_tenant_project_principal_and_key_through_forms(world) -> None:
    app = world["app"]
    c = await _as(world, "admin")
    r = await c.submit("/console/tenants", "/console/tenants", {"name": "insurer"})
    assert r.status_code == 303
    tenant_page = r.headers["location"]
    tid = tenant_page.rsplit("/", 1)[1]
    r = await c.submit(tenant_page, f"/console/tenants/{tid}/models", {"models": MODEL})
    assert r.status_code == 303
    assert MODEL in (await c.get(tenant_page)).text
    r = await c.submit(tenant_page, f"/console/tenants/{tid}/projects",
                       {"name": "claims", "models": MODEL})
    assert r.status_code == 303 and r.headers["location"].startswith("/console/projects/prj_")
    pid = r.headers["location"].rsplit("/", 1)[1]
    assert "claims" in (await c.get(tenant_page)).text
    r = await c.submit(tenant_page, f"/console/tenants/{tid}/principals",
                       {"name": "carol", "kind": "user"})
    principal_page = r.headers["location"]
    prn = principal_page.rsplit("/", 1)[1]
    r = await c.submit(principal_page, f"/console/principals/{prn}/bindings",
                       {"role": "member", "project": pid})
    assert r.status_code == 303
    assert "member" in (await c.get(principal_page)).text
    # a key: its secret on the answer to the form, and never again
    r = await c.submit(principal_page, f"/console/principals/{prn}/keys",
                       {"name": "ci", "projects": pid, "expires_in_hours": "24"})
    assert r.status_code == 200
    secret = re.search(r'value="(agk_[^"]+)"', r.text).group(1)
    key_id = re.search(r"<code>(key_[0-9a-f]+)</code>", r.text).group(1)
    listing = (await c.get(principal_page)).text
    assert key_id in listing and secret not in listing
    # the key works, then is revoked through the page, then does not
    api = {"Authorization": f"Bearer {secret}", "OpenAI-Project": pid}
    assert (await c.http.get("/v1/models", headers=api)).status_code == 200
    r = await c.submit(principal_page, f"/console/keys/{key_id}/revoke")
    assert r.status_code == 303
    assert "Revoked" in (await c.get(principal_page)).text
    assert (await c.http.get("/v1/models", headers=api)).status_code == 401
    # every change is an audit record of the admin's, as through the API
    with app.state.db.session() as s:
        acts = {r.action for r in s.scalars(select(AuditRecord).where(
            AuditRecord.actor == "prn_platform_admin"))}
    assert {"tenant.create", "tenant.grant", "project.create", "principal.create",
            "binding.create", "key.create", "key.revoke"} <= acts
    await c.close()


async def test_rotation_shows_the_new_secret_once_and_keeps_the_old_for_the_grace(
        world) -> None:
    c = await _as(world, "bank/tenant_admin")
    ids = world["ids"]
    page = f"/console/principals/{ids['bank/member']}"
    r = await c.submit(page, f"/console/principals/{ids['bank/member']}/keys", {"name": "r"})
    old = re.search(r"<code>(key_[0-9a-f]+)</code>", r.text).group(1)
    r = await c.submit(page, f"/console/keys/{old}/rotate", {"grace_hours": "1"})
    assert r.status_code == 200 and "agk_" in r.text
    listing = (await c.get(page)).text
    assert "Rotated to" in listing
    await c.close()


async def test_a_tenant_admin_sees_their_tenant_only(world) -> None:
    ids = world["ids"]
    c = await _as(world, "bank/tenant_admin")
    tenants = (await c.get("/console/tenants")).text
    assert ids["bank"] in tenants and ids["hospital"] not in tenants
    assert "/console/tenants\"" not in "".join(_changes(tenants))  # no new tenant form
    own = await c.get(f"/console/tenants/{ids['bank']}")
    assert own.status_code == 200 and ids["bank/member"] in own.text
    assert f"/console/tenants/{ids['bank']}/projects" in _changes(own.text)
    assert f"/console/tenants/{ids['bank']}/models" not in _changes(own.text)  # grants: platform
    for path in (f"/console/tenants/{ids['hospital']}",
                 f"/console/principals/{ids['hospital/member']}",
                 f"/console/projects/{ids['hospital/main']}"):
        other = await c.get(path)
        assert other.status_code == 404, path  # as the API: another tenant's ids are unknown
    r = await c.submit(f"/console/tenants/{ids['bank']}",
                       f"/console/tenants/{ids['hospital']}/projects", {"name": "x"})
    assert r.status_code == 404
    audit = (await c.get("/console/audit")).text
    assert "audit-table" in audit and 'id="verify"' not in audit  # whole-chain check: platform
    await c.close()


async def test_a_guest_sees_masked_fields_and_no_change(world) -> None:
    ids = world["ids"]
    c = await _as(world, "bank/guest")
    home = (await c.get("/console")).text
    for hidden in ("/console/tenants", "/console/audit", "/console/playground"):
        assert f'href="{hidden}"' not in home
    usage = await c.get("/console/usage")
    assert usage.status_code == 200
    member_key = ids["bank/member/key"]
    assert member_key not in usage.text and member_key[:8] + "…" in usage.text
    assert "masked" in usage.text and "<rect" in usage.text
    for path in ("/console", "/console/usage", "/console/models"):
        assert _changes((await c.get(path)).text) == [], path
    assert (await c.get(f"/console/tenants/{ids['bank']}")).status_code == 403
    assert (await c.get("/console/audit")).status_code == 403
    r = await c.submit("/console", f"/console/tenants/{ids['bank']}/projects", {"name": "x"})
    assert r.status_code == 403
    await c.close()


async def test_a_member_sees_their_usage_unmasked(world) -> None:
    c = await _as(world, "bank/member")
    usage = (await c.get("/console/usage?group=key&metric=tokens")).text
    assert world["ids"]["bank/member/key"] in usage and "54" in usage  # 3 x (11 + 7)
    await c.close()


async def test_the_audit_page_is_newest_first_and_the_chain_verifies(world) -> None:
    c = await _as(world, "admin")
    await c.get("/console/audit")
    page = (await c.get("/console/audit/verify")).text
    assert 'id="verification"' in page and "The chain is intact" in page
    seqs = [int(x) for x in re.findall(r'<td class="num seq">(\d+)</td>', page)]
    assert seqs == sorted(seqs, reverse=True) and len(seqs) > 10
    older = re.search(r'href="(/console/audit\?after=\d+)"', page)
    if older:
        more = [int(x) for x in re.findall(r'<td class="num seq">(\d+)</td>',
                                           (await c.get(older.group(1))).text)]
        assert more and max(more) < min(seqs)
    denied = (await c.get("/console/audit?decision=deny")).text
    assert "allow</td>" not in denied
    await c.close()


def test_labels_and_chart() -> None:
    assert missing() == {"en": [], "zh": []}
    assert nice_max(0) == 1 and nice_max(7) == 10 and nice_max(12) == 20 and nice_max(430) == 500
    svg = str(stacked_bars(["a", "b"], {"m1": [1, 0], "m2": [2, 3]}, title="t <x>", desc="d"))
    assert svg.count("<rect class=\"s") == 3 + 2  # three bars, two legend swatches
    assert "style=" not in svg and "&lt;x&gt;" in svg
