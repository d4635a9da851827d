"""A plain HTTP client for the console: signs in through the form, keeps the cookie, and
sends each form with the CSRF token of the page it came from."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from asgi_lifespan import LifespanManager

from autoglm.api.app import create_app
from autoglm.settings import Settings
from tests.conftest import ADMIN_KEY

CSRF = re.compile(r'name="csrf" value="([^"]*)"')
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found is not None, "no CSRF field on the page"
    return found.group(1)


class ConsoleClient:
    def __init__(self, app, base_url: str = "http://test") -> None:
        self.app = app
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                      base_url=base_url, timeout=60)

    async def sign_in(self, key: str, next_: str = "/console") -> httpx.Response:
        page = await self.http.get("/console/login")
        return await self.http.post("/console/login", data={
            "key": key, "csrf": csrf_of(page.text), "next": next_})

    async def get(self, path: str, **kw) -> httpx.Response:
        return await self.http.get(path, **kw)

    async def submit(self, page: str, action: str, data: dict | None = None,
                     **kw) -> httpx.Response:
        """Load ``page``, then post ``data`` to ``action`` with that page's CSRF token."""
        html = (await self.http.get(page)).text
        return await self.http.post(action, data={"csrf": csrf_of(html), **(data or {})}, **kw)

    async def close(self) -> None:
        await self.http.aclose()


async def running(settings: Settings, **kw) -> AsyncIterator:
    app = create_app(settings, **kw)
    async with LifespanManager(app, startup_timeout=120, shutdown_timeout=30):
        yield app


async def admin_api(app, method: str, path: str, json: object | None = None) -> dict:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://test", timeout=60) as http:
        r = await http.request(method, path, json=json, headers=ADMIN)
        assert r.status_code < 300, r.text
        return r.json()


def data_dir(tmp: Path) -> Path:
    return tmp / "data"
