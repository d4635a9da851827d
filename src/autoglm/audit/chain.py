"""Appending sealed records to the database: lock the head, seal, insert, move the head.

Every append, from any thread or process, runs in one transaction that first locks the
one-row ``audit_head`` table: ``SELECT ... FOR UPDATE`` on PostgreSQL, ``BEGIN
IMMEDIATE`` on SQLite (the database's single write lock; in a caller's session, whose
transaction has already begun, a no-op ``UPDATE`` of the head takes the same lock). Under
the lock the records get the next sequence numbers and their HMACs, are inserted (COPY on
PostgreSQL, executemany on SQLite) and the head moves to the last one; the commit makes
records and head visible together, so there are never gaps or forks. The usage the
inference records add (``rollup``) is written in the same transaction.

The writer's group commits (``locked``) run on a pooled driver connection of their own,
not through SQLAlchemy's ``Connection``: a commit comes every ``flush_ms`` under load, and
SQLAlchemy's layers around its statements cost several times what SQLite takes to run
them (taking the lock, moving the head and committing: about 250 against 45 µs of CPU,
measured on SQLite). Same statements, same lock, same transaction.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from operator import itemgetter
from typing import Any

import orjson
import psycopg
from sqlalchemy import Connection, Engine, insert, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from autoglm.audit import rollup
from autoglm.audit.record import COLUMNS, seal
from autoglm.store.models import AuditRecord

_TABLE = AuditRecord.__table__
_LOCK_PG = text("SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE")
_READ = text("SELECT seq, hash FROM audit_head WHERE id = 1")
_TAKE_SQLITE = text("UPDATE audit_head SET seq = seq WHERE id = 1")
_MOVE = text("UPDATE audit_head SET seq = :seq, hash = :hash WHERE id = 1")
_COPY = f"COPY audit_log ({', '.join(COLUMNS)}) FROM STDIN"
_TS, _DETAIL = COLUMNS.index("ts"), COLUMNS.index("detail")
_ROW = itemgetter(*COLUMNS)
# ``locked``'s statements in each driver's own parameter style. PostgreSQL: a stuck holder
# of the head makes an error (and a retry), not a hang; SQLite: BEGIN IMMEDIATE is the lock.
_DRIVER_SQL = {
    "sqlite": {"begin": "BEGIN IMMEDIATE",
               "head": "SELECT seq, hash FROM audit_head WHERE id = 1",
               "move": "UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1",
               "at": "SELECT hash FROM audit_log WHERE seq = ?",
               "range": "SELECT seq, hash FROM audit_log WHERE seq BETWEEN ? AND ? "
                        "ORDER BY seq"},
    "postgresql": {"begin": "SET LOCAL lock_timeout = '5s'",
                   "head": "SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE",
                   "move": "UPDATE audit_head SET seq = %s, hash = %s WHERE id = 1",
                   "at": "SELECT hash FROM audit_log WHERE seq = %s",
                   "range": "SELECT seq, hash FROM audit_log WHERE seq BETWEEN %s AND %s "
                            "ORDER BY seq"},
}

# what a database in trouble raises (COPY runs on the driver's cursor, unwrapped)
DB_ERRORS = (SQLAlchemyError, psycopg.Error, sqlite3.Error, OSError)
Prepared = tuple[dict[str, Any], bytes]  # (normalised row, canonical body)


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


def _insert(cursor: Any, sqlite: bool, rows: Sequence[dict[str, Any]]) -> None:
    """COPY on PostgreSQL; on SQLite multi-row INSERTs (the time as SQLAlchemy's SQLite
    DateTime writes it, naive UTC; ``detail`` as JSON text either way).

    On SQLite the rows go in chunks of power-of-two sizes, one statement each: one
    ``sqlite3_step`` per chunk instead of one per row (``executemany``). Every step lets go
    of the GIL, and in a busy gateway the writer then waits for the event loop's thread to
    hand it back, once per row: batches took several times their CPU time, and each
    hand-off cost the event loop too."""
    if not sqlite:
        with cursor.copy(_COPY) as copy:
            for row in rows:
                copy.write_row(_values(row, row["ts"]))
        return
    flat: list[Any] = []
    for row in rows:
        flat += _values(row, row["ts"].replace(tzinfo=None).isoformat(" ", "microseconds"))
    width = len(COLUMNS)
    most = _sqlite_chunk_max(cursor.connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
    done = 0
    while done < len(rows):
        n = min(most, 1 << ((len(rows) - done).bit_length() - 1))  # largest power of 2 left
        cursor.execute(_sqlite_insert(n), flat[done * width:(done + n) * width])
        done += n


@functools.cache
def _sqlite_chunk_max(variable_limit: int) -> int:
    """The largest power-of-two number of rows (at most 512) one statement may bind."""
    n = 512
    while n > 1 and n * len(COLUMNS) > variable_limit:
        n //= 2
    return n


@functools.cache
def _sqlite_insert(n: int) -> str:
    """The INSERT of ``n`` rows in one statement (ten sizes at most, each prepared once per
    connection by the driver's statement cache)."""
    one = f"({', '.join('?' * len(COLUMNS))})"
    return f"INSERT INTO audit_log ({', '.join(COLUMNS)}) VALUES {', '.join([one] * n)}"


def _values(row: dict[str, Any], ts: object) -> tuple[Any, ...]:
    values = list(_ROW(row))
    values[_TS] = ts
    values[_DETAIL] = orjson.dumps(row["detail"]).decode()
    return tuple(values)


def move_head(conn: Connection | Session, seq: int, last: bytes) -> None:
    conn.execute(_MOVE, {"seq": seq, "hash": last.hex()})


class Append:
    """One append transaction on a driver connection, the head locked (``locked``)."""

    def __init__(self, dbapi: Any, dialect: str) -> None:
        self.dbapi = dbapi  # the pool's proxy: ``info`` lives as long as the connection
        self.sqlite = dialect == "sqlite"
        self._sql = _DRIVER_SQL[dialect]
        self._cursor = dbapi.cursor()
        self._cursor.execute(self._sql["begin"])  # SQLite: the lock; PostgreSQL: its bound
        seq, hash_hex = self._cursor.execute(self._sql["head"]).fetchone()
        self.seq, self.prev = int(seq), bytes.fromhex(hash_hex)

    def holds(self, seq: int, hash_hex: str) -> bool:
        """Whether record ``seq`` is stored with ``hash_hex`` (a commit that went through
        unanswered)."""
        row = self._cursor.execute(self._sql["at"], (seq,)).fetchone()
        return row is not None and row[0] == hash_hex

    def hashes(self, first: int, last: int) -> list[str]:
        """The stored hashes of records ``first`` to ``last``."""
        rows = self._cursor.execute(self._sql["range"], (first, last)).fetchall()
        return [str(hash_hex) for _, hash_hex in rows]

    def insert(self, rows: Sequence[dict[str, Any]]) -> None:
        _insert(self._cursor, self.sqlite, rows)

    def upsert(self, usage: Mapping[rollup.Key, rollup.Usage]) -> None:
        """Add ``usage`` (``rollup.aggregate``) to the usage table in this transaction."""
        rollup.write(self.dbapi, self.sqlite, usage)

    def move_head(self, seq: int, last: bytes) -> None:
        self._cursor.execute(self._sql["move"], (seq, last.hex()))

    def commit(self) -> None:
        self._cursor.close()
        self.dbapi.commit()


@contextmanager
def locked(engine: Engine) -> Iterator[Append]:
    """Begin the append transaction on a pooled driver connection and lock the head; the
    caller commits (without a commit it is rolled back). Whatever fails inside, the
    connection is dropped, not pooled again: the state of its transaction is unknown (a
    killed backend, an interrupted statement)."""
    dbapi = engine.raw_connection()
    try:
        yield Append(dbapi, engine.dialect.name)
    except BaseException:
        dbapi.invalidate()
        raise
    finally:
        dbapi.close()  # back to the pool, rolled back if not committed


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
