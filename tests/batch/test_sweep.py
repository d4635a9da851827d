"""The file sweeper (``batch.sweep``) without a model, on SQLite and PostgreSQL: expired
files and orphan bytes go, the bytes a finalizer is writing and young ones stay, and a row
whose bytes are missing is kept and answered with a clear 404."""

from __future__ import annotations

import io
import os
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from autoglm.batch import ids
from autoglm.batch.batches import BatchStore
from autoglm.batch.files import FileStore
from autoglm.batch.sweep import FileSweeper, Swept
from autoglm.errors import NotFoundError
from autoglm.store.db import Database
from autoglm.store.models import Batch, StoredFile, utcnow
from tests.batch.conftest import CHAT, jsonl, line
from tests.batch.test_queue import SCOPE

GRACE_S = 60.0


def _aged(path: Path, seconds: float = 2 * GRACE_S) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def _upload(files: FileStore, expires_s: int | None = None) -> StoredFile:
    return files.upload(SCOPE, "in.jsonl", io.BytesIO(jsonl(line("a"))), max_bytes=1 << 20,
                        max_lines=10, expires_s=expires_s)


def test_orphan_bytes_go_after_the_grace_and_named_ones_stay(db: Database,
                                                             tmp_path: Path) -> None:
    files = FileStore(db, tmp_path / "files")
    sweeper = FileSweeper(files, interval_s=60, grace_s=GRACE_S)
    kept = _upload(files)
    orphan = ids.new_id(ids.FILE)  # bytes written, then the process died before the row
    young = ids.new_id(ids.FILE)  # maybe being recorded right now
    files.write(orphan, [b"lost\n"])
    files.write(young, [b"new\n"])
    part = files.root / f"{ids.new_id(ids.FILE)}.part"  # an upload that died mid-write
    part.write_bytes(b"half")
    # a batch being finalized: its output file is in place, its row not yet committed
    b, _ = BatchStore(db, files).create(SCOPE, "key_a", kept, CHAT, "24h", None)
    finalizing = ids.new_id(ids.FILE)
    with db.session() as s, s.begin():
        s.execute(update(Batch).where(Batch.id == b.id)
                  .values(status="finalizing", output_file_id=finalizing))
    files.write(finalizing, [b"answers\n"])
    for path in (files.path(kept.id), files.path(orphan), part, files.path(finalizing)):
        _aged(path)
    assert sweeper.sweep() == Swept(expired=0, orphans=1, parts=1)
    assert not files.path(orphan).exists() and not part.exists()
    for still in (kept.id, young, finalizing):
        assert files.path(still).exists(), still
    # once the batch is final, bytes it no longer names and no row names are orphans
    with db.session() as s, s.begin():
        s.execute(update(Batch).where(Batch.id == b.id).values(status="completed"))
    assert sweeper.sweep().orphans == 1 and not files.path(finalizing).exists()


def test_expired_files_go_and_missing_bytes_are_a_clear_404(db: Database,
                                                            tmp_path: Path) -> None:
    files = FileStore(db, tmp_path / "files")
    sweeper = FileSweeper(files, interval_s=60, grace_s=GRACE_S)
    soon, forever = _upload(files, expires_s=3600), _upload(files)
    assert soon.expires_at - soon.created_at == timedelta(seconds=3600)
    assert sweeper.sweep() == Swept(0, 0, 0)  # not yet
    with db.session() as s, s.begin():
        s.execute(update(StoredFile).where(StoredFile.id == soon.id)
                  .values(expires_at=utcnow() - timedelta(seconds=1)))
    assert files.get(soon.id) is None  # gone for readers at once, swept later
    assert sweeper.sweep().expired == 1
    with db.session() as s:
        assert s.get(StoredFile, soon.id) is None
    assert not files.path(soon.id).exists() and files.path(forever.id).exists()
    files.path(forever.id).unlink()  # lost (or on another replica's disk)
    assert sweeper.sweep() == Swept(0, 0, 0) and files.get(forever.id) is not None
    with pytest.raises(NotFoundError) as err:
        files.open(forever.id)
    assert err.value.code == "file_content_missing"
