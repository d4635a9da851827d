"""The console in a real browser: Debian's Chromium driven by Playwright (never a browser
of Playwright's own: ``executable_path``), against a real ``autoglm serve`` with the
bundled model. Signs in, makes a project and a key (secret once), revokes it, watches
the playground stream, sees the usage chart and the audit chain verified; a guest sees
masked fields and no change; a form on another site cannot change anything. Every page
is screenshotted into ``test-artifacts/console/`` (git-ignored), and every form control
is checked for a label and reached by keyboard on the sign-in page."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.e2e.support import MODEL, ServerProcess, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.model]

CHROMIUM = Path(os.environ.get("AUTOGLM_TEST_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]
UNLABELLED = """() => [...document.querySelectorAll('input, select, textarea')]
  .filter(e => e.type !== 'hidden' && !(e.labels && e.labels.length)
               && !e.getAttribute('aria-label'))
  .map(e => e.outerHTML)"""

if not CHROMIUM.exists():
    pytest.skip(f"no Chromium at {CHROMIUM}: `apt-get install chromium` to run the browser "
                "tests", allow_module_level=True)
playwright_api = pytest.importorskip("playwright.async_api")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("console-browser"), name="console")
    try:
        srv.start()
        yield srv
    finally:
        srv.stop(check=False)


@pytest.fixture(scope="module")
def attacker(server: ServerProcess) -> Iterator[str]:
    """Another site (``localhost`` on another port: another origin and another site than
    ``127.0.0.1``) with a form that posts to the console."""
    page = (f'<!doctype html><title>win</title><form method="post" '
            f'action="{server.base_url}/console/tenants"><input name="name" value="evil">'
            f'<input name="csrf" value="guessed"><button id="go">go</button></form>').encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://localhost:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


async def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    assert await page.evaluate(UNLABELLED) == [], f"controls without a label on {name}"


async def _sign_in(page, base: str, key: str) -> None:
    await page.goto(f"{base}/console/login")
    await page.evaluate("document.activeElement.blur()")  # from the top, by keyboard alone
    for _ in range(6):  # the skip link, the language switch, then the key field
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement.id") == "key":
            break
    assert await page.evaluate("document.activeElement.id") == "key"
    await page.keyboard.type(key)
    await page.keyboard.press("Enter")
    await page.wait_for_url(f"{base}/console")


def _api(server: ServerProcess, method: str, path: str, json: object | None = None,
         key: str | None = None, project: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {key or server.key}"}
    if project:
        headers["OpenAI-Project"] = project
    with server.client(timeout=60) as http:
        r = http.request(method, path, json=json, headers=headers)
        assert r.status_code < 300, r.text
        return r.json()


async def test_the_console_in_chromium(server: ServerProcess, attacker: str) -> None:
    base = server.base_url
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                           args=FLAGS, timeout=30_000)
        try:
            admin = await browser.new_context()
            admin.set_default_timeout(30_000)
            page = await admin.new_page()
            await page.goto(f"{base}/console/login")
            await _shot(page, "01-login")
            await _sign_in(page, base, server.key)
            assert server.key not in await page.content()
            cookie = next(c for c in await admin.cookies() if c["name"] == "autoglm_session")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            assert await page.evaluate("document.cookie") == ""  # not readable by script
            await _shot(page, "02-overview")

            # a tenant with the model, a project, a principal with a binding, a key
            await page.click("a[href='/console/tenants']")
            await page.fill("#tenant-name", "acme")
            await page.click("form[action='/console/tenants'] button")
            await page.check(f"input[name='models'][value='{MODEL}'] >> nth=0")
            await page.click("form[action$='/models'] button")
            await page.fill("#project-name", "web")
            await page.check(f"form[action$='/projects'] input[value='{MODEL}']")
            await page.click("form[action$='/projects'] button")
            project = page.url.rsplit("/", 1)[1]
            await page.click("a[href^='/console/tenants/ten_']")
            await _shot(page, "03-tenant")
            await page.fill("#principal-name", "dave")
            await page.click("form[action$='/principals'] button")
            await page.select_option("#bind-role", "member")
            await page.select_option("#bind-project", project)
            await page.click("form[action$='/bindings'] button")
            await page.fill("#key-name", "laptop")
            await page.click("form[action$='/keys'] button")
            secret = await page.input_value("#secret")
            assert secret.startswith("agk_")
            await _shot(page, "04-secret-once")
            await page.click("text=Back")
            assert secret not in await page.content()  # shown once, never again
            await _shot(page, "05-principal")
            assert _api(server, "GET", "/v1/models", key=secret, project=project)["data"]
            await page.click("form[action$='/revoke'] button")
            await page.wait_for_selector("text=Revoked")
            with server.client() as http:
                assert http.get("/v1/models", headers={
                    "Authorization": f"Bearer {secret}"}).status_code == 401

            # the playground streams, chunk by chunk into the page
            await page.click("a[href='/console/playground']")
            await page.evaluate("""() => { window.chunks = 0; new MutationObserver(
                m => { window.chunks += m.length; }).observe(
                document.getElementById('p-answer'), {childList: true}); }""")
            await page.fill("#p-prompt", "Say hello in two sentences.")
            await page.fill("#p-max", "24")
            await page.click("#p-send")
            # (waits by selector: the page's CSP forbids the eval of wait_for_function)
            await page.wait_for_selector("#p-answer:not(:empty)")
            await page.wait_for_selector("#p-send:enabled")
            assert await page.evaluate("window.chunks") >= 2
            await _shot(page, "06-playground")

            # the usage chart holds the request just made (once its record's group commit
            # is in: audit_flush_ms, through the sealing process); the audit chain verifies
            deadline = time.monotonic() + 10
            while True:
                await page.goto(f"{base}/console/usage?group=model")
                if await page.locator("#usage-chart rect").count() >= 2 \
                        or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            assert await page.locator("#usage-chart rect").count() >= 2
            assert await page.locator(f"#usage-table td:text-is('{MODEL}')").count() >= 1
            await _shot(page, "07-usage")
            await page.goto(f"{base}/console/models")
            await _shot(page, "08-models")
            await page.goto(f"{base}/console/audit")
            await page.click("#verify")
            await page.wait_for_selector("#verification")
            assert "intact" in await page.inner_text("#verification")
            await _shot(page, "09-audit")
            await page.goto(f"{base}/console?lang=zh")
            await _shot(page, "10-overview-zh")
            assert "概览" in await page.content()

            # a form on another site, posted by the signed-in browser: refused, no change
            await page.goto(attacker)
            async with page.expect_navigation():
                await page.click("#go")
            assert "csrf_failed" in await page.content()
            tenants = _api(server, "GET", "/admin/v1/tenants")["data"]
            assert "evil" not in {t["name"] for t in tenants}

            # a guest of the project: masked key ids, no change anywhere
            tid = next(t["id"] for t in tenants if t["name"] == "acme")
            member = _api(server, "POST", f"/admin/v1/tenants/{tid}/principals", {"name": "m"})
            _api(server, "POST", f"/admin/v1/principals/{member['id']}/bindings",
                 {"role": "member", "project_id": project})
            mkey = _api(server, "POST", f"/admin/v1/principals/{member['id']}/keys", {})
            _api(server, "POST", "/v1/chat/completions", {
                "model": MODEL, "max_tokens": 4,
                "messages": [{"role": "user", "content": "hi"}]}, key=mkey["key"],
                project=project)
            guest = _api(server, "POST", f"/admin/v1/tenants/{tid}/principals", {"name": "g"})
            _api(server, "POST", f"/admin/v1/principals/{guest['id']}/bindings",
                 {"role": "guest", "project_id": project})
            gkey = _api(server, "POST", f"/admin/v1/principals/{guest['id']}/keys", {})
            visitor = await browser.new_context()
            visitor.set_default_timeout(30_000)
            gpage = await visitor.new_page()
            await _sign_in(gpage, base, gkey["key"])
            for path in ("/console", "/console/models", "/console/usage?group=key"):
                await gpage.goto(base + path)
                changes = gpage.locator("form[method='post']:not([action='/console/logout'])")
                assert await changes.count() == 0, path
            assert mkey["id"] not in await gpage.content()
            assert await gpage.locator("#usage-table code.key:text-matches('…$')").count() >= 1
            await _shot(gpage, "11-guest-usage")
        finally:
            await browser.close()
