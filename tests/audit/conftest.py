"""Audit tests run on SQLite and on PostgreSQL (127.0.0.1:5432, trust auth), as the store
tests do; PostgreSQL ones skip, saying what to start, when no server answers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from autoglm.audit import AuditPaths
from autoglm.store.db import Database
from tests.conftest import pg_database


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'cp.db'}"
        _upgrade(url)
        yield url
        return
    with pg_database() as url:
        _upgrade(url)
        yield url


def _upgrade(url: str) -> None:
    database = Database(url)
    try:
        database.upgrade()
    finally:
        database.close()


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    yield database
    database.close()


@pytest.fixture
def paths(tmp_path: Path) -> AuditPaths:
    """Under the data directory the isolated environment points AUTOGLM_DATA_DIR at."""
    return AuditPaths.under(tmp_path / "data")
