"""A new batch's lines, from its input file into ``batch_lines``, ``rows`` lines per
transaction: a 50,000-line batch never holds the database in one long transaction (on
SQLite, every other writer would wait for it), and its memory is one chunk.

The batch is made ``validating`` with a lease (``finalize_until``: the lease's end, which
is also its holder's token) and stays ``validating`` until every line is copied and
published to the queue (``BatchStore.started`` makes it ``in_progress`` and ends the
lease); until then no line runs. Each chunk is inserted in one transaction with the
renewal of the lease, conditional on the batch being ``validating`` under this very
lease: a cancel stops the copy at the next chunk, and a copier that stalled past its
lease and was taken over stops without inserting anything.

A copy cut short (the process died) is resumed by any worker's housekeeping once its lease
ran out (``resume``): from the first line not copied, read again from the input file (the
lines of a checked file are always the same). Should that file have been deleted
meanwhile, the batch fails with ``input_file_missing``. A copy that fails in the request
that creates the batch fails the batch (``intake_failed``) rather than leave it to be
resumed: its caller got an error, and may well create it again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, BinaryIO

from sqlalchemy import func, insert, select, update

from autoglm.batch.files import FileStore
from autoglm.batch.lines import requests
from autoglm.errors import NotFoundError
from autoglm.store.db import Database
from autoglm.store.models import Batch, BatchLine, utcnow

INSERT_ROWS = 1000
MISSING = ("input_file_missing", "The batch's input file was deleted before all its lines "
           "were read; upload it and create the batch again.")
FAILED = ("intake_failed", "The batch's lines could not all be stored; create it again.")


class Intake:
    def __init__(self, db: Database, files: FileStore, lease_s: float,
                 rows: int = INSERT_ROWS, clock: Callable[[], float] = time.time) -> None:
        if rows < 1:
            raise ValueError("an intake needs at least one row per transaction")
        self.db = db
        self.files = files
        self.lease_s = lease_s
        self.rows = rows
        self.clock = clock

    def lease_end(self) -> float:
        """The lease a batch is made with, by the request that creates it."""
        return self.clock() + self.lease_s

    def stalled(self, b: Batch) -> bool:
        """A ``validating`` batch nobody copies any more (its lease ran out)."""
        return b.status == "validating" and (b.finalize_until is None
                                             or b.finalize_until < self.clock())

    def copy(self, batch_id: str, until: float, source: BinaryIO, copied: int = 0
             ) -> int | None:
        """The lines of ``source`` after the first ``copied``, under the lease ending at
        ``until``: the batch's line count once they are all in, or None when the copy
        stopped (the batch was cancelled, or taken over)."""
        rows: list[dict[str, Any]] = []
        count = 0
        for custom_id, body in requests(source):
            if count >= copied:
                rows.append({"batch_id": batch_id, "idx": count, "custom_id": custom_id,
                             "body": body})
            count += 1
            if len(rows) >= self.rows:
                renewed = self._insert(batch_id, until, rows)
                if renewed is None:
                    return None
                until, rows = renewed, []
        return None if self._insert(batch_id, until, rows, total=count) is None else count

    def _insert(self, batch_id: str, until: float, rows: list[dict[str, Any]],
                total: int | None = None) -> float | None:
        """One chunk and the lease renewed, in one transaction; the new lease's end."""
        renewed = self.lease_end()
        values: dict[str, Any] = {"finalize_until": renewed}
        if total is not None:
            values["total"] = total  # the file's count (it is the one checked at upload)
        with self.db.session() as s, s.begin():
            kept = s.execute(update(Batch).where(Batch.id == batch_id,
                                                 Batch.status == "validating",
                                                 Batch.finalize_until == until)
                             .values(**values))
            if kept.rowcount != 1:  # type: ignore[attr-defined]
                return None
            if rows:
                s.execute(insert(BatchLine), rows)
        return renewed

    def resume(self, batch_id: str) -> int | None:
        """Take over a copy whose lease ran out and finish it: the batch's line count, or
        None (someone else has it, it is no longer validating, or it failed)."""
        now = self.clock()
        until = now + self.lease_s
        with self.db.session() as s, s.begin():
            taken = s.execute(update(Batch).where(
                Batch.id == batch_id, Batch.status == "validating",
                Batch.finalize_until.is_(None) | (Batch.finalize_until < now))
                .values(finalize_until=until))
            if taken.rowcount != 1:  # type: ignore[attr-defined]
                return None
            input_file_id, total = s.execute(select(Batch.input_file_id, Batch.total)
                                             .where(Batch.id == batch_id)).one()
            copied = int(s.scalar(select(func.count()).select_from(BatchLine)
                                  .where(BatchLine.batch_id == batch_id)) or 0)
        if copied >= total:
            return total  # every line is in: only the publish was cut short
        try:
            source = self.files.open(str(input_file_id))
        except NotFoundError:
            self.fail(batch_id, *MISSING)
            return None
        with source:
            return self.copy(batch_id, until, source, copied)

    def fail(self, batch_id: str, code: str, message: str) -> None:
        """A batch whose lines cannot all be copied: ``failed``, with OpenAI's ``errors``."""
        errors = {"object": "list", "data": [{"code": code, "message": message,
                                              "param": None, "line": None}]}
        with self.db.session() as s, s.begin():
            s.execute(update(Batch).where(Batch.id == batch_id, Batch.status == "validating")
                      .values(status="failed", failed_at=utcnow(), finalize_until=None,
                              errors=errors))
