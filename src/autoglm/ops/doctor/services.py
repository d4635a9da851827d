"""The services the server uses: the control-plane database (reachable, its version, its
migrations current) and, when ``redis_url`` is set, Redis (reachable, its version)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from autoglm.ops.doctor.result import Result, failed, passed, skipped, warned
from autoglm.ops.doctor.runner import Context
from autoglm.state.redis import redact
from autoglm.store.db import MIGRATIONS, database_url

MIN_POSTGRES = 13  # the oldest PostgreSQL still supported upstream when this was written
MIN_REDIS = (6, 2)  # XAUTOCLAIM (the batch queue)


def _heads() -> set[str]:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return set(ScriptDirectory.from_config(cfg).get_heads())


def _known() -> set[str]:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return {rev.revision for rev in ScriptDirectory.from_config(cfg).walk_revisions()}


def _migrations(current: set[str]) -> Result:
    heads = _heads()
    data = {"current": sorted(current), "head": sorted(heads)}
    if current == heads:
        return passed("services.migrations", f"schema at the newest revision "
                      f"({', '.join(sorted(heads))})", **data)
    if not current:
        return warned("services.migrations", "the database has no schema yet",
                      "run `autoglm db upgrade` (the server also migrates at start)", **data)
    unknown = current - _known()
    if unknown:
        return failed("services.migrations", f"the database is at revision "
                      f"{', '.join(sorted(unknown))}, which this autoglm does not know (a newer "
                      "version migrated it)", "upgrade autoglm to the version that migrated "
                      "this database; downgrades are not supported", **data)
    return warned("services.migrations", f"schema at {', '.join(sorted(current))}, behind "
                  f"{', '.join(sorted(heads))}", "run `autoglm db upgrade` (the server also "
                  "migrates at start; back the database up first)", **data)


def _sqlite(path: Path) -> list[Result]:
    version = sqlite3.sqlite_version
    if not path.exists():
        return [passed("services.database", f"SQLite {version} at {path}: not created yet (it "
                       "is created and migrated at first start)", backend="sqlite",
                       version=version, path=str(path)),
                skipped("services.migrations", "no database yet")]
    try:  # read-only: the doctor changes nothing
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)
        try:
            has = conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND "
                               "name='alembic_version'").fetchone()
            current = ({r[0] for r in conn.execute("SELECT version_num FROM alembic_version")}
                       if has else set())
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return [failed("services.database", f"SQLite at {path}: {exc}",
                       "check the file's permissions and that it is an SQLite database; "
                       "restore it from a backup if it is damaged", backend="sqlite",
                       path=str(path))]
    return [passed("services.database", f"SQLite {version} at {path}", backend="sqlite",
                   version=version, path=str(path)), _migrations(current)]


def _postgres(url: str, timeout_s: float) -> list[Result]:
    where = make_url(url).render_as_string(hide_password=True)
    engine = create_engine(url, connect_args={"connect_timeout": max(1, int(timeout_s))})
    try:
        with engine.connect() as conn:
            version = str(conn.execute(text("SHOW server_version")).scalar())
            current = set(MigrationContext.configure(conn).get_current_heads())
    except SQLAlchemyError as exc:
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())[:300]
        return [failed("services.database", f"cannot reach {where}: {reason}",
                       "start PostgreSQL, or fix database_url (host, port, user, database, "
                       "pg_hba.conf)", backend="postgresql", url=where),
                skipped("services.migrations", "database not reachable")]
    finally:
        engine.dispose()
    data = {"backend": "postgresql", "url": where, "version": version}
    try:
        major = int(version.split(".")[0])
    except ValueError:
        major = MIN_POSTGRES
    if major < MIN_POSTGRES:
        first = warned("services.database", f"PostgreSQL {version} at {where}: older than "
                       f"{MIN_POSTGRES}, unsupported", f"upgrade PostgreSQL to "
                       f"{MIN_POSTGRES} or newer", **data)
    else:
        first = passed("services.database", f"PostgreSQL {version} at {where}", **data)
    return [first, _migrations(current)]


def database(ctx: Context) -> list[Result]:
    url = database_url(ctx.settings)
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        return [failed("services.database", f"database_url is not a database URL: {exc}",
                       "set database_url to postgresql+psycopg://USER@HOST/DB, or unset it "
                       "for SQLite")]
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite(Path(parsed.database or ""))
    if backend != "postgresql":
        return [failed("services.database", f"unsupported database {backend}",
                       "use postgresql+psycopg://... or unset database_url for SQLite")]
    return _postgres(url, ctx.service_timeout_s)


def redis(ctx: Context) -> Result:
    s = ctx.settings
    if s.redis_url is None:
        return skipped("services.redis", "redis_url not set: limits, cache and the batch "
                       "queue use their embedded forms")
    import redis as redis_lib

    url = s.redis_url.get_secret_value()
    where = redact(url)
    client = redis_lib.Redis.from_url(url, socket_connect_timeout=ctx.service_timeout_s,
                                      socket_timeout=ctx.service_timeout_s)
    try:
        client.ping()
        info = client.info("server")
        try:
            policy = str(client.config_get("maxmemory-policy").get("maxmemory-policy", ""))
        except redis_lib.exceptions.ResponseError:  # CONFIG disabled (managed Redis)
            policy = ""
    except redis_lib.exceptions.AuthenticationError as exc:
        return failed("services.redis", f"{where}: authentication failed ({exc})",
                      "put the right password in redis_url: redis://:PASSWORD@HOST:PORT/DB",
                      url=where)
    except (redis_lib.exceptions.RedisError, OSError) as exc:
        reason = " ".join(str(exc).split())[:200]
        return failed("services.redis", f"cannot reach {where}: {reason}",
                      "start Redis, or fix redis_url (unset it for the embedded forms)",
                      url=where)
    finally:
        client.close()
    version = str(info.get("redis_version", "?"))
    data = {"url": where, "version": version, "maxmemory_policy": policy or None}
    try:
        parts = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        parts = MIN_REDIS
    if parts < MIN_REDIS:
        return failed("services.redis", f"Redis {version} at {where}: the batch queue needs "
                      f"{MIN_REDIS[0]}.{MIN_REDIS[1]} or newer (XAUTOCLAIM)",
                      "upgrade Redis to 6.2 or newer", **data)
    if policy.startswith("allkeys-"):
        return warned("services.redis", f"Redis {version} at {where}: maxmemory-policy "
                      f"{policy} may evict queued batch lines, locks and limit counters",
                      "CONFIG SET maxmemory-policy volatile-lru (it never evicts the batch "
                      "stream), or give autoglm a Redis of its own", **data)
    return passed("services.redis", f"Redis {version} at {where}", **data)
