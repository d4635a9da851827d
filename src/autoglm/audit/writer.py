"""``AuditLog``: the one append point of the audit chain.

Two ways in:

- ``append(records)`` writes now and returns once the records are committed: for admin
  acts and refusals, which must be durable before their response. With ``session=`` the
  records are sealed and inserted inside that SQLAlchemy session's transaction and the
  *caller commits*: an admin change and its record then commit, or roll back, together
  (the chain's head stays locked until then, so keep that transaction short).
- ``submit(record)`` queues and returns at once (a lock and a deque append on the
  caller's thread): for inference records. A background thread commits what is queued
  in one transaction per batch (``commit``; with ``seal_process``, through a child
  process that seals and commits it: ``offload``), ``flush_ms`` after the first of them
  arrived but no sooner than ``flush_ms`` after its previous commit: under load the
  batches grow instead of running back to back, which leaves the database to others in
  between (SQLite's lock waiters poll). The queue is bounded: when it is full,
  ``submit`` waits for room (``submit_timeout_s``, then ``AuditError``) and never drops
  a record. ``strict`` makes ``submit`` wait until its record is committed (and the
  writer then commits without waiting).

``flush()`` waits for everything submitted so far; ``close()`` (also run at interpreter
exit) writes the folded counts, commits all, writes a last checkpoint and stops the
thread. A record is *acknowledged* once committed: ``on_commit`` is called with each
committed batch, and each record's ``seq`` and ``hash`` are set. If the database fails,
the batch is retried with backoff until it commits; a commit whose answer was lost is
recognised (its last record is stored with its hash) and not written twice.

Every commit, ``append`` or batch, also adds its inference records to the usage table
(``rollup``) inside the same transaction, so usage and chain commit together.

Checkpoints are written by the writer thread: after its commits when due, and every
``checkpoint_s`` for a head moved by others (``append``, other processes). Make the log
in the process that uses it (after any fork): its thread does not survive a fork. Any
number of processes may append to one database: see ``chain``.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy.orm import Session

from autoglm.audit import chain
from autoglm.audit.checkpoints import Checkpointer
from autoglm.audit.commit import ChainCommitter, reason
from autoglm.audit.fold import Folder
from autoglm.audit.keys import AuditPaths, load_hmac_key, load_personal_key, load_signing_key
from autoglm.audit.offload import SealingProcess
from autoglm.audit.record import Record, body, normalise
from autoglm.errors import AuditError
from autoglm.privacy.vault import PersonalVault
from autoglm.settings import Settings
from autoglm.store.db import Database

log = logging.getLogger(__name__)
OnCommit = Callable[[list[Record]], None]


class AuditLog:
    def __init__(self, db: Database, paths: AuditPaths, *, flush_ms: int = 10,
                 flush_max_ms: int = 50, strict: bool = False, queue_max: int = 100_000,
                 batch_max: int = 10_000,
                 submit_timeout_s: float = 10.0, checkpoint_every: int = 10_000,
                 checkpoint_s: float = 60.0, syslog_address: str | None = None,
                 fold_s: float = 1.0, close_timeout_s: float = 30.0,
                 on_commit: OnCommit | None = None, seal_process: bool = False,
                 log_level: str | None = None) -> None:
        self._db = db
        key = load_hmac_key(paths.hmac_key, create=True)
        master = load_personal_key(paths.personal_key, create=True)
        # personal fields are sealed per data subject before the chain seals the record
        self.vault = PersonalVault(db, master)
        self._chain = ChainCommitter(db, key, self.vault, close_timeout_s=close_timeout_s,
                                     closing_at=lambda: self._closing_at)
        # queued records are sealed and committed by a child process (``offload``), or
        # by the writer thread itself
        self._sealer = (SealingProcess(db.url, key, master, close_timeout_s=close_timeout_s,
                                       fallback=self._chain,
                                       erasures=lambda: self.vault.erasures,
                                       log_level=log_level) if seal_process else None)
        self._sink: ChainCommitter | SealingProcess = self._sealer or self._chain
        self._checkpoints = Checkpointer(paths, load_signing_key(paths), every=checkpoint_every,
                                         interval_s=checkpoint_s, syslog_address=syslog_address)
        self.folder = Folder(fold_s)
        self.strict = strict
        self._flush_s = flush_ms / 1000
        self._flush_max_s = max(flush_ms, flush_max_ms) / 1000
        self._gap_s = self._flush_s  # the pause after the last commit (grows under load)
        self._queue_max = queue_max
        self._batch_max = batch_max
        self._submit_timeout_s = submit_timeout_s
        self._close_timeout_s = close_timeout_s
        self._on_commit = on_commit
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # the writer waits on it
        self._progress = threading.Condition(self._lock)  # submitters and flushers wait on it
        self._queue: deque[Record] = deque()
        self._first_at = 0.0  # when the queue last went from empty to not
        self._last_end = 0.0  # when the writer's last transaction ended
        self._submitted = 0
        self._done = 0
        self._flush_now = False
        self._warm = False  # the writer thread is to start the sealing process now
        self._closing = False
        self._closing_at = 0.0
        self._failure: str | None = None  # why records were given up (only while closing)
        self._thread = threading.Thread(target=self._run, name="autoglm-audit", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    @classmethod
    def from_settings(cls, settings: Settings, db: Database, **overrides: Any) -> AuditLog:
        kw: dict[str, Any] = {
            "flush_ms": settings.audit_flush_ms,
            "flush_max_ms": settings.audit_flush_max_ms, "strict": settings.audit_strict,
            "queue_max": settings.audit_queue_max,
            "submit_timeout_s": settings.audit_submit_timeout_s,
            "checkpoint_every": settings.audit_checkpoint_every,
            "checkpoint_s": settings.audit_checkpoint_s,
            "syslog_address": "/dev/log" if settings.audit_syslog else None,
            "fold_s": settings.audit_fold_s,
            "seal_process": settings.audit_seal_process, "log_level": settings.log_level}
        kw.update(overrides)
        return cls(db, AuditPaths.under(settings.data_dir), **kw)

    # --- durable now --------------------------------------------------------------------
    def append(self, records: Iterable[Record], session: Session | None = None) -> list[int]:
        """Seal and store ``records`` now; their sequence numbers. Without ``session`` they
        are committed when this returns. With one, they are part of its transaction and
        committed by the caller's ``session.commit()`` (or gone with its rollback)."""
        records = list(records)
        if not records:
            return []
        try:
            rows = [normalise(rec) for rec in records]
            self.vault.seal(rows, [rec.text for rec in records], session)
            prepared = [(row, body(row)) for row in rows]
            if session is not None:
                chain.append_in_session(session, self._chain.key, prepared)
            else:
                self._chain.commit(prepared)
        except chain.DB_ERRORS as exc:
            raise AuditError(f"the audit record could not be written: {reason(exc)}") from None
        for rec, (row, _) in zip(records, prepared, strict=True):
            rec.seq, rec.hash = row["seq"], row["hash"]
        return [rec.seq for rec in records]  # type: ignore[misc]

    def record_refusal(self, rec: Record, *, durable: bool = True) -> bool:
        """A refusal through the ``Folder``: written now (``append``, or ``submit`` when not
        ``durable``) unless it is folded into a later count record; True if written."""
        out = self.folder.offer(rec)
        if out is None:
            return False
        if durable:
            self.append([out])
        else:
            self.submit(out)
        return True

    # --- queued ---------------------------------------------------------------------------
    def submit(self, rec: Record) -> None:
        """Queue ``rec`` for the next group commit (see the module docstring)."""
        with self._lock:
            if self._closing:
                raise AuditError("the audit log is closed: the server is shutting down")
            if self._submitted - self._done >= self._queue_max:
                self._wait_for_room()
            if not self._queue:
                self._first_at = time.monotonic()
                self._work.notify()
            self._queue.append(rec)
            self._submitted += 1
            if len(self._queue) == self._batch_max:
                self._work.notify()
            if self.strict:
                self._wait_done(self._submitted, self._submit_timeout_s, "its commit")

    def warm(self) -> None:
        """Start the sealing process (``seal_process``) now, in the writer thread, rather
        than with the first queued record (a server calls this as it starts)."""
        if self._sealer is None:
            return
        with self._lock:
            self._warm = True
            self._work.notify()

    def flush(self, timeout_s: float | None = None) -> None:
        """Return once every record submitted before the call is committed."""
        with self._lock:
            self._flush_now = True
            self._work.notify()
            self._wait_done(self._submitted, timeout_s, "the flush")

    def close(self) -> None:
        """Commit everything (folded counts too), write a last checkpoint, stop. Raises
        ``AuditError`` if the database stayed unreachable for ``close_timeout_s``."""
        with self._lock:
            already = self._closing
            if not already:
                self._closing_at = time.monotonic()
                if self._sealer is not None:  # the child gives up on the same clock
                    self._sealer.closing.value = self._closing_at
            self._closing = True
            self._work.notify()
        if not already:
            atexit.unregister(self.close)
        self._thread.join()
        if self._failure is not None:
            raise AuditError(self._failure)

    @property
    def db(self) -> Database:
        return self._db

    @property
    def pending(self) -> int:
        """Records submitted but not yet committed."""
        return self._submitted - self._done

    def _wait_for_room(self) -> None:
        deadline = time.monotonic() + self._submit_timeout_s
        while self._submitted - self._done >= self._queue_max:
            left = deadline - time.monotonic()
            if left <= 0 or self._closing:
                raise AuditError(f"the audit queue has held {self._queue_max} records for "
                                 f"{self._submit_timeout_s:g} s: the database is not keeping "
                                 "up or not reachable; the request is refused unrecorded")
            self._progress.wait(left)

    def _wait_done(self, target: int, timeout_s: float | None, what: str) -> None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self._done < target:
            if self._failure is not None:
                raise AuditError(self._failure)
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise AuditError(f"the audit record was not committed within {timeout_s:g} s "
                                 f"(waiting for {what}): the database is slow or unreachable")
            self._progress.wait(left)

    # --- the writer thread ------------------------------------------------------------------
    def _run(self) -> None:
        tick = min(self._checkpoints.interval_s, self.folder.interval_s, 1.0) / 4
        next_tick = time.monotonic() + tick
        while True:
            with self._lock:
                while not self._queue and not self._closing and not self._warm:
                    if not self._work.wait(max(0.0, next_tick - time.monotonic())):
                        break
                warm, self._warm = self._warm, False
            if warm and self._sealer is not None:
                self._sealer.warm()
            with self._lock:
                if self._queue and not (self.strict or self._closing):
                    # flush_ms after the first record came, and no sooner than the gap
                    # after the last commit (flush_ms, more after a large batch: see
                    # ``_gap``): under load batches grow instead of running back to back,
                    # so other processes (and SQLite's polling lock waiters) get the
                    # database in between, and the commits cost less of the machine
                    deadline = max(self._first_at + self._flush_s,
                                   self._last_end + self._gap_s)
                    while (not self._flush_now and not self._closing
                           and len(self._queue) < self._batch_max):
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._work.wait(left)
                batch, self._queue = self._queue, deque()
                self._flush_now = False
                closing = self._closing
            try:
                items = list(batch)
                for start in range(0, len(items), self._batch_max):
                    self._write(items[start:start + self._batch_max])
                if batch:
                    self._last_end = time.monotonic()
                    self._gap_s = self._gap(len(batch))
                if closing and not batch:
                    break
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + tick
                    self._housekeeping(final=False)
            except Exception:  # the writer thread must outlive any surprise
                log.exception("audit writer error")
        try:
            self._housekeeping(final=True)
        finally:
            if self._sealer is not None:
                self._sealer.close()
            self._checkpoints.close()

    def _gap(self, batch: int) -> float:
        """The pause before the next commit after one of ``batch`` records: flush_ms per
        32 records (at least flush_ms, at most flush_max_ms). Measured on 2 cores
        (``bench/gateway.py``, 16 connections): pauses of 50 ms instead of 10 gave the
        gateway ~7% more requests per second, the commits being that much fewer."""
        return min(self._flush_max_s, max(self._flush_s, self._flush_s * batch / 32))

    def _housekeeping(self, *, final: bool) -> None:
        counts = self.folder.drain() if final else self.folder.due()
        if counts:
            self._write(counts, submitted=False)
        if final or self._checkpoints.stale():
            try:
                with self._db.engine.connect() as conn:
                    seq, hash_hex = chain.read_head(conn)
            except chain.DB_ERRORS as exc:  # a checkpoint can wait for the next round
                log.warning("audit checkpoint skipped: %s", reason(exc))
                return
            if self._checkpoints.due(seq, force=final):
                self._checkpoints.write(seq, hash_hex)

    def _write(self, batch: list[Record], *, submitted: bool = True) -> None:
        if self._failure is not None:  # given up while closing: so is every later batch
            return
        sealed = self._sink.write(batch)
        if sealed is None:  # given up while closing
            with self._lock:
                self._failure = (f"{self.pending} audit record(s) could not be committed "
                                 f"before shutdown: the database stayed unreachable")
                self._progress.notify_all()
            log.error("%s", self._failure)
            return
        first, hashes = sealed
        _stamp(batch, first, hashes)
        if submitted:
            with self._lock:
                self._done += len(batch)
                self._progress.notify_all()
        if self._on_commit is not None:
            try:
                self._on_commit(batch)
            except Exception:
                log.exception("audit on_commit callback failed")
        seq = first + len(batch) - 1
        if self._checkpoints.due(seq):
            self._checkpoints.write(seq, hashes[-1])


def _stamp(batch: list[Record], first: int, hashes: list[str]) -> None:
    """Each committed record's seq and hash."""
    for i, (rec, hash_hex) in enumerate(zip(batch, hashes, strict=True)):
        rec.seq, rec.hash = first + i, hash_hex
