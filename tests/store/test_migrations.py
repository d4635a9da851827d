"""Migrations on data written by the schema before them (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from autoglm.store.db import MIGRATIONS, Database
from autoglm.store.models import Tenant
from tests.conftest import pg_database


@pytest.fixture(params=["sqlite", "postgresql"])
def bare(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        database = Database(f"sqlite:///{tmp_path / 'old.db'}")
        yield database
        database.close()
        return
    with pg_database() as url:
        database = Database(url)
        try:
            yield database
        finally:
            database.close()


def _to(db: Database, revision: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def test_tenants_are_granted_what_their_projects_list(bare: Database) -> None:
    _to(bare, "0002")
    with bare.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO tenants (id, name, created_at) VALUES "
                             "('ten_a', 'a', CURRENT_TIMESTAMP), ('ten_b', 'b', CURRENT_TIMESTAMP),"
                             " ('ten_c', 'c', CURRENT_TIMESTAMP)"))
        conn.execute(sa.text(
            "INSERT INTO projects (id, tenant_id, name, allowed_models, created_at) VALUES "
            "('prj_1', 'ten_a', 'x', '[\"m1\", \"m2\"]', CURRENT_TIMESTAMP), "
            "('prj_2', 'ten_a', 'y', '[\"m2\", \"m3\"]', CURRENT_TIMESTAMP), "
            "('prj_3', 'ten_b', 'z', '[]', CURRENT_TIMESTAMP)"))
    bare.upgrade()
    with bare.session() as s:
        granted = {t.id: t.granted_models for t in s.query(Tenant)}
    assert granted == {"ten_a": ["m1", "m2", "m3"], "ten_b": [], "ten_c": []}
