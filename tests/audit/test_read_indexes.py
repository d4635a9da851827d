"""Reading a big audit log costs what the answer costs: every query ``audit.query`` makes
for a page (or an export's range) is an index search, never a walk of the table.

100,000 synthetic rows (reads do not check the chain): 20 tenants, 500 actors, a rare
action (1 in 1,000), denials (1 in 97), one record every 10 s. On PostgreSQL each
statement is run under ``EXPLAIN ANALYZE`` and the rows it read (returned plus removed
by a filter, over every scan) are counted; without the 0006 indexes and the seq bounds
of a time window the worst of these read about half the table. On SQLite the plan must
search an index for every step (no ``SCAN``, no sort of the whole result).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, event, inspect

from autoglm.store.db import MIGRATIONS

from autoglm.audit.query import Filters, page
from autoglm.store.db import Database

NEW = {"ix_audit_log_ts_seq": ["ts", "seq"], "ix_audit_log_tenant_seq": ["tenant_id", "seq"],
       "ix_audit_log_actor_seq": ["actor", "seq"], "ix_audit_log_action_seq": ["action", "seq"],
       "ix_audit_log_decision_seq": ["decision", "seq"]}

ROWS = 100_000
T0 = datetime(2025, 1, 1, tzinfo=UTC)
MAX_READ = 2_500  # rows a page may read on PostgreSQL (2.5% of the table)

_COLUMNS = ("seq, ts, actor, key_id, tenant_id, project_id, action, resource, decision, "
            "status, client_addr, request_id, model, prompt_tokens, completion_tokens, "
            "latency_ms, count, detail, hash")
_VALUES = """x, {ts}, 'prn_' || {pad500}, 'key_x', 'ten_' || {pad20}, 'prj_x',
    CASE WHEN x % 1000 = 0 THEN 'key.revoke' ELSE 'inference' END, '/v1/chat',
    CASE WHEN x % 97 = 0 THEN 'deny' ELSE 'allow' END, 200, '10.0.0.1', 'req', 'm', 1, 2,
    3.5, 1, '{{}}', 'h'"""


def fill(db: Database) -> None:
    with db.engine.begin() as conn:
        if db.engine.dialect.name == "sqlite":
            values = _VALUES.format(
                ts="strftime('%Y-%m-%d %H:%M:%f', '2025-01-01', '+' || (x * 10) || "
                   "' seconds') || '000'",  # 10 s apart, as the stored UTC text
                pad500="printf('%016d', x % 500)", pad20="printf('%016d', x % 20)")
            conn.exec_driver_sql(
                f"WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g "
                f"WHERE x < {ROWS}) INSERT INTO audit_log ({_COLUMNS}) SELECT {values} FROM g")
        else:
            values = _VALUES.format(
                ts="timestamptz '2025-01-01 00:00:00+00' + x * interval '10 seconds'",
                pad500="lpad((x % 500)::text, 16, '0')", pad20="lpad((x % 20)::text, 16, '0')")
            values = values.replace("%", "%%")  # psycopg's placeholders
            conn.exec_driver_sql(f"INSERT INTO audit_log ({_COLUMNS}) SELECT {values} "
                                 f"FROM generate_series(1, {ROWS}) AS g(x)")
            conn.exec_driver_sql("ANALYZE audit_log")


def at(x: int) -> datetime:
    return T0 + timedelta(seconds=10 * x)


def _read(plan: dict[str, Any]) -> int:
    own = 0
    if "Scan" in plan["Node Type"]:
        own = (plan.get("Actual Rows", 0) + plan.get("Rows Removed by Filter", 0)) * plan.get(
            "Actual Loops", 1)
    return own + sum(_read(p) for p in plan.get("Plans", ()))


def costs(conn: Connection, filters: Filters, after: int | None) -> tuple[list[Any], int]:
    """The page, and what its statements read: PostgreSQL, the most rows any one read;
    SQLite, 0 after checking every plan searches an index."""
    statements: list[tuple[str, Any]] = []

    def seen(_conn, _cursor, statement, parameters, *args) -> None:  # noqa: ANN001
        statements.append((statement, parameters))

    event.listen(conn, "before_cursor_execute", seen)
    try:
        rows, _ = page(conn, filters, limit=20, after=after)
    finally:
        event.remove(conn, "before_cursor_execute", seen)
    worst = 0
    for statement, parameters in statements:
        if conn.dialect.name == "sqlite":
            plan = [r[3] for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}",
                                                        parameters)]
            assert all(p.startswith("SEARCH") for p in plan), (filters, plan)
        else:
            doc = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}",
                                       parameters).scalar()
            worst = max(worst, _read(doc[0]["Plan"]))
    return rows, worst


CASES = [
    ("since an hour ago", Filters(since=at(ROWS - 360)), None),
    ("a window long ago", Filters(since=at(30_000), until=at(30_360)), None),
    ("the last page of an old window", Filters(until=at(1_000)), 990),
    ("a tenant, deep", Filters(tenant="ten_0000000000000007"), 60_000),
    ("a rare action", Filters(action="key.revoke"), None),
    ("denials", Filters(decision="deny"), 50_000),
    ("an actor in a window", Filters(actor="prn_0000000000000042", since=at(40_000),
                                     until=at(80_000)), None),
]


@pytest.fixture
def big(db: Database) -> Database:
    fill(db)
    return db


@pytest.mark.parametrize(("what", "filters", "after"), CASES, ids=[c[0] for c in CASES])
def test_a_page_reads_little_of_a_big_table(big: Database, what: str, filters: Filters,
                                            after: int | None) -> None:
    with big.engine.connect() as conn:
        rows, read = costs(conn, filters, after)
    assert rows, what
    assert all(filters.tenant in (None, r["tenant_id"]) for r in rows)
    assert read <= MAX_READ, (what, read)


def _indexes(db: Database) -> dict[str, list[str]]:
    with db.engine.connect() as conn:
        return {ix["name"]: ix["column_names"] for ix in inspect(conn).get_indexes("audit_log")}


def _migrate(db: Database, how: str, revision: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        getattr(command, how)(cfg, revision)


def test_migration_0006_adds_the_read_indexes_and_goes_back(db: Database) -> None:
    assert _indexes(db) == NEW  # the time index (ts) became (ts, seq)
    _migrate(db, "downgrade", "0005")
    assert _indexes(db) == {"ix_audit_log_ts": ["ts"]}
    _migrate(db, "upgrade", "head")
    assert _indexes(db) == NEW
