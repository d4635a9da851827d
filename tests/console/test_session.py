"""The console's sign-in, session cookie, expiry, CSRF protection and security headers,
through the real app in-process (a plain HTTP client, as a browser without script)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from autoglm.api.routes import CONSOLE_ROUTES
from autoglm.console.gate import CSP
from autoglm.console.sessions import SessionStore
from autoglm.security.keystore import KeyService
from autoglm.store.db import Database
from autoglm.store.models import AuditRecord, ConsoleSession
from tests.conftest import ADMIN_KEY, make_settings, pg_database
from tests.console.support import ConsoleClient, csrf_of, running

PAGES = [r.path for r in CONSOLE_ROUTES if r.method == "GET" and r.action is not None
         and "{" not in r.path]


def _records(app, action: str) -> list[AuditRecord]:
    app.state.audit.flush(10)  # refusals are queued, committed by the next group commit
    with app.state.db.session() as s:
        return list(s.scalars(select(AuditRecord).where(AuditRecord.action == action)))


async def test_without_a_session_pages_go_to_sign_in_and_the_api_is_401(world) -> None:
    c = ConsoleClient(world["app"])
    for spec in CONSOLE_ROUTES:
        path = (spec.path.replace("{name}", "console.css").replace("{model}", "m")
                .replace("{tenant}", world["ids"]["bank"]).replace("{project}", "prj_x")
                .replace("{principal}", "prn_x").replace("{binding}", "rb_x")
                .replace("{key}", "key_x"))
        r = await c.http.request(spec.method, path, data={} if spec.method == "POST" else None)
        if spec.action is None:  # the sign-in page and its files
            assert r.status_code in (200, 403), (spec.method, spec.path, r.status_code)
        elif spec.path.startswith("/console/api/"):
            assert r.status_code == 401 and r.json()["error"]["type"], spec.path
        else:
            assert r.status_code == 303, (spec.method, spec.path, r.status_code)
            assert r.headers["location"].startswith("/console/login")
    # an unknown console path needs a session too (nothing is learnt without one)
    assert (await c.get("/console/nope")).status_code == 303
    r = await c.get("/console/tenants?x=1")
    assert r.headers["location"] == "/console/login?next=%2Fconsole%2Ftenants%3Fx%3D1"
    await c.close()


async def test_sign_in_sets_a_strict_cookie_and_the_key_never_reaches_a_page(world) -> None:
    c = ConsoleClient(world["app"])
    r = await c.sign_in(ADMIN_KEY, "/console/usage")
    assert r.status_code == 303 and r.headers["location"] == "/console/usage"
    cookie = next(v for v in r.headers.get_list("set-cookie")
                  if v.startswith("autoglm_session="))
    flags = {f.strip().lower() for f in cookie.split(";")[1:]}
    assert {"httponly", "path=/console", "samesite=strict"} <= flags
    assert "secure" not in flags  # plain HTTP here; see the HTTPS test
    token = cookie.split(";")[0].split("=", 1)[1]
    assert ADMIN_KEY not in token
    for path in PAGES:
        page = await c.get(path)
        assert page.status_code == 200, (path, page.text[:300])
        assert ADMIN_KEY not in page.text and token not in page.text
        assert page.headers["content-security-policy"] == CSP
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["cache-control"] == "no-store"
        # no inline script or style anywhere: every script has a src, no style attributes
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page.text), path
        assert " style=" not in page.text and "<style" not in page.text, path
        assert not re.search(r"<[^>]+\son[a-z]+=", page.text), path  # no onclick=...
    # the stored session is a hash of the token, tied to the key that signed in
    with world["app"].state.db.session() as s:
        rows = list(s.scalars(select(ConsoleSession)))
    assert rows and all(token not in r.token_hash for r in rows)
    assert any(r.principal_id == "prn_platform_admin" for r in rows)
    assert _records(world["app"], "console.login")
    await c.close()


async def test_https_cookies_are_secure(world) -> None:
    c = ConsoleClient(world["app"], base_url="https://test")
    r = await c.sign_in(ADMIN_KEY)
    cookie = next(v for v in r.headers.get_list("set-cookie")
                  if v.startswith("autoglm_session="))
    assert "secure" in cookie.lower()
    await c.close()


async def test_a_wrong_key_is_refused_and_audited_and_a_login_form_needs_its_token(
        world) -> None:
    c = ConsoleClient(world["app"])
    r = await c.sign_in("agk_" + "x" * 40)
    assert r.status_code == 401 and "not accepted" in r.text
    assert "autoglm_session" not in r.headers.get("set-cookie", "")
    assert any(x.decision == "deny" for x in _records(world["app"], "console.login"))
    # a sign-in form posted from elsewhere: no login token cookie, or a forged one
    fresh = ConsoleClient(world["app"])
    r = await fresh.http.post("/console/login", data={"key": ADMIN_KEY, "csrf": "forged"})
    assert r.status_code == 403 and "autoglm_session" not in r.headers.get("set-cookie", "")
    await c.close()
    await fresh.close()


async def test_sign_in_attempts_count_toward_the_failed_key_limit(tmp_path: Path) -> None:
    async for app in running(make_settings(tmp_path / "d", auth_failure_limit=2), engines={}):
        c = ConsoleClient(app)
        assert (await c.sign_in("wrong-key-" + "y" * 40)).status_code == 401
        assert (await c.sign_in("wrong-key-" + "y" * 40)).status_code == 401
        r = await c.sign_in(ADMIN_KEY)  # even the right key waits out the window
        assert r.status_code == 429 and "autoglm_session" not in r.headers.get("set-cookie", "")
        await c.close()


async def test_sign_out_ends_the_session(world) -> None:
    c = ConsoleClient(world["app"])
    await c.sign_in(ADMIN_KEY)
    old = dict(c.http.cookies)
    r = await c.submit("/console", "/console/logout")
    assert r.status_code == 303 and r.headers["location"] == "/console/login"
    assert (await c.get("/console")).status_code == 303
    replay = ConsoleClient(world["app"])
    replay.http.cookies.update(old)  # the old cookie, kept by someone
    assert (await replay.get("/console")).status_code == 303
    assert _records(world["app"], "console.logout")
    await c.close()
    await replay.close()


async def test_revoking_the_key_ends_its_sessions(world) -> None:
    app, ids = world["app"], world["ids"]
    c = ConsoleClient(app)
    made = (await ConsoleClient(app).http.post(
        f"/admin/v1/principals/{ids['bank/tenant_admin']}/keys", json={},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"})).json()
    assert (await c.sign_in(made["key"])).status_code == 303
    assert (await c.get("/console")).status_code == 200
    admin = ConsoleClient(app)
    await admin.sign_in(ADMIN_KEY)
    r = await admin.submit(f"/console/principals/{ids['bank/tenant_admin']}",
                           f"/console/keys/{made['id']}/revoke")
    assert r.status_code == 303
    assert (await c.get("/console")).status_code == 303
    await c.close()
    await admin.close()


async def test_changes_need_the_session_token_and_this_origin(world) -> None:
    app, ids = world["app"], world["ids"]
    c = ConsoleClient(app)
    await c.sign_in(ADMIN_KEY)
    page = await c.get("/console/tenants")
    token = csrf_of(page.text)
    for data, headers in (({"name": "no-token"}, {}),
                          ({"name": "bad-token", "csrf": "0" * 64}, {}),
                          ({"name": "cross-site", "csrf": token}, {"sec-fetch-site": "cross-site"}),
                          ({"name": "same-site", "csrf": token}, {"sec-fetch-site": "same-site"}),
                          ({"name": "origin", "csrf": token}, {"origin": "http://evil.example"})):
        r = await c.http.post("/console/tenants", data=data, headers=headers)
        assert r.status_code == 403, (data, headers, r.status_code)
    ok = await c.http.post("/console/tenants", data={"name": "same-origin", "csrf": token},
                           headers={"sec-fetch-site": "same-origin",
                                    "origin": "http://test"})
    assert ok.status_code == 303
    tenants = (await c.get("/console/tenants")).text
    assert "same-origin" in tenants and "cross-site" not in tenants and "no-token" not in tenants
    # every change the console has refuses a post without the token
    for spec in CONSOLE_ROUTES:
        if spec.method != "POST" or spec.action is None:
            continue
        path = (spec.path.replace("{tenant}", ids["bank"]).replace("{project}", ids["bank/main"])
                .replace("{principal}", ids["bank/member"]).replace("{binding}", "rb_x")
                .replace("{key}", ids["bank/member/key"]).replace("{model}", "m")
                .replace("{name}", "i"))
        r = await c.http.post(path, data={"name": "x"}, headers={"content-type":
                                                                 "application/x-www-form-urlencoded"})
        assert r.status_code == 403, (path, r.status_code)
    r = await c.http.post("/console/api/chat", json={"model": "m", "messages": []})
    assert r.status_code == 403 and r.json()["error"]["code"] == "csrf_failed"
    await c.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sessions_end_when_idle_or_old_and_with_their_key(tmp_path: Path, backend: str) -> None:
    if backend == "postgresql":
        with pg_database() as url:
            _sessions_end(Database(url))
    else:
        _sessions_end(Database(f"sqlite:///{tmp_path / 'c.db'}"))


def _sessions_end(db: Database) -> None:
    db.upgrade()
    keys = KeyService(db, b"p" * 32)
    from autoglm.security.auth import ensure_platform_admin

    admin = ensure_platform_admin(db)
    secret, _ = keys.create(admin)
    identity = keys.lookup(secret)
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    store = SessionStore(db, keys, idle=timedelta(hours=1), lifetime=timedelta(hours=3),
                         clock=lambda: now[0])
    s = store.open(identity)
    assert s.expires_at == now[0] + timedelta(hours=1)
    for _ in range(3):  # used every 50 minutes: alive until the absolute end (3 h)
        now[0] += timedelta(minutes=50)
        found = store.resolve(s.token)
        assert found is not None and found.identity.key_id == identity.key_id
    now[0] += timedelta(minutes=50)  # 3 h 20 after sign-in
    assert store.resolve(s.token) is None
    idle = store.open(identity)
    now[0] += timedelta(hours=1, seconds=1)
    assert store.resolve(idle.token) is None
    live = store.open(identity)
    assert store.resolve(live.token) is not None
    keys.revoke(identity.key_id)
    assert store.resolve(live.token) is None and store.count() == 0
    assert store.resolve("nonsense") is None and store.resolve(None) is None
    db.close()


@pytest.mark.parametrize("lang,label", [("zh", "租户"), ("en", "Tenants")])
async def test_language_switch_is_remembered(world, lang: str, label: str) -> None:
    c = ConsoleClient(world["app"])
    await c.sign_in(ADMIN_KEY)
    r = await c.get(f"/console?lang={lang}")
    assert label in r.text and f'lang="{"zh-CN" if lang == "zh" else "en"}"' in r.text
    assert label in (await c.get("/console/tenants")).text  # the cookie keeps it
    await c.close()
