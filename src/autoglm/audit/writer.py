"""``AuditLog``: the one append point of the audit chain.

Two ways in:

- ``append(records)`` writes now and returns once the records are committed: for admin
  acts and refusals, which must be durable before their response. With ``session=`` the
  records are sealed and inserted inside that SQLAlchemy session's transaction and the
  *caller commits*: an admin change and its record then commit, or roll back, together
  (the chain's head stays locked until then, so keep that transaction short).
- ``submit(record)`` queues and returns at once (a lock and a deque append on the
  caller's thread): for inference records. A background thread commits what is queued
  in one transaction per batch (executemany or COPY), ``flush_ms`` after the first of
  them arrived but no sooner than ``flush_ms`` after its previous commit: under load the
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

from autoglm.audit import chain, rollup
from autoglm.audit.checkpoints import Checkpointer
from autoglm.audit.fold import Folder
from autoglm.audit.keys import AuditPaths, load_hmac_key, load_personal_key, load_signing_key
from autoglm.audit.record import Record, body, normalise
from autoglm.errors import AuditError
from autoglm.privacy.vault import PersonalVault
from autoglm.settings import Settings
from autoglm.store.db import Database

log = logging.getLogger(__name__)
OnCommit = Callable[[list[Record]], None]


class AuditLog:
    def __init__(self, db: Database, paths: AuditPaths, *, flush_ms: int = 10,
                 strict: bool = False, queue_max: int = 100_000, batch_max: int = 10_000,
                 submit_timeout_s: float = 10.0, checkpoint_every: int = 10_000,
                 checkpoint_s: float = 60.0, syslog_address: str | None = None,
                 fold_s: float = 1.0, close_timeout_s: float = 30.0,
                 on_commit: OnCommit | None = None) -> None:
        self._db = db
        self._key = load_hmac_key(paths.hmac_key, create=True)
        # personal fields are sealed per data subject before the chain seals the record
        self.vault = PersonalVault(db, load_personal_key(paths.personal_key, create=True))
        self._checkpoints = Checkpointer(paths, load_signing_key(paths), every=checkpoint_every,
                                         interval_s=checkpoint_s, syslog_address=syslog_address)
        self.folder = Folder(fold_s)
        self.strict = strict
        self._flush_s = flush_ms / 1000
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
        self._closing = False
        self._closing_at = 0.0
        self._failure: str | None = None  # why records were given up (only while closing)
        self._thread = threading.Thread(target=self._run, name="autoglm-audit", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    @classmethod
    def from_settings(cls, settings: Settings, db: Database, **overrides: Any) -> AuditLog:
        kw: dict[str, Any] = {
            "flush_ms": settings.audit_flush_ms, "strict": settings.audit_strict,
            "queue_max": settings.audit_queue_max,
            "submit_timeout_s": settings.audit_submit_timeout_s,
            "checkpoint_every": settings.audit_checkpoint_every,
            "checkpoint_s": settings.audit_checkpoint_s,
            "syslog_address": "/dev/log" if settings.audit_syslog else None,
            "fold_s": settings.audit_fold_s}
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
                chain.append_in_session(session, self._key, prepared)
            else:
                self._commit(prepared)
        except chain.DB_ERRORS as exc:
            raise AuditError(f"the audit record could not be written: {_reason(exc)}") from None
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
                while not self._queue and not self._closing:
                    if not self._work.wait(max(0.0, next_tick - time.monotonic())):
                        break
                if self._queue and not (self.strict or self._closing):
                    # flush_ms after the first record came, and no sooner than flush_ms
                    # after the last commit: under load batches grow instead of running
                    # back to back, so other processes (and SQLite's polling lock
                    # waiters) get the database in between
                    deadline = max(self._first_at, self._last_end) + self._flush_s
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
            self._checkpoints.close()

    def _housekeeping(self, *, final: bool) -> None:
        counts = self.folder.drain() if final else self.folder.due()
        if counts:
            self._write(counts, submitted=False)
        if final or self._checkpoints.stale():
            try:
                with self._db.engine.connect() as conn:
                    seq, hash_hex = chain.read_head(conn)
            except chain.DB_ERRORS as exc:  # a checkpoint can wait for the next round
                log.warning("audit checkpoint skipped: %s", _reason(exc))
                return
            if self._checkpoints.due(seq, force=final):
                self._checkpoints.write(seq, hash_hex)

    def _write(self, batch: list[Record], *, submitted: bool = True) -> None:
        prepared = self._prepare(batch)
        last_hash = self._retry(prepared)
        if last_hash is None:  # given up while closing
            return
        for rec, (row, _) in zip(batch, prepared, strict=True):
            rec.seq, rec.hash = row["seq"], row["hash"]
        if submitted:
            with self._lock:
                self._done += len(batch)
                self._progress.notify_all()
        if self._on_commit is not None:
            try:
                self._on_commit(batch)
            except Exception:
                log.exception("audit on_commit callback failed")
        seq = prepared[-1][0]["seq"]
        if self._checkpoints.due(seq):
            self._checkpoints.write(seq, last_hash)

    def _prepare(self, batch: list[Record]) -> list[chain.Prepared]:
        """Normalise, seal the personal fields, and compute the canonical bodies. A record
        that cannot be stored becomes one that says so; keys the vault cannot reach yet
        (the database is down) are waited for as a commit would be."""
        rows = [_normalised(rec) for rec in batch]
        delay = 0.05
        while True:
            try:
                self.vault.seal(rows, [rec.text for rec in batch])
                break
            except chain.DB_ERRORS as exc:
                if self._closing and time.monotonic() - self._closing_at > self._close_timeout_s:
                    for row in rows:  # sealed under no key is no record: keep them out
                        row["client_addr"] = row["purpose"] = None
                        row["personal"] = None
                        row["detail"] = {**row["detail"], "audit_error": "personal fields "
                                         "dropped: no subject key could be made"}
                    break
                log.error("audit subject keys not reachable yet (retrying in %.2f s): %s",
                          delay, _reason(exc))
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        return [(row, body(row)) for row in rows]

    def _retry(self, prepared: list[chain.Prepared]) -> str | None:
        delay = 0.05
        attempted: tuple[int, str] | None = None
        while self._failure is None:
            try:
                return self._commit(prepared, attempted)
            except Exception as exc:  # noqa: BLE001 - whatever failed, the records stay
                last = prepared[-1][0]
                if "hash" in last:
                    attempted = (last["seq"], last["hash"])
                log.error("audit records not committed yet (%d; retrying in %.2f s): %s",
                          len(prepared), delay, _reason(exc))
            if self._closing and time.monotonic() - self._closing_at > self._close_timeout_s:
                with self._lock:
                    self._failure = (f"{self.pending} audit record(s) could not be committed "
                                     f"before shutdown: the database stayed unreachable")
                    self._progress.notify_all()
                log.error("%s", self._failure)
                return None
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        return None  # given up already: shut down without waiting again

    def _commit(self, prepared: list[chain.Prepared],
                attempted: tuple[int, str] | None = None) -> str:
        """One transaction: lock the head, seal, insert, count the usage (``rollup``), move
        the head; the last hash.
        ``attempted``: the last (seq, hash) of an earlier try whose commit may have gone
        through unanswered; if the database holds it, that try did commit."""
        usage = rollup.aggregate(row for row, _ in prepared)  # summed before the lock
        with chain.locked(self._db.engine) as tx:  # on the driver: see ``chain``
            if attempted is not None and tx.holds(*attempted):
                return attempted[1]  # (rolled back as the connection goes back)
            last = chain.seal_rows(self._key, tx.seq, tx.prev, prepared)
            tx.insert([row for row, _ in prepared])
            tx.upsert(usage)  # the usage table commits with its records
            tx.move_head(tx.seq + len(prepared), last)
            tx.commit()
        return last.hex()


def _normalised(rec: Record) -> dict[str, Any]:
    try:
        return normalise(rec)
    except Exception as exc:  # noqa: BLE001 - keep the event, say what was not stored
        why = exc.message if isinstance(exc, AuditError) else type(exc).__name__
        return normalise(Record(
            action=str(rec.action)[:64] or "unknown", decision=rec.decision, status=None,
            actor=_str(rec.actor), tenant_id=_str(rec.tenant_id),
            request_id=_str(rec.request_id), detail={"audit_error": why[:500]}))


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return " ".join(str(orig if orig is not None else exc).split())[:300]
