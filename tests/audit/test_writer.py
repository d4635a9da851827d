"""The writer: group commit, strict mode, appends inside a caller's transaction, a full
queue, database trouble, checkpoints, and verify on a chain that is being written."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import psycopg
import pytest
from sqlalchemy import func, select, text

from autoglm.audit import AuditLog, AuditPaths, Record, verify
from autoglm.audit.checkpoints import BadLine, read
from autoglm.audit.keys import load_public_key
from autoglm.errors import AuditError
from autoglm.store.db import Database
from autoglm.store.models import AuditRecord, Tenant


def count(db: Database) -> int:
    with db.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(AuditRecord)).scalar_one()


def request_ids(db: Database) -> set[str]:
    with db.engine.connect() as conn:
        return set(conn.execute(select(AuditRecord.request_id)).scalars())


def rec(i: int, **kw) -> Record:
    return Record(action="chat.completions", status=200, request_id=f"r-{i}", **kw)


@contextlib.contextmanager
def head_locked(url: str) -> Iterator[None]:
    """Another session holds the chain's lock (as a long append would) until the block ends."""
    if url.startswith("sqlite"):
        import sqlite3

        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
    else:
        conn = psycopg.connect(url.replace("postgresql+psycopg", "postgresql"))
        conn.execute("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE")
    try:
        yield
    finally:
        conn.rollback()
        conn.close()


def test_group_commit_persists_everything_on_close(db: Database, paths: AuditPaths) -> None:
    log = AuditLog(db, paths, flush_ms=50, checkpoint_every=1_000)
    for i in range(5_000):
        log.submit(rec(i))
    log.close()
    assert count(db) == 5_000
    assert request_ids(db) == {f"r-{i}" for i in range(5_000)}
    report = verify(db, paths)
    assert report.intact and report.head_seq == 5_000
    assert report.last_checkpoint == 5_000  # the one close writes
    with pytest.raises(AuditError, match="closed"):
        log.submit(rec(0))


def test_submit_only_queues_and_flush_commits(db: Database, paths: AuditPaths) -> None:
    log = AuditLog(db, paths, flush_ms=1_000)
    first = rec(1)
    log.submit(first)
    assert count(db) == 0 and first.seq is None and log.pending == 1  # not yet written
    log.flush()
    assert count(db) == 1 and first.seq == 1 and log.pending == 0
    log.close()


def test_records_are_committed_within_the_flush_interval(db: Database,
                                                        paths: AuditPaths) -> None:
    log = AuditLog(db, paths, flush_ms=10)
    t0 = time.monotonic()
    log.submit(rec(1))
    while count(db) == 0:
        assert time.monotonic() - t0 < 5, "a queued record was not committed"
        time.sleep(0.002)
    log.close()


def test_strict_submit_returns_once_committed(db: Database, paths: AuditPaths) -> None:
    log = AuditLog(db, paths, flush_ms=1_000, strict=True)
    r = rec(1)
    t0 = time.monotonic()
    log.submit(r)
    assert r.seq == 1 and count(db) == 1
    assert time.monotonic() - t0 < 1.0  # strict does not wait out the group delay
    log.close()


def test_append_in_a_session_commits_with_the_change(db: Database, paths: AuditPaths) -> None:
    log = AuditLog(db, paths)
    with db.session() as s:
        s.add(Tenant(id="ten_bank", name="bank"))
        seqs = log.append([Record(action="tenant.create", resource="ten_bank", status=200,
                                  actor="prn_admin")], session=s)
        assert seqs == [1]
        s.commit()
    with db.session() as s:
        s.add(Tenant(id="ten_gone", name="gone"))
        log.append([Record(action="tenant.create", resource="ten_gone", status=200)],
                   session=s)
        s.rollback()  # the change and its record go together; the chain does not fork
    log.append([Record(action="tenant.delete", resource="ten_bank", status=200)])
    log.close()
    with db.session() as s:
        assert [t.id for t in s.scalars(select(Tenant))] == ["ten_bank"]
        assert list(s.execute(select(AuditRecord.seq, AuditRecord.resource)
                              .order_by(AuditRecord.seq))) == [(1, "ten_bank"), (2, "ten_bank")]
    assert verify(db, paths).intact


def test_a_full_queue_blocks_rather_than_drops(db_url: str, db: Database,
                                               paths: AuditPaths) -> None:
    log = AuditLog(db, paths, flush_ms=1, queue_max=100, batch_max=50)
    longest = 0.0
    with head_locked(db_url):
        release = threading.Event()

        def submit_all() -> None:
            nonlocal longest
            for i in range(300):
                t0 = time.monotonic()
                log.submit(rec(i))
                longest = max(longest, time.monotonic() - t0)
            release.set()

        worker = threading.Thread(target=submit_all)
        worker.start()
        time.sleep(0.8)
        assert not release.is_set() and log.pending == 100  # waiting for room, none dropped
    worker.join(10)
    log.close()
    assert longest >= 0.5
    assert request_ids(db) == {f"r-{i}" for i in range(300)}
    assert verify(db, paths).intact


def test_a_queue_full_for_too_long_refuses_the_new_record(db_url: str, db: Database,
                                                          paths: AuditPaths) -> None:
    log = AuditLog(db, paths, flush_ms=1, queue_max=10, submit_timeout_s=0.3)
    with head_locked(db_url):
        for i in range(10):
            log.submit(rec(i))
        with pytest.raises(AuditError, match="database is not keeping up"):
            log.submit(rec(10))
    log.close()
    assert request_ids(db) == {f"r-{i}" for i in range(10)}  # every accepted one is kept


def test_strict_submit_fails_when_its_commit_does_not_come(db_url: str, db: Database,
                                                           paths: AuditPaths) -> None:
    log = AuditLog(db, paths, strict=True, submit_timeout_s=0.3)
    with head_locked(db_url), pytest.raises(AuditError, match="not committed within"):
        log.submit(rec(1))
    log.close()
    assert count(db) == 1  # it was still written once the lock went


def submit_killing_connections(log: AuditLog, url: str, n: int) -> int:
    """Submit ``n`` records, killing every other connection to ``url``'s database (the
    writer's) now and then; close the log. How many connections were killed."""
    name = url.rsplit("/", 1)[1]
    kills = 0
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres",
                         autocommit=True) as admin:
        for i in range(n):
            log.submit(rec(i))
            if i % 100 == 50:
                kills += len(admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()", (name,)).fetchall())
                time.sleep(0.003)
        log.close()
    return kills


def test_lost_connections_are_retried_without_duplicates(paths: AuditPaths, caplog) -> None:
    """PostgreSQL: every connection of the writer is killed now and then while it
    writes; everything still arrives once, in one chain."""
    from tests.conftest import pg_database

    with pg_database() as url:
        db = Database(url)
        db.upgrade()
        log = AuditLog(db, paths, flush_ms=2)
        with caplog.at_level(logging.ERROR):
            kills = submit_killing_connections(log, url, 3_000)
        retried = [r for r in caplog.records if "not committed yet" in r.getMessage()]
        assert kills and retried  # the writer did lose connections, and tried again
        assert count(db) == 3_000 and len(request_ids(db)) == 3_000
        assert verify(db, paths).intact
        db.close()


def test_close_gives_up_on_a_database_that_stays_away(paths: AuditPaths, caplog) -> None:
    """Shutdown is not held hostage: after close_timeout_s the records still queued are
    reported lost (an error to whoever closes), not waited for forever."""
    db = Database("postgresql+psycopg://postgres@127.0.0.1:9/none")  # nothing listens
    log = AuditLog(db, paths, close_timeout_s=0.5)
    log.submit(rec(1))
    t0 = time.monotonic()
    with caplog.at_level(logging.ERROR), pytest.raises(AuditError, match="1 audit record"):
        log.close()
    assert time.monotonic() - t0 < 10
    assert any("not committed yet" in r.getMessage() for r in caplog.records)
    db.close()


def test_checkpoints_are_signed_every_n_records_and_at_close(db: Database,
                                                             paths: AuditPaths) -> None:
    log = AuditLog(db, paths, flush_ms=0, checkpoint_every=100)
    for i in range(250):
        log.submit(rec(i))
        if i % 50 == 49:
            log.flush()
    log.close()
    entries = list(read(paths.checkpoints, load_public_key(paths.public_key)))
    assert not [e for e in entries if isinstance(e, BadLine)]
    assert [e.seq for e in entries] == [100, 200, 250]
    assert paths.signing_key.stat().st_mode & 0o777 == 0o600


def test_checkpoints_are_sent_to_syslog(db: Database, paths: AuditPaths,
                                        tmp_path: Path) -> None:
    address = str(tmp_path / "log.sock")
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(address)
    sink.settimeout(5)
    log = AuditLog(db, paths, syslog_address=address)
    log.submit(rec(1))
    log.close()
    message = sink.recv(65536).decode()
    sink.close()
    assert "autoglm-audit checkpoint" in message
    line = paths.checkpoints.read_text().splitlines()[-1]
    assert orjson.loads(message.split("checkpoint ", 1)[1].rstrip("\x00")) == orjson.loads(line)


def test_refusal_floods_are_folded_into_counted_records(db: Database,
                                                       paths: AuditPaths) -> None:
    log = AuditLog(db, paths, fold_s=60)
    written = [log.record_refusal(Record(action="auth", decision="deny", status=401,
                                         client_addr="203.0.113.9", request_id=f"r-{i}"))
               for i in range(1_000)]
    assert written.count(True) == 1 and count(db) == 1  # the first, durable at once
    log.close()
    with db.engine.connect() as conn:
        counts = list(conn.execute(select(AuditRecord.request_id, AuditRecord.count)
                                   .order_by(AuditRecord.seq)))
    assert counts == [("r-0", 1), ("r-1", 999)]  # the rest, counted, at close
    assert verify(db, paths).intact


def test_verify_passes_on_a_chain_being_written(db: Database, paths: AuditPaths) -> None:
    log = AuditLog(db, paths, flush_ms=2, checkpoint_every=200)
    stop = threading.Event()

    def write() -> None:
        i = 0
        while not stop.is_set():
            log.submit(rec(i))
            i += 1
            if i % 20 == 0:  # about 5,000 a second: a busy server, not a benchmark
                time.sleep(0.004)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        time.sleep(0.2)
        reports = [verify(db, paths) for _ in range(5)]
    finally:
        stop.set()
        writer.join()
        log.close()
    assert all(r.intact for r in reports), [r.fault for r in reports]
    assert reports[-1].records > reports[0].records > 0
    assert verify(db, paths).intact


def test_the_keys_never_reach_the_database(db_url: str, db: Database,
                                           paths: AuditPaths) -> None:
    log = AuditLog(db, paths)
    log.append([rec(1)])
    log.close()
    key_hex = paths.hmac_key.read_text().strip()
    with db.engine.connect() as conn:
        dumped = repr(conn.execute(text("SELECT * FROM audit_log")).all()) + repr(
            conn.execute(text("SELECT * FROM audit_head")).all())
    assert key_hex not in dumped
    if db_url.startswith("sqlite"):
        raw = Path(db_url.removeprefix("sqlite:///")).read_bytes()
        assert key_hex.encode() not in raw and bytes.fromhex(key_hex) not in raw


def test_one_large_append_is_stored_whole_and_in_order(db: Database, paths: AuditPaths) -> None:
    """700 records in one transaction: on SQLite several multi-row INSERTs of different
    sizes (512 + 128 + 32 + 16 + 8 + 4); every record once, each at its own seq."""
    log = AuditLog(db, paths)
    seqs = log.append([rec(i) for i in range(700)])
    log.close()
    assert seqs == list(range(1, 701))
    with db.engine.connect() as conn:
        rows = conn.execute(select(AuditRecord.seq, AuditRecord.request_id)
                            .order_by(AuditRecord.seq)).all()
    assert [(s, r) for s, r in rows] == [(i + 1, f"r-{i}") for i in range(700)]
    assert verify(db, paths).intact


def test_under_load_the_pause_between_commits_grows(db: Database, paths: AuditPaths) -> None:
    """After a large batch the writer waits audit_flush_max_ms before the next commit,
    after a small one audit_flush_ms (fewer, larger commits while the gateway is busy)."""
    commits: list[tuple[float, int]] = []
    log = AuditLog(db, paths, flush_ms=10, flush_max_ms=80,
                   on_commit=lambda batch: commits.append((time.monotonic(), len(batch))))
    assert log._gap(5) == 0.010 and log._gap(64) == 0.020  # noqa: SLF001
    assert log._gap(10_000) == 0.080  # noqa: SLF001
    for i in range(500):
        log.submit(rec(i))
    log.flush(timeout_s=30)
    log.submit(rec(500))  # no flush (it commits at once): the writer's own pace
    deadline = time.monotonic() + 10
    while log.pending and time.monotonic() < deadline:
        time.sleep(0.002)
    log.close()
    assert sum(n for _, n in commits) == 501
    assert commits[-2][1] >= 32 and commits[-1][1] == 1
    assert commits[-1][0] - commits[-2][0] >= 0.075
