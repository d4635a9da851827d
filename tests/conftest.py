"""Shared fixtures. No test touches a real home directory: AUTOGLM_* variables from the
caller's environment are removed and the data directory points at a temporary folder."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager

from autoglm.api.app import create_app
from autoglm.settings import Settings

ADMIN_KEY = "test-admin-key-0123456789abcdef-0123456789"
MODEL = "smollm2-135m-instruct"


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("AUTOGLM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AUTOGLM_DATA_DIR", str(tmp_path / "data"))
    yield


def make_settings(data_dir: Path, **overrides: object) -> Settings:
    base: dict[str, object] = {
        "data_dir": data_dir,
        "admin_key": ADMIN_KEY,
        "slots": 2,
        "n_threads": 1,  # llama.cpp's spinning threads collapse when CI shares the cores
        "ctx_per_slot": 512,
        "max_body_bytes": 4096,
        "default_max_tokens": 32,
        "engine_restart_backoff_min_s": 1.0,
    }
    base.update(overrides)
    return Settings(**base)  # type: ignore[arg-type]


class AppClient:
    """An app with its real engine process, and an in-process HTTP client for it."""

    def __init__(self, app, client: httpx.AsyncClient) -> None:
        self.app = app
        self.http = client
        self.auth = {"Authorization": f"Bearer {ADMIN_KEY}"}

    async def post(self, path: str, json: object | None = None, **kw) -> httpx.Response:
        headers = {**self.auth, **kw.pop("headers", {})}
        return await self.http.post(path, json=json, headers=headers, **kw)

    async def get(self, path: str, **kw) -> httpx.Response:
        headers = {**self.auth, **kw.pop("headers", {})}
        return await self.http.get(path, headers=headers, **kw)


async def start_app(settings: Settings) -> AsyncIterator[AppClient]:
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=120, shutdown_timeout=30):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test",
                                     timeout=60) as client:
            yield AppClient(app, client)


@pytest.fixture(scope="session")
async def api(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AppClient]:
    settings = make_settings(tmp_path_factory.mktemp("api-data"))
    async for client in start_app(settings):
        yield client


@contextmanager
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database on 127.0.0.1:5432 (trust auth), dropped afterwards.

    Skips the test, naming what to start, when no PostgreSQL answers."""
    import psycopg

    try:
        admin = psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres",
                                autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        pytest.skip(f"PostgreSQL not reachable on 127.0.0.1:5432 ({exc}); start it to run "
                    "the PostgreSQL tests")
    name = f"autoglm_test_{secrets.token_hex(4)}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
