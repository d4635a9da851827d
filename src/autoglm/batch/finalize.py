"""A batch that is done (every line has a result), cancelled or expired, into its output
and error files and its final status.

Any worker may finalize any batch, once: it takes the batch with a conditional update
that also sets a lease (``finalize_until``); a finalizer that dies is taken over when
the lease ends. The file ids are fixed in that same update (kept on the batch row, shown
only once the batch is final), so a takeover writes the same files again instead of
leaving others behind. The files are written whole (``FileStore.write``), then their rows
and the final status are committed together: a batch is final exactly when its files
exist.

Output file: the lines that answered 2xx; error file: the others and, for an expired
batch, one ``batch_expired`` line per line that never ran. Both in line order; a file
with no line is not made (its id stays null), as OpenAI does.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import case, func, select, update

from autoglm.batch import ids
from autoglm.batch.batches import TERMINAL, LineResult, output_line
from autoglm.batch.files import FileStore
from autoglm.store.db import Database
from autoglm.store.models import Batch, BatchLine, StoredFile, utcnow

READ_ROWS = 1000
EXPIRED = ("batch_expired",
           "This line was not run before the batch's completion window ended.")


class Finalizer:
    def __init__(self, db: Database, files: FileStore, lease_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.files = files
        self.lease_s = lease_s
        self.clock = clock

    def finalize(self, batch_id: str, tag: str = "") -> str | None:
        """Finalize the batch if it is due and nobody else is: its final status, or None."""
        if not self._due(batch_id) or not self._take(batch_id):
            return None
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
        n_out = self._write(b, b.output_file_id, ok=True, expired=False, tag=tag)
        n_err = self._write(b, b.error_file_id, ok=False, expired=ending == "expired", tag=tag)
        now = utcnow()
        with self.db.session() as s, s.begin():
            done = s.execute(
                update(Batch).where(Batch.id == batch_id, Batch.status.not_in(TERMINAL))
                .values(status=ending, finalize_until=None,
                        output_file_id=b.output_file_id if n_out[0] else None,
                        error_file_id=b.error_file_id if n_err[0] else None,
                        **{f"{ending}_at": now}))
            if done.rowcount != 1:  # type: ignore[attr-defined]
                return None  # a takeover finished first (same ids, same bytes)
            for (lines, size), file_id, kind in ((n_out, b.output_file_id, "output"),
                                                 (n_err, b.error_file_id, "error")):
                if lines:
                    s.merge(StoredFile(
                        id=file_id, tenant_id=b.tenant_id, project_id=b.project_id,
                        principal_id=b.principal_id, purpose="batch_output",
                        filename=f"{b.id}_{kind}.jsonl", bytes=size, lines=lines,
                        endpoint=None, model=b.model, created_at=now))
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

    def _take(self, batch_id: str) -> bool:
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
                return False
            s.execute(update(Batch).where(Batch.id == batch_id, Batch.status == "finalizing",
                                          Batch.finalizing_at.is_(None))
                      .values(finalizing_at=utcnow()))
            return True

    def _write(self, b: Batch, file_id: str, *, ok: bool, expired: bool,
               tag: str) -> tuple[int, int]:
        """(lines, bytes) written to ``file_id``."""
        count = [0]

        def chunks() -> Iterator[bytes]:
            after = -1
            while True:
                q = (select(BatchLine.idx, BatchLine.custom_id, BatchLine.result, BatchLine.ok)
                     .where(BatchLine.batch_id == b.id, BatchLine.idx > after)
                     .order_by(BatchLine.idx).limit(READ_ROWS))
                with self.db.session() as s:
                    rows = s.execute(q).all()
                if not rows:
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
