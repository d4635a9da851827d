"""Batches, their lines and results: the ``batches`` and ``batch_lines`` tables.

A batch is created as ``validating``, then every line of its input file is copied into
the database (so it runs even if that file is deleted later), a chunk per transaction
(``intake``; resumed after a crash); once its lines are all in and published to the queue
it is ``in_progress``. A line's result is its output line, written once
(``record``): a second result for the same (batch, index), from a line delivered twice,
changes nothing, so counts and output never count a line twice. ``request_counts`` and
token usage move in the same transaction as each result, so they are always live.

Statuses, as OpenAI's: validating -> in_progress -> finalizing -> completed | expired;
validating | in_progress -> cancelling -> cancelled (``finalize`` writes the files);
validating -> failed when its lines cannot all be copied (``intake``).
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from autoglm.batch import ids
from autoglm.batch.files import FileStore, unix
from autoglm.batch.intake import FAILED, INSERT_ROWS, Intake
from autoglm.batch.scope import Scope, Visible
from autoglm.errors import InvalidRequestError, NotFoundError
from autoglm.store.db import Database
from autoglm.store.models import Batch, BatchLine, StoredFile, utcnow

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
RUNNABLE = frozenset({"validating", "in_progress"})  # its lines may run
UNSETTLED = ("validating", "in_progress", "cancelling", "finalizing")
WINDOWS = {"24h": timedelta(hours=24)}
InTransaction = Callable[[Session, Batch], None]


@dataclass(frozen=True)
class LineResult:
    """What a line came to: an HTTP answer (``status_code``, ``body``), or, for a line
    that could not run at all, an ``error`` (code, message) and no response."""

    status_code: int | None
    request_id: str | None
    body: dict[str, Any] | None
    error: tuple[str, str] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def output_line(custom_id: str, result: LineResult) -> bytes:
    """One line of an output or error file, in OpenAI's shape."""
    response = None if result.status_code is None else {
        "status_code": result.status_code, "request_id": result.request_id,
        "body": result.body}
    error = None if result.error is None else {"code": result.error[0],
                                               "message": result.error[1]}
    return orjson.dumps({"id": f"batch_req_{secrets.token_hex(12)}", "custom_id": custom_id,
                         "response": response, "error": error})


@dataclass(frozen=True)
class LineWork:
    """One line and what running it needs to know of its batch."""

    batch_id: str
    index: int
    custom_id: str
    body: str  # JSON
    done: bool  # its result is stored already
    status: str
    expires_at: datetime
    endpoint: str
    key_id: str
    principal_id: str
    tenant_id: str | None
    project_id: str | None


def batch_object(b: Batch) -> dict[str, Any]:
    """The OpenAI ``batch`` object. File ids show once the files exist (terminal)."""
    final = b.status in TERMINAL
    return {
        "id": b.id, "object": "batch", "endpoint": b.endpoint, "model": b.model,
        "errors": b.errors, "input_file_id": b.input_file_id,
        "completion_window": b.completion_window, "status": b.status,
        "output_file_id": b.output_file_id if final else None,
        "error_file_id": b.error_file_id if final else None,
        "created_at": unix(b.created_at), "in_progress_at": unix(b.in_progress_at),
        "expires_at": unix(b.expires_at), "finalizing_at": unix(b.finalizing_at),
        "completed_at": unix(b.completed_at), "failed_at": unix(b.failed_at),
        "expired_at": unix(b.expired_at), "cancelling_at": unix(b.cancelling_at),
        "cancelled_at": unix(b.cancelled_at),
        "request_counts": {"total": b.total, "completed": b.completed, "failed": b.failed},
        "usage": {"input_tokens": b.input_tokens, "input_tokens_details": {"cached_tokens": 0},
                  "output_tokens": b.output_tokens,
                  "output_tokens_details": {"reasoning_tokens": 0},
                  "total_tokens": b.input_tokens + b.output_tokens},
        "metadata": b.meta,
    }


def _check(source: StoredFile, endpoint: str) -> None:
    if source.purpose != "batch":
        raise InvalidRequestError("the input file must be uploaded with purpose 'batch'",
                                  param="input_file_id")
    if source.endpoint != endpoint:
        raise InvalidRequestError(
            f"the input file's requests are for {source.endpoint}, not {endpoint}",
            param="endpoint")


class BatchStore:
    def __init__(self, db: Database, files: FileStore, *, lease_s: float = 60.0,
                 intake_rows: int = INSERT_ROWS) -> None:
        self.db = db
        self.files = files  # where input files are read
        self.intake = Intake(db, files, lease_s, intake_rows)

    # --- writes -----------------------------------------------------------------------------
    def create(self, scope: Scope, key_id: str, source: StoredFile, endpoint: str, window: str,
               metadata: dict[str, str] | None, output_expires_s: int | None = None,
               also: InTransaction | None = None) -> tuple[Batch, bool]:
        """The batch (``add``), then all its lines (``intake``): the batch as it is now,
        and whether every line is in (False: it was cancelled meanwhile, or its copy was
        taken over; either way its caller must not publish it)."""
        _check(source, endpoint)
        try:
            lines = self.files.open(source.id)  # held open: a delete meanwhile cuts nothing
        except NotFoundError:
            raise NotFoundError("No such file.", param="input_file_id") from None
        with lines:
            b, until = self.add(scope, key_id, source, endpoint, window, metadata,
                                output_expires_s, also)
            try:
                copied = self.intake.copy(b.id, until, lines)
            except Exception:
                with contextlib.suppress(Exception):  # else resumed once its lease ends
                    self.intake.fail(b.id, *FAILED)
                raise
        made = self.get(b.id)
        if made is None:
            raise NotFoundError("No such batch.")
        return made, copied is not None

    def add(self, scope: Scope, key_id: str, source: StoredFile, endpoint: str, window: str,
            metadata: dict[str, str] | None, output_expires_s: int | None = None,
            also: InTransaction | None = None) -> tuple[Batch, float]:
        """The batch alone, ``validating``, under the intake's lease: it and the lease's end
        (the token ``intake.copy`` needs)."""
        _check(source, endpoint)
        now, until = utcnow(), self.intake.lease_end()
        b = Batch(id=ids.new_id(ids.BATCH), tenant_id=scope.tenant_id,
                  project_id=scope.project_id, principal_id=scope.principal_id, key_id=key_id,
                  endpoint=endpoint, input_file_id=source.id, completion_window=window,
                  model=source.model, status="validating", meta=metadata, total=source.lines,
                  completed=0, failed=0, input_tokens=0, output_tokens=0, created_at=now,
                  expires_at=now + WINDOWS[window], finalize_until=until,
                  output_expires_s=output_expires_s)
        with self.db.session() as s, s.begin():
            s.add(b)
            s.flush()
            if also is not None:
                also(s, b)
        return b, until

    def started(self, batch_id: str) -> None:
        """Its lines are published: in progress (if nobody cancelled it meanwhile), and the
        intake's lease ends."""
        with self.db.session() as s, s.begin():
            s.execute(update(Batch).where(Batch.id == batch_id, Batch.status == "validating")
                      .values(status="in_progress", in_progress_at=utcnow(),
                              finalize_until=None))

    def cancel(self, batch_id: str, also: InTransaction | None = None) -> Batch:
        """validating | in_progress -> cancelling; already cancelling or cancelled: as is."""
        with self.db.session() as s, s.begin():
            b = s.get(Batch, batch_id)
            if b is None:
                raise NotFoundError("No such batch.")
            if b.status in ("cancelling", "cancelled"):
                return b
            if b.status not in RUNNABLE:
                raise InvalidRequestError(
                    f"a batch that is {b.status} cannot be cancelled", param="batch_id",
                    code="batch_not_cancellable")
            if b.status == "validating":
                b.finalize_until = None  # its intake stops at its next chunk
            b.status, b.cancelling_at = "cancelling", utcnow()
            s.flush()
            if also is not None:
                also(s, b)
            return b

    def record(self, batch_id: str, index: int, custom_id: str,
               result: LineResult) -> tuple[bool, bool]:
        """Store a line's result unless it has one: (stored now, every line has one)."""
        with self.db.session() as s, s.begin():
            written = s.execute(
                update(BatchLine).where(BatchLine.batch_id == batch_id, BatchLine.idx == index,
                                        BatchLine.result.is_(None))
                .values(result=output_line(custom_id, result).decode(), ok=result.ok))
            if written.rowcount != 1:  # type: ignore[attr-defined]
                return False, False  # it has one: this run of the line was a second one
            ok = int(result.ok)
            counts = s.execute(
                update(Batch).where(Batch.id == batch_id).values(
                    completed=Batch.completed + ok, failed=Batch.failed + (1 - ok),
                    input_tokens=Batch.input_tokens + result.prompt_tokens,
                    output_tokens=Batch.output_tokens + result.completion_tokens)
                .returning(Batch.completed, Batch.failed, Batch.total)).one()
        return True, counts.completed + counts.failed >= counts.total

    # --- reads ------------------------------------------------------------------------------
    def get(self, batch_id: str) -> Batch | None:
        if not ids.valid(ids.BATCH, batch_id):
            return None
        with self.db.session() as s:
            return s.get(Batch, batch_id)

    def page(self, visible: Visible, *, limit: int, after: str | None
             ) -> tuple[list[Batch], bool]:
        """Newest first, as OpenAI lists batches."""
        q = visible.apply(select(Batch), Batch)
        if after is not None:
            q = q.where(Batch.id < after)
        with self.db.session() as s:
            rows = list(s.scalars(q.order_by(Batch.id.desc()).limit(limit + 1)))
        return rows[:limit], len(rows) > limit

    def line(self, batch_id: str, index: int) -> LineWork | None:
        with self.db.session() as s:
            row = s.execute(
                select(BatchLine.custom_id, BatchLine.body, BatchLine.result.is_not(None),
                       Batch.status, Batch.expires_at, Batch.endpoint, Batch.key_id,
                       Batch.principal_id, Batch.tenant_id, Batch.project_id)
                .join(Batch, Batch.id == BatchLine.batch_id)
                .where(BatchLine.batch_id == batch_id, BatchLine.idx == index)).first()
        if row is None:
            return None
        return LineWork(batch_id, index, row[0], row[1], bool(row[2]), row[3], row[4], row[5],
                        row[6], row[7], row[8], row[9])

    def statuses(self, batch_ids: Sequence[str]) -> dict[str, tuple[str, datetime]]:
        if not batch_ids:
            return {}
        with self.db.session() as s:
            rows = s.execute(select(Batch.id, Batch.status, Batch.expires_at)
                             .where(Batch.id.in_(list(batch_ids)))).all()
        return {r.id: (r.status, r.expires_at) for r in rows}

    def unsettled(self) -> list[Batch]:
        """Batches the worker's housekeeping looks at: not yet in a final status."""
        with self.db.session() as s:
            return list(s.scalars(select(Batch).where(Batch.status.in_(UNSETTLED))))
