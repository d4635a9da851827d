"""Each store test runs on SQLite and on PostgreSQL (127.0.0.1:5432, trust auth).

PostgreSQL tests create a database of their own and drop it afterwards; when no
server answers, they skip with a message saying what to start.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from autoglm.store.db import Database

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def _pg_admin():
    import psycopg

    return psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres",
                           autocommit=True, connect_timeout=3)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        database = Database(f"sqlite:///{tmp_path / 'cp.db'}")
        database.upgrade()
        yield database
        database.close()
        return
    try:
        admin = _pg_admin()
    except Exception as exc:  # noqa: BLE001 - any connection failure means: not available
        pytest.skip(f"PostgreSQL not reachable on 127.0.0.1:5432 ({exc}); start it to run "
                    "the PostgreSQL store tests")
    name = f"autoglm_test_{secrets.token_hex(4)}"
    admin.execute(f'CREATE DATABASE "{name}"')
    database = Database(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
    try:
        database.upgrade()
        yield database
    finally:
        database.close()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
