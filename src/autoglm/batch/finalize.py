"""A batch that is done (every line has a result), cancelled or expired, into its output
and error files and its final status.

Any worker may finalize any batch, once: it takes the batch with a conditional update
that also sets a lease (``finalize_until``); a finalizer that dies is taken over when
the lease ends. The finalizer renews its lease while it writes (every third of a lease,
and once more before each file is put in place and before the final commit), each
renewal conditional on the lease still being the one it set (the lease's end is the
holder's token): a finalizer that stalled past its lease and was taken over notices at its
next renewal and stops, without touching the files or the batch, so a batch is finalized
by exactly one. The file ids are fixed in the taking update (kept on the batch row, shown
only once the batch is final), so a takeover writes the same files again instead of
leaving others behind. The files are written whole (``FileStore.write``), then their rows
and the final status are committed together: a batch is final exactly when its files
exist. With the batch's ``output_expires_after`` both files expire that many seconds
after they are made.

Output file: the lines that answered 2xx; error file: the others and, for an expired
batch, one ``batch_expired`` line per line that never ran. Both in line order; a file
with no line is not made (its id stays null), as OpenAI does.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select, update

from autoglm.batch import ids
from autoglm.batch.batches import TERMINAL, LineResult, output_line
from autoglm.batch.files import FileStore
from autoglm.store.db import Database
from autoglm.store.models import Batch, BatchLine, StoredFile, utcnow

log = logging.getLogger("autoglm.batch")

READ_ROWS = 1000
EXPIRED = ("batch_expired",
           "This line was not run before the batch's completion window ended.")


class LeaseLost(Exception):
    """Another finalizer took the batch over: this one stops and leaves everything to it."""


class _Lease:
    """A finalizer's hold on one batch: renewed while it works, checked before each step
    that others would see."""

    def __init__(self, finalizer: Finalizer, batch_id: str, until: float) -> None:
        self.finalizer = finalizer
        self.batch_id = batch_id
        self.until = until
        self.renewed = finalizer.clock()

    def keep(self) -> None:
        """Renew if a third of the lease went by since the last renewal."""
        if self.finalizer.clock() - self.renewed >= self.finalizer.lease_s / 3:
            self.renew()

    def renew(self) -> None:
        f = self.finalizer
        now = f.clock()
        with f.db.session() as s, s.begin():
            kept = s.execute(update(Batch).where(Batch.id == self.batch_id,
                                                 Batch.finalize_until == self.until,
                                                 Batch.status.not_in(TERMINAL))
                             .values(finalize_until=now + f.lease_s))
            if kept.rowcount != 1:  # type: ignore[attr-defined]
                raise LeaseLost(self.batch_id)
        self.until, self.renewed = now + f.lease_s, now


class Finalizer:
    def __init__(self, db: Database, files: FileStore, lease_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.files = files
        self.lease_s = lease_s
        self.clock = clock

    def finalize(self, batch_id: str, tag: str = "") -> str | None:
        """Finalize the batch if it is due and nobody else is: its final status, or None."""
        if not self._due(batch_id):
            return None
        lease = self._take(batch_id)
        if lease is None:
            return None
        try:
            return self._finish(batch_id, lease, tag)
        except LeaseLost:
            log.warning("a batch's finalizer lost its lease; another one finishes the batch",
                        extra={"batch": batch_id})
            return None

    def _finish(self, batch_id: str, lease: _Lease, tag: str) -> str | None:
        with self.db.session() as s:
            b = s.get(Batch, batch_id)
        if b is None or b.status in TERMINAL:
            return None
        if b.status == "cancelling":
            ending = "cancelled"
        elif b.completed + b.failed >= b.total:
            ending = "completed"
        else:
            ending = "expired"
        if b.output_file_id is None or b.error_file_id is None:
            return None  # set by _take; absent only if the row changed under us
        n_out = self._write(b, b.output_file_id, lease, ok=True, expired=False, tag=tag)
        n_err = self._write(b, b.error_file_id, lease, ok=False, expired=ending == "expired",
                            tag=tag)
        now = utcnow()
        expires_at = (None if b.output_expires_s is None
                      else now + timedelta(seconds=b.output_expires_s))
        with self.db.session() as s, s.begin():
            done = s.execute(
                update(Batch).where(Batch.id == batch_id, Batch.status.not_in(TERMINAL),
                                    Batch.finalize_until == lease.until)
                .values(status=ending, finalize_until=None,
                        output_file_id=b.output_file_id if n_out[0] else None,
                        error_file_id=b.error_file_id if n_err[0] else None,
                        **{f"{ending}_at": now}))
            if done.rowcount != 1:  # type: ignore[attr-defined]
                raise LeaseLost(batch_id)  # a takeover has it (same ids, same bytes)
            for (lines, size), file_id, kind in ((n_out, b.output_file_id, "output"),
                                                 (n_err, b.error_file_id, "error")):
                if lines:
                    s.merge(StoredFile(
                        id=file_id, tenant_id=b.tenant_id, project_id=b.project_id,
                        principal_id=b.principal_id, purpose="batch_output",
                        filename=f"{b.id}_{kind}.jsonl", bytes=size, lines=lines,
                        endpoint=None, model=b.model, created_at=now, expires_at=expires_at))
        for (lines, _), file_id in ((n_out, b.output_file_id), (n_err, b.error_file_id)):
            if not lines:
                self._discard(file_id)
        return ending

    def _due(self, batch_id: str) -> bool:
        """Cancelling, finalizing, or in progress with every line done or past its window."""
        with self.db.session() as s:
            b = s.get(Batch, batch_id)
        if b is None or b.status in TERMINAL or b.status == "validating":
            return False
        if b.status != "in_progress" or b.completed + b.failed >= b.total:
            return True
        expires = b.expires_at if b.expires_at.tzinfo else b.expires_at.replace(tzinfo=UTC)
        return datetime.now(UTC) >= expires

    def _take(self, batch_id: str) -> _Lease | None:
        now = self.clock()
        with self.db.session() as s, s.begin():
            taken = s.execute(
                update(Batch).where(
                    Batch.id == batch_id,
                    Batch.status.in_(("in_progress", "cancelling", "finalizing")),
                    Batch.finalize_until.is_(None) | (Batch.finalize_until < now))
                .values(finalize_until=now + self.lease_s, status=_keep_cancelling(),
                        output_file_id=_or_new(Batch.output_file_id),
                        error_file_id=_or_new(Batch.error_file_id)))
            if taken.rowcount != 1:  # type: ignore[attr-defined]
                return None
            s.execute(update(Batch).where(Batch.id == batch_id, Batch.status == "finalizing",
                                          Batch.finalizing_at.is_(None))
                      .values(finalizing_at=utcnow()))
        return _Lease(self, batch_id, now + self.lease_s)

    def _write(self, b: Batch, file_id: str, lease: _Lease, *, ok: bool, expired: bool,
               tag: str) -> tuple[int, int]:
        """(lines, bytes) written to ``file_id``, the lease kept meanwhile and renewed last
        just before the file is put in place (``LeaseLost``: not put in place)."""
        count = [0]

        def chunks() -> Iterator[bytes]:
            after = -1
            while True:
                lease.keep()
                q = (select(BatchLine.idx, BatchLine.custom_id, BatchLine.result, BatchLine.ok)
                     .where(BatchLine.batch_id == b.id, BatchLine.idx > after)
                     .order_by(BatchLine.idx).limit(READ_ROWS))
                with self.db.session() as s:
                    rows = s.execute(q).all()
                if not rows:
                    lease.renew()  # the last step before the file is put in place
                    return
                out: list[bytes] = []
                for idx, custom_id, result, line_ok in rows:
                    after = idx
                    if result is not None and bool(line_ok) == ok:
                        out.append(result.encode())
                    elif result is None and expired:
                        out.append(output_line(custom_id, LineResult(None, None, None,
                                                                     error=EXPIRED)))
                if out:
                    count[0] += len(out)
                    yield b"\n".join(out) + b"\n"

        size = self.files.write(file_id, chunks(), tag=tag)
        return count[0], size

    def _discard(self, file_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.files.path(file_id).unlink()


def _keep_cancelling() -> Any:
    """A batch being cancelled stays ``cancelling`` until it is ``cancelled``."""
    return case((Batch.status == "in_progress", "finalizing"), else_=Batch.status)


def _or_new(column: Any) -> Any:
    return func.coalesce(column, ids.new_id(ids.FILE))
