"""The control-plane database into and out of a backup: SQLite's online backup API, or
``pg_dump``/``pg_restore`` (custom format) for PostgreSQL.

Both read one consistent snapshot while the server goes on writing: SQLite's backup API
copies the pages of one read transaction; for PostgreSQL a repeatable-read transaction
exports its snapshot (``pg_export_snapshot``), the audit head is read in it and
``pg_dump --snapshot`` dumps exactly that state. The PostgreSQL client tools must be at
least the server's major version (``pg_dump`` refuses a newer server); that is checked
first and said plainly.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError

from autoglm.errors import ConfigError
from autoglm.store.db import Database

TOOL_TIMEOUT_S = 3600


@dataclass(frozen=True)
class Snapshot:
    """What was read in the database's snapshot."""

    kind: str  # sqlite | postgresql
    revision: str | None  # alembic_version
    head_seq: int  # the audit chain's head in the snapshot
    head_hash: str | None
    tool: str | None = None  # "pg_dump (PostgreSQL) 15.20"


def kind_of(url: str) -> str:
    backend = make_url(url).get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ConfigError("database_url must be sqlite:/// or postgresql+psycopg://")
    return backend


def sqlite_path(url: str) -> Path:
    path = make_url(url).database
    if not path or path == ":memory:":
        raise ConfigError("an in-memory SQLite database cannot be backed up or restored")
    return Path(path)


def _read_state(conn: object) -> tuple[str | None, int, str | None]:
    run = conn.execute  # type: ignore[attr-defined]
    try:
        revision = run(text("SELECT version_num FROM alembic_version")).scalar()
    except SQLAlchemyError:
        revision = None
    try:
        head = run(text("SELECT seq, hash FROM audit_head WHERE id = 1")).first()
    except SQLAlchemyError:
        head = None
    return revision, (int(head[0]) if head else 0), (head[1] if head else None)


# --- SQLite ---------------------------------------------------------------------------------
def dump_sqlite(url: str, out: Path) -> Snapshot:
    """An online backup of the SQLite database into ``out`` (a new file)."""
    source = sqlite_path(url)
    if not source.is_file():
        raise ConfigError(f"no SQLite database at {source}: nothing to back up")
    src = sqlite3.connect(str(source), timeout=30)
    dst = sqlite3.connect(str(out))
    try:
        src.backup(dst)  # the pages of one read transaction: consistent while writers go on
        dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
    except sqlite3.Error as exc:
        dst.close()
        raise ConfigError(f"SQLite backup of {source} failed: {exc}") from None
    finally:
        src.close()
    try:
        revision = _one(dst, "SELECT version_num FROM alembic_version")
        head = _one(dst, "SELECT seq, hash FROM audit_head WHERE id = 1")
    finally:
        dst.close()
    return Snapshot("sqlite", revision[0] if revision else None, int(head[0]) if head else 0,
                    head[1] if head else None)


def _one(conn: sqlite3.Connection, sql: str) -> tuple[object, ...] | None:
    try:
        return conn.execute(sql).fetchone()
    except sqlite3.Error:  # an older schema: not there yet
        return None


def restore_sqlite(dump: Path, url: str) -> None:
    """Put the backed-up file in place of the database (atomically: rename), removing a
    stale WAL of the database it replaces."""
    target = sqlite_path(url)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.restore")
    try:
        shutil.copyfile(dump, tmp)
        os.chmod(tmp, 0o600)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        for side in ("-wal", "-shm"):
            target.with_name(target.name + side).unlink(missing_ok=True)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


# --- PostgreSQL -----------------------------------------------------------------------------
def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise ConfigError(f"{name} not found on PATH: install the PostgreSQL client tools "
                          "(e.g. the postgresql-client package) of the server's major version")
    return found


def tool_major(exe: str) -> tuple[int, str]:
    """The major version of a PostgreSQL client tool, and its version line."""
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30,
                             check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise ConfigError(f"cannot run {exe} --version: {exc}") from None
    m = re.search(r"(\d+)(?:\.(\d+))?", out)
    if m is None:
        raise ConfigError(f"cannot tell the version of {exe} from {out!r}")
    return int(m.group(1)), out


def _libpq(url: str) -> tuple[str, dict[str, str]]:
    """A libpq connection URI without the password, and the environment carrying it (so
    the password never appears on a command line)."""
    parsed: URL = make_url(url)
    env = dict(os.environ)
    if parsed.password is not None:
        env["PGPASSWORD"] = str(parsed.password)
    plain = parsed.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


def server_major(conn: object) -> int:
    num = conn.execute(text("SHOW server_version_num")).scalar()  # type: ignore[attr-defined]
    return int(num) // 10000


@contextmanager
def _exported_snapshot(db: Database) -> Iterator[tuple[str, int, str | None, str | None]]:
    with (db.engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn,
          conn.begin()):
        snapshot_id = conn.execute(text("SELECT pg_export_snapshot()")).scalar_one()
        revision, head_seq, head_hash = _read_state(conn)
        yield snapshot_id, head_seq, head_hash, revision


def dump_postgresql(url: str, out: Path) -> Snapshot:
    """``pg_dump --format=custom`` of the database into ``out``, in one snapshot."""
    exe = _tool("pg_dump")
    major, version = tool_major(exe)
    uri, env = _libpq(url)
    db = Database(url)
    try:
        try:
            with db.engine.connect() as conn:
                server = server_major(conn)
        except SQLAlchemyError as exc:
            raise ConfigError(f"cannot reach the database: {' '.join(str(exc).split())}") \
                from None
        if server > major:
            raise ConfigError(
                f"{version} cannot dump a PostgreSQL {server} server (pg_dump must be at least "
                f"the server's major version): install the PostgreSQL {server} client tools and "
                f"put them first on PATH")
        with _exported_snapshot(db) as (snapshot_id, head_seq, head_hash, revision):
            _run([exe, "--format=custom", "--no-owner", "--no-privileges",
                  f"--snapshot={snapshot_id}", f"--file={out}", f"--dbname={uri}"], env,
                 "pg_dump")
    finally:
        db.close()
    return Snapshot("postgresql", revision, head_seq, head_hash, tool=version)


def restore_postgresql(dump: Path, url: str) -> None:
    """``pg_restore`` into the configured database, in one transaction (all or nothing);
    objects of the dump that exist already are dropped first (``--clean``)."""
    exe = _tool("pg_restore")
    _, version = tool_major(exe)
    uri, env = _libpq(url)
    _run([exe, "--clean", "--if-exists", "--no-owner", "--no-privileges",
          "--single-transaction", "--exit-on-error", f"--dbname={uri}", str(dump)], env,
         "pg_restore", hint=f" ({version}; a dump from a newer pg_dump needs a pg_restore at "
         "least as new)")


def _run(argv: list[str], env: dict[str, str], what: str, hint: str = "") -> None:
    try:
        proc = subprocess.run(argv, check=False, capture_output=True, text=True, env=env,
                              timeout=TOOL_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ConfigError(f"{what} could not run: {exc}") from None
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-3:]
        raise ConfigError(f"{what} failed (exit {proc.returncode}){hint}: "
                          f"{' / '.join(lines) or 'no message'}")


# --- is there anything there? ----------------------------------------------------------------
def holds_data(url: str) -> list[str]:
    """The tables of the database that hold at least one row (empty: nothing to lose)."""
    if kind_of(url) == "sqlite" and not sqlite_path(url).exists():
        return []
    db = Database(url)
    try:
        with db.engine.connect() as conn:
            names = inspect(conn).get_table_names()
            return [n for n in names if n != "alembic_version" and conn.execute(
                text(f'SELECT 1 FROM "{n}" LIMIT 1')).first() is not None]
    except SQLAlchemyError as exc:
        raise ConfigError(f"cannot reach the database: {' '.join(str(exc).split())}") from None
    finally:
        db.close()
