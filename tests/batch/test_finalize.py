"""The finalizer's lease (``batch.finalize``), on SQLite and PostgreSQL: a finalize that
takes longer than its lease keeps the batch (it renews), so nobody else finalizes it too;
a finalizer whose lease was taken over stops without touching the batch or its files."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from autoglm.batch import finalize
from autoglm.batch.batches import BatchStore, LineResult
from autoglm.batch.files import FileStore
from autoglm.batch.finalize import Finalizer
from autoglm.store.db import Database
from autoglm.store.models import Batch, StoredFile
from tests.batch.conftest import CHAT, jsonl, line, read_lines
from tests.batch.test_queue import SCOPE, Clock

LEASE_S = 10.0
LINES = 10


class SlowFiles(FileStore):
    """Files written slowly: ``between`` runs after each chunk the finalizer hands over."""

    between: Callable[[], None] = staticmethod(lambda: None)

    def write(self, file_id: str, chunks: Iterable[bytes], tag: str = "") -> int:
        def slow() -> Iterator[bytes]:
            for chunk in chunks:
                yield chunk
                self.between()

        return super().write(file_id, slow(), tag)


def _done_batch(db: Database, files: FileStore) -> str:
    """A batch whose every line has its result: due for finalizing."""
    store = BatchStore(db, files)
    f = files.upload(SCOPE, "in.jsonl", io.BytesIO(jsonl(*(line(f"c{i}")
                                                          for i in range(LINES)))),
                     max_bytes=1 << 20, max_lines=100)
    b, _ = store.create(SCOPE, "key_a", f, CHAT, "24h", None)
    store.started(b.id)
    for i in range(LINES):
        store.record(b.id, i, f"c{i}", LineResult(200, f"req_{i}", {"n": i}))
    return b.id


@pytest.fixture(autouse=True)
def _small_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(finalize, "READ_ROWS", 2)  # the output file in 5 chunks


def test_a_slow_finalize_keeps_its_lease_and_finalizes_alone(db: Database,
                                                             tmp_path: Path) -> None:
    clock = Clock()
    files = SlowFiles(db, tmp_path / "files")
    batch_id = _done_batch(db, files)
    slow = Finalizer(db, files, LEASE_S, clock=clock)
    other = Finalizer(db, FileStore(db, tmp_path / "files"), LEASE_S, clock=clock)
    tries: list[str | None] = []

    def meanwhile() -> None:  # 0.6 of a lease per chunk: 3 lease lengths in all
        clock.ahead += 0.6 * LEASE_S
        tries.append(other.finalize(batch_id, ".other"))

    files.between = meanwhile
    assert slow.finalize(batch_id, ".slow") == "completed"
    assert len(tries) >= 5 and set(tries) == {None}  # never taken over
    with db.session() as s:
        b = s.get(Batch, batch_id)
        outputs = s.scalar(select(func.count()).select_from(StoredFile)
                           .where(StoredFile.purpose == "batch_output"))
    assert (b.status, b.finalize_until, b.error_file_id, outputs) == ("completed", None, None, 1)
    assert [o["custom_id"] for o in read_lines(files.path(b.output_file_id).read_bytes())] \
        == [f"c{i}" for i in range(LINES)]
    assert not list(files.root.glob("*.part"))


def test_a_finalizer_that_lost_its_lease_stops(db: Database,
                                               tmp_path: Path) -> None:
    clock = Clock()
    files = SlowFiles(db, tmp_path / "files")
    batch_id = _done_batch(db, files)
    stalled = Finalizer(db, files, LEASE_S, clock=clock)

    def taken_over() -> None:  # it stalled past its lease, and another finalizer took it
        clock.ahead += LEASE_S
        with db.session() as s, s.begin():
            s.execute(update(Batch).where(Batch.id == batch_id)
                      .values(finalize_until=clock() + LEASE_S))

    files.between = taken_over
    assert stalled.finalize(batch_id, ".stalled") is None
    with db.session() as s:
        b = s.get(Batch, batch_id)
        rows = s.scalar(select(func.count()).select_from(StoredFile)
                        .where(StoredFile.purpose == "batch_output"))
    assert (b.status, rows) == ("finalizing", 0)  # nothing of it is final
    assert not files.path(b.output_file_id).exists()  # its file was never put in place
    assert not list(files.root.glob("*.part"))
    files.between = lambda: None
    clock.ahead += 2 * LEASE_S  # the other one died too: a third finishes it
    assert Finalizer(db, files, LEASE_S, clock=clock).finalize(batch_id) == "completed"
