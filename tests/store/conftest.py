"""Each store test runs on SQLite and on PostgreSQL (127.0.0.1:5432, trust auth).

PostgreSQL tests create a database of their own and drop it afterwards; when no
server answers, they skip with a message saying what to start.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from autoglm.store.db import Database
from tests.conftest import pg_database


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        database = Database(f"sqlite:///{tmp_path / 'cp.db'}")
        database.upgrade()
        yield database
        database.close()
        return
    with pg_database() as url:
        database = Database(url)
        try:
            database.upgrade()
            yield database
        finally:
            database.close()
