"""Edge tests: an edge's database (SQLite, as an edge runs) and a centre's, on SQLite and
on PostgreSQL (127.0.0.1:5432, trust auth; skipped, saying what to start, without it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from autoglm.store.db import Database
from tests.conftest import pg_database


def _db(url: str) -> Database:
    database = Database(url)
    database.upgrade()
    return database


@pytest.fixture
def edge_db(tmp_path: Path) -> Iterator[Database]:
    database = _db(f"sqlite:///{tmp_path / 'edge.db'}")
    yield database
    database.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def centre_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        database = _db(f"sqlite:///{tmp_path / 'centre.db'}")
        yield database
        database.close()
        return
    with pg_database() as url:
        database = _db(url)
        yield database
        database.close()
