"""A batch's lines copied in chunks (``batch.intake``), on SQLite and PostgreSQL: a
5,000-line batch in many short transactions, invisible to workers until all its lines are
in, resumed by another worker after its creator died mid-copy, stopped by a cancel."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import event, func, select

from autoglm.batch.batches import BatchStore
from autoglm.batch.files import FileStore
from autoglm.batch.queue import DatabaseQueue
from autoglm.store.db import Database
from autoglm.store.models import BatchLine, QueuedLine, StoredFile
from tests.batch.conftest import CHAT, jsonl, line
from tests.batch.test_queue import LEASE_S, SCOPE, Clock, Runner, _worker

LINES = 5000
ROWS = 250  # lines per transaction in these tests (1,000 by default)


class Died(Exception):
    """The creating process stopped here."""


class DiesAfter:
    """An input file whose reader dies after ``n`` lines (the process was killed)."""

    def __init__(self, f: io.BufferedReader, n: int) -> None:
        self.f, self.n = f, n

    def __iter__(self) -> Iterator[bytes]:
        for number, raw in enumerate(self.f):
            if number == self.n:
                raise Died()
            yield raw


def _setup(db: Database, tmp_path: Path) -> tuple[FileStore, BatchStore, StoredFile, Clock]:
    files = FileStore(db, tmp_path / "files")
    store = BatchStore(db, files, lease_s=LEASE_S, intake_rows=ROWS)
    clock = Clock()
    store.intake.clock = clock
    data = jsonl(*(line(f"c{i}") for i in range(LINES)))
    source = files.upload(SCOPE, "big.jsonl", io.BytesIO(data), max_bytes=1 << 24,
                          max_lines=LINES)
    return files, store, source, clock


def _count(db: Database, model: type, batch_id: str) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(model)
                            .where(model.batch_id == batch_id)) or 0)


def test_a_large_batch_is_copied_a_chunk_per_transaction(db: Database,
                                                         tmp_path: Path) -> None:
    _, store, source, _ = _setup(db, tmp_path)
    commits = [0]

    def counted(conn: object) -> None:
        commits[0] += 1

    event.listen(db.engine, "commit", counted)
    try:
        b, whole = store.create(SCOPE, "key_a", source, CHAT, "24h", None)
    finally:
        event.remove(db.engine, "commit", counted)
    assert whole and b.status == "validating" and b.total == LINES
    assert commits[0] >= LINES // ROWS  # one transaction per chunk, not one for the batch
    assert _count(db, BatchLine, b.id) == LINES
    with db.session() as s:
        assert s.scalar(select(BatchLine.custom_id).where(BatchLine.batch_id == b.id,
                                                          BatchLine.idx == 4321)) == "c4321"


async def test_a_copy_cut_short_is_resumed_by_another_worker(db: Database,
                                                             tmp_path: Path) -> None:
    files, store, source, clock = _setup(db, tmp_path)
    b, until = store.add(SCOPE, "key_a", source, CHAT, "24h", None)
    with files.open(source.id) as f:
        try:
            store.intake.copy(b.id, until, DiesAfter(f, 1100))  # type: ignore[arg-type]
        except Died:
            pass
    # what a dead creator left: the chunks it committed, a batch still validating, no
    # line published (no worker runs any of them)
    assert _count(db, BatchLine, b.id) == 1000
    assert store.get(b.id).status == "validating"
    queue = DatabaseQueue(db, LEASE_S, clock=clock)
    worker = _worker("other", store, queue, files, Runner())
    await worker.housekeeping()  # its lease still runs: nobody takes it over yet
    assert _count(db, BatchLine, b.id) == 1000 and _count(db, QueuedLine, b.id) == 0
    clock.ahead = LEASE_S + 1
    await worker.housekeeping()
    after = store.get(b.id)
    assert (after.status, after.total, after.finalize_until) == ("in_progress", LINES, None)
    assert _count(db, BatchLine, b.id) == LINES and _count(db, QueuedLine, b.id) == LINES
    with db.session() as s:
        ids = list(s.scalars(select(BatchLine.custom_id).where(BatchLine.batch_id == b.id)
                             .order_by(BatchLine.idx)))
    assert ids == [f"c{i}" for i in range(LINES)]  # each line once, in file order


def test_a_cancel_stops_the_copy_and_a_lost_input_fails_the_resume(
        db: Database, tmp_path: Path) -> None:
    files, store, source, clock = _setup(db, tmp_path)
    b, until = store.add(SCOPE, "key_a", source, CHAT, "24h", None)
    store.cancel(b.id)
    with files.open(source.id) as f:
        assert store.intake.copy(b.id, until, f) is None
    assert _count(db, BatchLine, b.id) == 0 and store.get(b.id).status == "cancelling"
    # a creator that died before any line, whose input file is deleted meanwhile
    other, _ = store.add(SCOPE, "key_a", source, CHAT, "24h", None)
    files.delete(source.id)
    clock.ahead = LEASE_S + 1
    assert store.intake.resume(other.id) is None
    failed = store.get(other.id)
    assert failed.status == "failed" and failed.failed_at is not None
    assert failed.errors["data"][0]["code"] == "input_file_missing"
