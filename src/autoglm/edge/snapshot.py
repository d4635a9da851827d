"""The identity snapshot a centre hands its edge nodes, and how an edge applies it.

What a tenant's callers need to be recognised and authorised: tenants (with their model
grants), projects, the principals of tenants with their role bindings and keys (the keyed
hashes only: every node of one installation shares the pepper), and the limits admins set.
Platform-level principals (no tenant: platform admins, mirror and edge keys) stay each
node's own: an edge keeps its local administrator whatever the centre holds.

``apply`` makes the edge's tables equal to the snapshot in one transaction: rows the
snapshot lacks are deleted (a key deleted at the centre), changed rows updated (a
revocation), new rows inserted; rows of the edge's own (platform principals, their
bindings and keys) are never touched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, DateTime, Table, and_, delete, insert, select, tuple_, update
from sqlalchemy.sql.elements import ColumnElement

from autoglm.errors import InvalidRequestError
from autoglm.store.db import Database
from autoglm.store.models import ApiKey, Principal, RateLimit, RoleBinding, Tenant
from autoglm.store.models import Project as ProjectRow
from autoglm.timefmt import stamp

VERSION = 1
_T, _P, _PRN = Tenant.__table__, ProjectRow.__table__, Principal.__table__
_RB, _KEY, _LIM = RoleBinding.__table__, ApiKey.__table__, RateLimit.__table__
# Parents first: inserted in this order, deleted in the reverse.
TABLES: tuple[Table, ...] = (_T, _P, _PRN, _RB, _KEY, _LIM)


def _tenant_principals() -> Any:
    return select(_PRN.c.id).where(_PRN.c.tenant_id.is_not(None))


def _scope(table: Table) -> ColumnElement[bool] | None:
    """The rows of ``table`` that come from the centre (None: all of them)."""
    if table is _PRN:
        return _PRN.c.tenant_id.is_not(None)
    if table in (_RB, _KEY):
        return table.c.principal_id.in_(_tenant_principals())
    return None


def _out(value: Any) -> Any:
    return stamp(value) if isinstance(value, datetime) else value


def export(db: Database) -> dict[str, Any]:
    """The snapshot (at the centre), as JSON-ready data, read in one transaction."""
    tables: dict[str, list[dict[str, Any]]] = {}
    with db.engine.connect() as conn, conn.begin():
        for table in TABLES:
            query = select(table)
            where = _scope(table)
            if where is not None:
                query = query.where(where)
            query = query.order_by(*table.primary_key.columns)
            tables[str(table.name)] = [{str(k): _out(v) for k, v in row._mapping.items()}
                                  for row in conn.execute(query)]
    return {"version": VERSION, "generated_at": stamp(), "tables": tables}


@dataclass(frozen=True)
class Applied:
    inserted: int = 0
    updated: int = 0
    deleted: int = 0

    def __add__(self, other: Applied) -> Applied:
        return Applied(self.inserted + other.inserted, self.updated + other.updated,
                       self.deleted + other.deleted)

    @property
    def changed(self) -> bool:
        return bool(self.inserted or self.updated or self.deleted)


def _rows(table: Table, raw: Any) -> list[dict[str, Any]]:
    """The snapshot's rows of one table, checked and typed for the database."""
    if not isinstance(raw, list):
        raise InvalidRequestError(f"snapshot table {table.name} is not a list")
    names = {c.name for c in table.columns}
    times = {c.name for c in table.columns if isinstance(c.type, DateTime)}
    out: list[dict[str, Any]] = []
    for i, row in enumerate(raw):
        if not isinstance(row, dict) or set(row) != names:
            raise InvalidRequestError(f"snapshot table {table.name}, row {i}: expected the "
                                      f"columns {sorted(names)}")
        typed = dict(row)
        for name in times:
            if typed[name] is not None:
                try:
                    typed[name] = datetime.fromisoformat(typed[name])
                except (TypeError, ValueError):
                    raise InvalidRequestError(f"snapshot table {table.name}, row {i}: "
                                              f"{name} is not a time") from None
        out.append(typed)
    return out


def _pk(table: Table, row: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(row[c.name] for c in table.primary_key.columns)


def _pk_clause(table: Table, keys: Sequence[tuple[Any, ...]]) -> ColumnElement[bool]:
    cols = list(table.primary_key.columns)
    if len(cols) == 1:
        return cols[0].in_([k[0] for k in keys])
    return tuple_(*cols).in_(keys)


def apply(db: Database, snapshot: Mapping[str, Any]) -> Applied:
    """Make this node's centre-managed rows equal to ``snapshot`` (at the edge)."""
    if not isinstance(snapshot, Mapping) or snapshot.get("version") != VERSION:
        raise InvalidRequestError(f"not an identity snapshot of version {VERSION}")
    tables = snapshot.get("tables")
    if not isinstance(tables, Mapping):
        raise InvalidRequestError("the snapshot has no tables")
    incoming = {t.name: _rows(t, tables.get(t.name, [])) for t in TABLES}
    total = Applied()
    with db.engine.connect() as conn, conn.begin():
        existing = {t.name: _existing(conn, t) for t in TABLES}
        for table in reversed(TABLES):  # children first
            gone = existing[table.name] - {_pk(table, r) for r in incoming[table.name]}
            if gone:
                conn.execute(delete(table).where(_pk_clause(table, sorted(gone))))
                total += Applied(deleted=len(gone))
        for table in TABLES:  # parents first
            total += _upsert(conn, table, incoming[table.name], existing[table.name])
    return total


def _existing(conn: Connection, table: Table) -> set[tuple[Any, ...]]:
    query = select(*table.primary_key.columns)
    where = _scope(table)
    if where is not None:
        query = query.where(where)
    return {tuple(r) for r in conn.execute(query)}


def _upsert(conn: Connection, table: Table, rows: list[dict[str, Any]],
            existing: set[tuple[Any, ...]]) -> Applied:
    if table is _PRN and any(r["tenant_id"] is None for r in rows):
        raise InvalidRequestError("the snapshot holds a platform principal")
    fresh = [r for r in rows if _pk(table, r) not in existing]
    known = [r for r in rows if _pk(table, r) in existing]
    if fresh:
        conn.execute(insert(table), fresh)
    changed = 0
    if known:
        cols = list(table.primary_key.columns)
        current = {_pk(table, r._mapping): dict(r._mapping) for r in conn.execute(
            select(table).where(_pk_clause(table, [_pk(table, r) for r in known])))}
        for row in known:
            if _same(current.get(_pk(table, row)), row):
                continue
            conn.execute(update(table).where(and_(*(c == row[c.name] for c in cols)))
                         .values(**{k: v for k, v in row.items()
                                    if k not in {c.name for c in cols}}))
            changed += 1
    return Applied(inserted=len(fresh), updated=changed)


def _same(current: Mapping[str, Any] | None, row: Mapping[str, Any]) -> bool:
    if current is None:
        return False
    for name, value in row.items():
        have = current.get(name)
        if isinstance(value, datetime) or isinstance(have, datetime):
            if (stamp(have) if have is not None else None) != (
                    stamp(value) if value is not None else None):
                return False
        elif have != value:
            return False
    return True
