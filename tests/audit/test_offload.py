"""The writer with ``seal_process``: queued records sealed and committed by a child
process. Nothing is lost or written twice when the child dies (killed between batches,
in the middle of one, or again and again), the database's trouble is retried there,
shutdown still gives up on a database that stays away, and an erasure in the gateway
reaches the child's cached keys at once."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from sqlalchemy import select

from autoglm.audit import AuditLog, AuditPaths, verify
from autoglm.audit.commit import ChainCommitter
from autoglm.audit.offload import MAX_DEATHS
from autoglm.errors import AuditError
from autoglm.store.db import Database
from autoglm.store.models import AuditRecord
from tests.audit.test_writer import (count, head_locked, rec, request_ids,
                                     submit_killing_connections)


def sealer_pid(log: AuditLog, other_than: int | None = None, timeout_s: float = 20) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pid = log._sealer.pid if log._sealer is not None else None  # noqa: SLF001
        if pid is not None and pid != other_than:
            return pid
        time.sleep(0.01)
    raise AssertionError("no sealing process started")


def test_records_are_sealed_by_a_child_process(db: Database, paths: AuditPaths) -> None:
    log = AuditLog(db, paths, flush_ms=5, checkpoint_every=500, seal_process=True)
    records = [rec(i, actor="u1", client_addr="10.0.0.1") for i in range(1_200)]
    for r in records:
        log.submit(r)
    log.flush(timeout_s=30)
    pid = sealer_pid(log)
    assert pid != os.getpid()
    assert [r.seq for r in records] == list(range(1, 1_201))  # acknowledged, in order
    with db.engine.connect() as conn:
        stored = {seq: h for seq, h in conn.execute(select(AuditRecord.seq, AuditRecord.hash))}
    assert all(stored[r.seq] == r.hash for r in records)
    log.close()
    assert not log._sealer.pid  # noqa: SLF001 - the child is gone with the log
    report = verify(db, paths)
    assert report.intact and report.records == 1_200
    # the personal fields were sealed by the child under the subject's key, and open here
    with db.engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(select(AuditRecord).limit(3))]
    assert all(r["client_addr"] is None and r["personal"].startswith("pd1.") for r in rows)
    log.vault.open_rows(rows)
    assert {r["client_addr"] for r in rows} == {"10.0.0.1"}


def test_a_child_killed_mid_batch_loses_and_doubles_nothing(db_url: str, db: Database,
                                                            paths: AuditPaths) -> None:
    log = AuditLog(db, paths, flush_ms=1, seal_process=True)
    log.submit(rec(0))
    log.flush(timeout_s=30)
    first = sealer_pid(log)
    with head_locked(db_url):  # the child is inside its batch, waiting for the lock
        for i in range(1, 200):
            log.submit(rec(i))
        time.sleep(0.3)
        os.kill(first, signal.SIGKILL)
        second = sealer_pid(log, other_than=first)
        time.sleep(0.2)
        assert log.pending == 199
    log.flush(timeout_s=30)
    assert sealer_pid(log) == second
    for i in range(200, 300):  # killed between batches: the next batch starts another
        log.submit(rec(i))
    os.kill(second, signal.SIGKILL)
    log.close()
    assert count(db) == 300 and request_ids(db) == {f"r-{i}" for i in range(300)}
    assert verify(db, paths).intact


def test_children_that_keep_dying_leave_the_work_to_the_thread(db_url: str, db: Database,
                                                               paths: AuditPaths) -> None:
    log = AuditLog(db, paths, flush_ms=1, seal_process=True)
    with head_locked(db_url):
        for i in range(50):
            log.submit(rec(i))
        pid = None
        for _ in range(MAX_DEATHS):
            pid = sealer_pid(log, other_than=pid)
            time.sleep(0.2)
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not log._sealer.in_thread and time.monotonic() < deadline:  # noqa: SLF001
            time.sleep(0.01)
        assert log._sealer.in_thread  # noqa: SLF001
    log.flush(timeout_s=30)
    for i in range(50, 80):
        log.submit(rec(i))
    log.close()
    assert count(db) == 80 and len(request_ids(db)) == 80
    assert verify(db, paths).intact


def test_a_try_that_committed_unanswered_is_not_written_again(db: Database,
                                                              paths: AuditPaths) -> None:
    """What the gateway does when its child died between committing and answering: the
    batch goes again with the try the child left in the shared slot (first seq, last seq,
    last hash), and the answer is the stored pairs."""
    log = AuditLog(db, paths)
    committer: ChainCommitter = log._chain  # noqa: SLF001
    said: list = []
    batch = [rec(i) for i in range(5)]
    sealed = committer.write(batch, on_attempt=said.append)
    assert sealed is not None and said[-1] == (1, 5, sealed[1][-1]) and sealed[0] == 1
    again = [rec(i) for i in range(5)]
    assert committer.write(again, attempted=said[-1]) == sealed
    assert count(db) == 5
    # a try that never committed: the batch is written (after what is there)
    other = committer.write([rec(9)], attempted=(6, 6, "00" * 32))
    assert other is not None and other[0] == 6 and count(db) == 6
    log.close()
    assert verify(db, paths).intact


def test_a_child_that_died_after_committing_is_answered_from_the_database(
        db: Database, paths: AuditPaths) -> None:
    """The child left its try in the shared slot, committed, and died before answering:
    the gateway gives the batch to a new child with that try, which finds it stored and
    answers with the stored hashes instead of writing the batch again."""
    from autoglm.audit.keys import load_hmac_key, load_personal_key
    from autoglm.audit.offload import SealingProcess
    from autoglm.privacy.vault import PersonalVault

    key = load_hmac_key(paths.hmac_key, create=True)
    master = load_personal_key(paths.personal_key, create=True)
    committer = ChainCommitter(db, key, PersonalVault(db, master), close_timeout_s=5,
                               closing_at=lambda: 0.0)
    sealer = SealingProcess(db.url, key, master, close_timeout_s=5, fallback=committer,
                            erasures=lambda: 0)
    tries: list = []
    sealed = committer.write([rec(i) for i in range(5)], on_attempt=tries.append)
    assert sealed is not None
    sealer.warm()
    pid = sealer.pid
    assert pid is not None
    slot = sealer._slot  # noqa: SLF001 - what the dead child had written there
    slot.batch, slot.first, slot.last = sealer._batches + 1, tries[-1][0], tries[-1][1]  # noqa: SLF001
    slot.hash = tries[-1][2].encode()
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while sealer._proc.is_alive() and time.monotonic() < deadline:  # noqa: SLF001
        time.sleep(0.01)
    assert sealer.write([rec(i) for i in range(5)]) == sealed
    assert sealer.pid not in (None, pid) and count(db) == 5
    # a slot left by an earlier batch is not taken for this one's try
    assert sealer.write([rec(9)])[0] == 6 and count(db) == 6
    sealer.close()
    assert verify(db, paths).intact


def test_lost_connections_in_the_child_are_retried(paths: AuditPaths) -> None:
    from tests.conftest import pg_database

    with pg_database() as url:
        db = Database(url)
        db.upgrade()
        log = AuditLog(db, paths, flush_ms=2, seal_process=True)
        assert submit_killing_connections(log, url, 2_000)  # the child's connections
        assert count(db) == 2_000 and len(request_ids(db)) == 2_000
        assert verify(db, paths).intact
        db.close()


def test_close_gives_up_on_a_database_that_stays_away(paths: AuditPaths) -> None:
    db = Database("postgresql+psycopg://postgres@127.0.0.1:9/none")  # nothing listens
    log = AuditLog(db, paths, close_timeout_s=0.5, seal_process=True)
    log.submit(rec(1))
    log.submit(rec(2))
    t0 = time.monotonic()
    with pytest.raises(AuditError, match="2 audit record"):
        log.close()
    assert time.monotonic() - t0 < 15
    db.close()


def test_an_erasure_reaches_the_childs_cached_keys(db: Database, paths: AuditPaths) -> None:
    """The child caches subject keys for seconds; a record sealed right after an erasure
    must not be sealed under the destroyed key (it would be unreadable from the start)."""
    log = AuditLog(db, paths, flush_ms=1, seal_process=True)
    log.submit(rec(1, actor="u1", client_addr="10.0.0.1"))
    log.flush(timeout_s=30)  # the child holds u1's key now
    with db.session() as s:
        assert log.vault.erase(["u1"], s) == 1
        s.commit()
    log.submit(rec(2, actor="u1", client_addr="10.0.0.2"))
    log.flush(timeout_s=30)
    with db.engine.connect() as conn:
        rows = [dict(r._mapping) for r in
                conn.execute(select(AuditRecord).order_by(AuditRecord.seq))]
    log.vault.open_rows(rows)
    assert [r["client_addr"] for r in rows] == [None, "10.0.0.2"]
    log.close()


def test_records_keep_coming_while_the_child_restarts(db: Database, paths: AuditPaths) -> None:
    log = AuditLog(db, paths, flush_ms=2, seal_process=True)
    stop = threading.Event()
    sent = 0

    def write() -> None:
        nonlocal sent
        while not stop.is_set():
            log.submit(rec(sent))
            sent += 1
            if sent % 20 == 0:
                time.sleep(0.004)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        pid = None
        for _ in range(2):
            pid = sealer_pid(log, other_than=pid)
            time.sleep(0.3)
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.3)
    finally:
        stop.set()
        writer.join()
        log.close()
    assert not log._sealer.in_thread  # noqa: SLF001 - two deaths, each followed by a batch
    assert count(db) == sent and len(request_ids(db)) == sent
    assert verify(db, paths).intact


def test_warm_starts_the_child_before_any_record(db: Database, paths: AuditPaths) -> None:
    """A server warms its log as it starts: the first request's record then waits for no
    process start (about a second on a small machine)."""
    log = AuditLog(db, paths, seal_process=True)
    assert log._sealer.pid is None  # noqa: SLF001 - nothing started by making the log
    log.warm()
    pid = sealer_pid(log)
    log.submit(rec(1))
    log.flush(timeout_s=30)
    assert log._sealer.pid == pid and count(db) == 1  # noqa: SLF001
    log.close()
    thread_log = AuditLog(db, paths)
    thread_log.warm()  # without a sealing process: nothing to start
    thread_log.close()
