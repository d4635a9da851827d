"""``ChainCommitter``: one batch of records normalised, sealed and committed, retrying.

What the writer (``writer.AuditLog``) does with each group of queued records, in whatever
process does it (its own thread, or the sealing process of ``offload``): normalise each
record (one that cannot be stored becomes one that says so), seal its personal fields
under the data subject's key (``privacy.vault``), compute the canonical bodies, then one
transaction that locks the head, gives the records their seq and HMAC, inserts them, adds
their usage (``rollup``) and moves the head. If the database fails the batch is retried
with backoff until it commits; a commit whose answer was lost is recognised (its last
record is stored with its hash) and not written twice. Only while the log is closing, and
``close_timeout_s`` after it began, is a batch given up (``write`` returns None).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from autoglm.audit import chain, rollup
from autoglm.audit.record import Record, body, normalise
from autoglm.errors import AuditError
from autoglm.privacy.vault import PersonalVault
from autoglm.store.db import Database

log = logging.getLogger(__name__)
Sealed = tuple[int, list[str]]  # a committed batch: its first seq, each record's hash
Attempt = tuple[int, int, str]  # one try of a batch: its first seq, last seq and last hash
OnAttempt = Callable[[Attempt], None]


class ChainCommitter:
    """``closing_at``: when the log began to close (``time.monotonic``), 0 while open."""

    def __init__(self, db: Database, key: bytes, vault: PersonalVault, *,
                 close_timeout_s: float, closing_at: Callable[[], float]) -> None:
        self.db = db
        self.key = key
        self.vault = vault
        self._close_timeout_s = close_timeout_s
        self._closing_at = closing_at
        self.given_up = False  # a batch was given up while closing: so is every later one

    def write(self, batch: list[Record], attempted: Attempt | None = None,
              on_attempt: OnAttempt | None = None) -> Sealed | None:
        """Commit ``batch``; its first seq and each record's hash, or None if given up while
        closing.
        ``attempted``: an earlier try of this batch that may have committed unanswered (by
        a process that died since): if the database holds its last record, that try did
        commit and its stored hashes are the answer. ``on_attempt`` is told each try just
        before its commit."""
        prepared = self.prepare(batch)
        delay = 0.05
        while not self.given_up:
            try:
                earlier = self.commit(prepared, attempted, on_attempt)
                return earlier if earlier is not None else _sealed(prepared)
            except Exception as exc:  # noqa: BLE001 - whatever failed, the records stay
                if "hash" in prepared[-1][0]:
                    attempted = _attempt(prepared)
                log.error("audit records not committed yet (%d; retrying in %.2f s): %s",
                          len(prepared), delay, reason(exc))
            if self._past_close():
                self.given_up = True
                return None
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        return None

    def prepare(self, batch: list[Record]) -> list[chain.Prepared]:
        """Normalise, seal the personal fields, and compute the canonical bodies. Keys the
        vault cannot reach yet (the database is down) are waited for as a commit would be."""
        rows = [_normalised(rec) for rec in batch]
        delay = 0.05
        while True:
            try:
                self.vault.seal(rows, [rec.text for rec in batch])
                break
            except chain.DB_ERRORS as exc:
                if self._past_close():
                    for row in rows:  # sealed under no key is no record: keep them out
                        row["client_addr"] = row["purpose"] = None
                        row["personal"] = None
                        row["detail"] = {**row["detail"], "audit_error": "personal fields "
                                         "dropped: no subject key could be made"}
                    break
                log.error("audit subject keys not reachable yet (retrying in %.2f s): %s",
                          delay, reason(exc))
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        return [(row, body(row)) for row in rows]

    def commit(self, prepared: list[chain.Prepared], attempted: Attempt | None = None,
               on_attempt: OnAttempt | None = None) -> Sealed | None:
        """One transaction: lock the head, seal, insert, count the usage (``rollup``), move
        the head. None once committed; if the database holds the last record of
        ``attempted`` (an earlier try), that try did commit, unanswered: nothing is written
        and what it stored is returned."""
        usage = rollup.aggregate(row for row, _ in prepared)  # summed before the lock
        with chain.locked(self.db.engine) as tx:  # on the driver: see ``chain``
            if attempted is not None and tx.holds(attempted[1], attempted[2]):
                return attempted[0], tx.hashes(attempted[0], attempted[1])  # (rolled back)
            last = chain.seal_rows(self.key, tx.seq, tx.prev, prepared)
            tx.insert([row for row, _ in prepared])
            tx.upsert(usage)  # the usage table commits with its records
            tx.move_head(tx.seq + len(prepared), last)
            if on_attempt is not None:
                on_attempt(_attempt(prepared))
            tx.commit()
        return None

    def _past_close(self) -> bool:
        at = self._closing_at()
        return at > 0 and time.monotonic() - at > self._close_timeout_s


def _sealed(prepared: list[chain.Prepared]) -> Sealed:
    return prepared[0][0]["seq"], [row["hash"] for row, _ in prepared]


def _attempt(prepared: list[chain.Prepared]) -> Attempt:
    first, last = prepared[0][0], prepared[-1][0]
    return first["seq"], last["seq"], last["hash"]


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


def reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return " ".join(str(orig if orig is not None else exc).split())[:300]
