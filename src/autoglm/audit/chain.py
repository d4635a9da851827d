"""Appending sealed records to the database: lock the head, seal, insert, move the head.

Every append, from any thread or process, runs in one transaction that first locks the
one-row ``audit_head`` table: ``SELECT ... FOR UPDATE`` on PostgreSQL, ``BEGIN
IMMEDIATE`` on SQLite (the database's single write lock; in a caller's session, whose
transaction has already begun, a no-op ``UPDATE`` of the head takes the same lock). Under
the lock the records get the next sequence numbers and their HMACs, are inserted (COPY on
PostgreSQL, executemany on SQLite) and the head moves to the last one; the commit makes
records and head visible together, so there are never gaps or forks. The usage the
inference records add (``rollup``) is written in the same transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import orjson
import psycopg
from sqlalchemy import Connection, insert, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from autoglm.audit import rollup
from autoglm.audit.record import COLUMNS, seal
from autoglm.store.models import AuditRecord

_TABLE = AuditRecord.__table__
_LOCK_PG = text("SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE")
_LOCK_TIMEOUT = text("SET LOCAL lock_timeout = '5s'")
_READ = text("SELECT seq, hash FROM audit_head WHERE id = 1")
_TAKE_SQLITE = text("UPDATE audit_head SET seq = seq WHERE id = 1")
_MOVE = text("UPDATE audit_head SET seq = :seq, hash = :hash WHERE id = 1")
_AT = text("SELECT hash FROM audit_log WHERE seq = :seq")
_COPY = f"COPY audit_log ({', '.join(COLUMNS)}) FROM STDIN"
_INSERT_SQLITE = (f"INSERT INTO audit_log ({', '.join(COLUMNS)}) "
                  f"VALUES ({', '.join('?' * len(COLUMNS))})")
_TS, _DETAIL = COLUMNS.index("ts"), COLUMNS.index("detail")

# what a database in trouble raises (COPY runs on the driver's cursor, unwrapped)
DB_ERRORS = (SQLAlchemyError, psycopg.Error, sqlite3.Error, OSError)
Prepared = tuple[dict[str, Any], bytes]  # (normalised row, canonical body)


def begin_locked(conn: Connection) -> tuple[int, bytes]:
    """Begin the append transaction on a connection of our own and lock the head."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        row = conn.execute(_READ).one()
    else:
        conn.execute(_LOCK_TIMEOUT)  # a stuck holder makes an error (and a retry), not a hang
        row = conn.execute(_LOCK_PG).one()
    return int(row[0]), bytes.fromhex(row[1])


def lock_in_session(session: Session) -> tuple[int, bytes]:
    """Lock the head inside a caller's transaction."""
    if session.get_bind().dialect.name == "sqlite":
        session.execute(_TAKE_SQLITE)
        row = session.execute(_READ).one()
    else:
        row = session.execute(_LOCK_PG).one()
    return int(row[0]), bytes.fromhex(row[1])


def seal_rows(key: bytes, seq: int, prev: bytes, batch: Sequence[Prepared]) -> bytes:
    """Give each row its seq and hash, after ``seq``/``prev``; returns the last hash."""
    for row, body in batch:
        seq += 1
        prev = seal(key, prev, seq, body)
        row["seq"] = seq
        row["hash"] = prev.hex()
    return prev


def insert_rows(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Straight through the driver, in the transaction ``conn`` holds: COPY on PostgreSQL,
    executemany on SQLite (the time as SQLAlchemy's SQLite DateTime writes it, naive UTC;
    ``detail`` as JSON text either way)."""
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        if conn.dialect.name == "postgresql":
            with cursor.copy(_COPY) as copy:  # type: ignore[attr-defined]
                for row in rows:
                    copy.write_row(_values(row, row["ts"]))
        else:
            cursor.executemany(_INSERT_SQLITE, [
                _values(row, row["ts"].replace(tzinfo=None).isoformat(" ", "microseconds"))
                for row in rows])
    finally:
        cursor.close()


def _values(row: dict[str, Any], ts: object) -> tuple[Any, ...]:
    values = [row[c] for c in COLUMNS]
    values[_TS] = ts
    values[_DETAIL] = orjson.dumps(row["detail"]).decode()
    return tuple(values)


def move_head(conn: Connection | Session, seq: int, last: bytes) -> None:
    conn.execute(_MOVE, {"seq": seq, "hash": last.hex()})


def holds(conn: Connection, seq: int, hash_hex: str) -> bool:
    """Whether record ``seq`` is stored with ``hash_hex`` (a commit that went through)."""
    row = conn.execute(_AT, {"seq": seq}).first()
    return row is not None and row[0] == hash_hex


def read_head(conn: Connection) -> tuple[int, str]:
    row = conn.execute(_READ).one()
    return int(row[0]), str(row[1])


def append_in_session(session: Session, key: bytes, batch: Sequence[Prepared]) -> None:
    """Seal and insert inside the caller's transaction; the caller commits."""
    seq, prev = lock_in_session(session)
    last = seal_rows(key, seq, prev, batch)
    session.execute(insert(_TABLE), [row for row, _ in batch])
    rollup.apply(session, (row for row, _ in batch))  # usage commits with its records
    move_head(session, seq + len(batch), last)
