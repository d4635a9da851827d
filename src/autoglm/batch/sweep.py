"""The file sweeper: files nobody may read any more, removed from the database and the disk.

Every ``batch_file_sweep_s`` each ``autoglm serve`` and ``autoglm worker`` process (the
app's lifespan starts it) deletes:

- **expired files** (``expires_at`` passed): the row, with a ``file.expire`` audit record in
  the same transaction, then the bytes (the order of ``FileStore.delete``). They were
  already neither listed nor served from the moment they expired;
- **orphan bytes**: a file under ``data_dir/files`` that no row names, last written more than
  ``grace_s`` ago (an hour): a crash between writing an upload's bytes and committing its
  row, or a delete whose unlink failed. The files a finalizer is writing have no row yet,
  but their batch names them (the ids are fixed when it takes the batch, and the rows are
  committed in the transaction that makes it final), so they are never taken for orphans;
- **``.part`` files** older than ``grace_s``: an upload or a finalizer that died mid-write.

A row whose bytes are missing is kept: with one data dir per replica the bytes may be
another replica's (its content is a 404 that says so, ``FileStore.open``). Sweepers of
several processes may run at once: each deletion is conditional, and only the sweeper
whose delete removed a row audits it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from sqlalchemy import delete, select

from autoglm.audit import AuditLog, Record
from autoglm.batch import ids
from autoglm.batch.batches import TERMINAL
from autoglm.batch.files import STALE_PART_S, FileStore, unix
from autoglm.store.models import Batch, StoredFile, utcnow

log = logging.getLogger("autoglm.batch")
SWEEP_ROWS = 500  # rows deleted (or ids looked up) per statement


@dataclass(frozen=True)
class Swept:
    expired: int
    orphans: int
    parts: int


class FileSweeper:
    def __init__(self, files: FileStore, *, interval_s: float, grace_s: float = STALE_PART_S,
                 audit: AuditLog | None = None) -> None:
        self.files = files
        self.db = files.db
        self.interval_s = interval_s
        self.grace_s = grace_s
        self.audit = audit
        self._task: asyncio.Task[None] | None = None

    # --- life ---------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="file-sweeper")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        while True:
            try:
                swept = await asyncio.to_thread(self.sweep)
                if swept.expired or swept.orphans or swept.parts:
                    log.info("files swept", extra={"expired": swept.expired,
                                                   "orphans": swept.orphans,
                                                   "parts": swept.parts})
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception("the file sweep failed")
            await asyncio.sleep(self.interval_s)

    # --- one round (blocking) -----------------------------------------------------------------
    def sweep(self) -> Swept:
        return Swept(self.expire(), self.orphans(), self.files.sweep_parts(self.grace_s))

    def expire(self) -> int:
        """Delete the expired files' rows (audited), then their bytes."""
        gone = 0
        while True:
            now = utcnow()
            due = (select(StoredFile.id).where(StoredFile.expires_at <= now)
                   .order_by(StoredFile.expires_at).limit(SWEEP_ROWS))
            with self.db.session() as s, s.begin():
                rows = s.execute(
                    delete(StoredFile).where(StoredFile.id.in_(due.scalar_subquery()),
                                             StoredFile.expires_at <= now)
                    .returning(StoredFile.id, StoredFile.tenant_id, StoredFile.project_id,
                               StoredFile.purpose, StoredFile.expires_at)).all()
                if rows and self.audit is not None:
                    self.audit.append([Record(
                        action="file.expire", tenant_id=r.tenant_id, project_id=r.project_id,
                        resource=r.id, detail={"purpose": r.purpose,
                                               "expires_at": unix(r.expires_at)})
                        for r in rows], session=s)
            for r in rows:
                self.files.remove(r.id)
            gone += len(rows)
            if len(rows) < SWEEP_ROWS:
                return gone

    def orphans(self) -> int:
        """Remove the bytes no row and no unfinished batch names, once ``grace_s`` old."""
        now = time.time()
        old: set[str] = set()
        for path in self.files.root.iterdir():
            if not ids.valid(ids.FILE, path.name):
                continue  # .part files (``sweep_parts``) and anything not ours
            with contextlib.suppress(FileNotFoundError):
                if now - path.stat().st_mtime > self.grace_s:
                    old.add(path.name)
        if not old:
            return 0
        named = self._named(sorted(old))
        for file_id in old - named:
            self.files.remove(file_id)
        return len(old - named)

    def _named(self, file_ids: list[str]) -> set[str]:
        """The ids a batch being finished or a row names. Batches are asked first: a batch
        that is final by the second question committed its rows with its status."""
        named: set[str] = set()
        for at in range(0, len(file_ids), SWEEP_ROWS):
            chunk = file_ids[at:at + SWEEP_ROWS]
            unfinished = Batch.status.not_in(TERMINAL)
            with self.db.session() as s:
                for column in (Batch.output_file_id, Batch.error_file_id):
                    named.update(s.scalars(select(column).where(column.in_(chunk),
                                                                unfinished)))
            with self.db.session() as s:
                named.update(s.scalars(select(StoredFile.id).where(StoredFile.id.in_(chunk))))
        return named
