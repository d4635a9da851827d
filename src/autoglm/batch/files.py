"""Files of the batch API: bytes under ``data_dir/files/<id>`` (0600), metadata in the
``files`` table.

An upload is written to ``<id>.part`` while it is checked (``lines.LineChecker``) and
counted against the size limit, then renamed: a file either is whole and checked, or is
not there. The row is added after the rename, in one transaction with its audit record;
if that fails the bytes are removed. Deleting removes the row first: at worst a crash
leaves bytes nobody can name, never a row whose bytes are gone. ``.part`` files a crash
left, and bytes no row names, are removed by the sweeper (``sweep``) once an hour old.

A file may expire (``expires_at``: ``expires_after`` at upload, or the batch's
``output_expires_after`` for its results): from then on it is neither listed nor served
(a 404, as if deleted) until the sweeper deletes its row and bytes. A row whose bytes are
not on this server (lost, or written by a replica with its own data dir) is listed, and
its content is a 404 that says so.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from autoglm.batch import ids
from autoglm.batch.lines import CHUNK, LineChecker
from autoglm.batch.scope import Scope, Visible
from autoglm.errors import FileTooLargeError, InvalidRequestError, NotFoundError
from autoglm.store.db import Database
from autoglm.store.models import StoredFile, utcnow

InTransaction = Callable[[Session, StoredFile], None]  # e.g. the act's audit record
MAX_FILENAME = 256
STALE_PART_S = 3600.0
EXPIRES_MIN_S = 3600  # OpenAI's bounds of expires_after.seconds: an hour to 30 days
EXPIRES_MAX_S = 30 * 86_400


def unix(value: datetime | None) -> int | None:
    """A stored time as OpenAI shows times: Unix seconds (SQLite hands back naive UTC)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp())


def file_object(row: StoredFile) -> dict[str, Any]:
    """The OpenAI ``file`` object."""
    return {"id": row.id, "object": "file", "bytes": row.bytes,
            "created_at": unix(row.created_at), "filename": row.filename,
            "purpose": row.purpose, "status": "processed", "status_details": None,
            "expires_at": unix(row.expires_at)}


def expires_after(anchor: object, seconds: object, param: str) -> int:
    """``{"anchor": "created_at", "seconds": N}`` checked as OpenAI checks it: the seconds."""
    if anchor != "created_at":
        raise InvalidRequestError(f"{param}.anchor must be 'created_at'",
                                  param=f"{param}.anchor")
    if type(seconds) is not int or not EXPIRES_MIN_S <= seconds <= EXPIRES_MAX_S:
        raise InvalidRequestError(
            f"{param}.seconds must be an integer from {EXPIRES_MIN_S} (1 hour) to "
            f"{EXPIRES_MAX_S} (30 days)", param=f"{param}.seconds")
    return seconds


def expired(row: StoredFile, now: datetime | None = None) -> bool:
    when = row.expires_at
    if when is None:
        return False
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when <= (now or datetime.now(UTC))


def clean_filename(name: str | None) -> str:
    """The last path part, printable, bounded: a name is shown back, never used as a path."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable())[:MAX_FILENAME]
    return base or "upload.jsonl"


class FileStore:
    def __init__(self, db: Database, root: Path) -> None:
        self.db = db
        self.root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.sweep_parts()

    def sweep_parts(self, older_than_s: float = STALE_PART_S) -> int:
        """Half-written files a crash left behind (not one being written now: too old)."""
        now, gone = time.time(), 0
        for part in self.root.glob("*.part"):
            with contextlib.suppress(FileNotFoundError):
                if now - part.stat().st_mtime > older_than_s:
                    part.unlink()
                    gone += 1
        return gone

    def path(self, file_id: str) -> Path:
        if not ids.valid(ids.FILE, file_id):  # never a path from a caller's text
            raise NotFoundError("No such file.")
        return self.root / file_id

    # --- writes -----------------------------------------------------------------------------
    def write(self, file_id: str, chunks: Iterable[bytes], tag: str = "") -> int:
        """``chunks`` into the file's bytes, whole or not at all; returns the size.
        ``tag`` keeps two writers of one id (a finalizer taken over) apart until the rename."""
        final = self.path(file_id)
        part = final.with_name(f"{file_id}{tag}.part")
        size = 0
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(part, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
            raise
        return size

    def upload(self, scope: Scope, filename: str | None, source: BinaryIO, *, max_bytes: int,
               max_lines: int, expires_s: int | None = None,
               also: InTransaction | None = None) -> StoredFile:
        """A batch input file, checked line by line while it is written (400 naming the
        first bad line; 413 past ``max_bytes``); gone ``expires_s`` after its creation."""
        checker = LineChecker(max_lines)
        file_id = ids.new_id(ids.FILE)

        def checked() -> Iterator[bytes]:
            seen = 0
            while chunk := source.read(CHUNK):
                seen += len(chunk)
                if seen > max_bytes:
                    raise FileTooLargeError(
                        f"The file is larger than batch_file_max_bytes ({max_bytes} bytes).",
                        param="file")
                checker.feed(chunk)
                yield chunk

        size = self.write(file_id, checked())
        try:
            summary = checker.close()
            now = utcnow()
            row = StoredFile(id=file_id, tenant_id=scope.tenant_id, project_id=scope.project_id,
                             principal_id=scope.principal_id, purpose="batch",
                             filename=clean_filename(filename), bytes=size,
                             lines=summary.lines, endpoint=summary.endpoint,
                             model=summary.model, created_at=now,
                             expires_at=None if expires_s is None
                             else now + timedelta(seconds=expires_s))
            with self.db.session() as s, s.begin():
                s.add(row)
                s.flush()
                if also is not None:
                    also(s, row)
        except BaseException:
            self.remove(file_id)
            raise
        return row

    def delete(self, file_id: str, also: InTransaction | None = None) -> StoredFile:
        with self.db.session() as s, s.begin():
            row = s.get(StoredFile, file_id)
            if row is None:
                raise NotFoundError("No such file.")
            s.delete(row)
            if also is not None:
                also(s, row)
        self.remove(file_id)
        return row

    def remove(self, file_id: str) -> None:
        """The bytes, if they are here."""
        with contextlib.suppress(FileNotFoundError):
            self.path(file_id).unlink()

    # --- reads ------------------------------------------------------------------------------
    def get(self, file_id: str) -> StoredFile | None:
        """The file, or None when there is none (or it expired)."""
        if not ids.valid(ids.FILE, file_id):
            return None
        with self.db.session() as s:
            row = s.get(StoredFile, file_id)
        return None if row is None or expired(row) else row

    def page(self, visible: Visible, *, limit: int, after: str | None, newest_first: bool,
             purpose: str | None) -> tuple[list[StoredFile], bool]:
        q = visible.apply(select(StoredFile), StoredFile).where(
            StoredFile.expires_at.is_(None) | (StoredFile.expires_at > utcnow()))
        if purpose is not None:
            q = q.where(StoredFile.purpose == purpose)
        if after is not None:
            q = q.where(StoredFile.id < after if newest_first else StoredFile.id > after)
        q = q.order_by(StoredFile.id.desc() if newest_first else StoredFile.id)
        with self.db.session() as s:
            rows = list(s.scalars(q.limit(limit + 1)))
        return rows[:limit], len(rows) > limit

    def open(self, file_id: str) -> BinaryIO:
        """The bytes, open for reading (a delete meanwhile does not cut a download short)."""
        try:
            return self.path(file_id).open("rb")
        except FileNotFoundError:
            raise NotFoundError("The file's content is not on this server (it was lost, or "
                                "is in the data_dir of another replica).",
                                code="file_content_missing") from None
