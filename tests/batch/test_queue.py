"""The queue and the workers without a model (SQLite and PostgreSQL): at-least-once
delivery with leases, a dead worker's lines reclaimed by another, and a line run twice
stored once."""

from __future__ import annotations

import asyncio
import io
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update

from autoglm.batch.batches import BatchStore, LineResult, LineWork
from autoglm.batch.files import FileStore
from autoglm.batch.finalize import Finalizer
from autoglm.batch.queue import DatabaseQueue
from autoglm.batch.scope import Scope
from autoglm.batch.worker import BatchWorker
from autoglm.store.db import Database
from autoglm.store.models import Batch, QueuedLine
from tests.batch.conftest import CHAT, jsonl, line, read_lines

LEASE_S = 30.0
SCOPE = Scope("ten_a", "prj_a", "prn_a")


class Clock:
    """Wall time that a test moves on (lease ends) without waiting."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def __call__(self) -> float:
        return time.time() + self.ahead


class Runner:
    """Answers every line at once, and counts how often each ran."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    async def run(self, work: LineWork, identity: Any, opened: Any = None) -> LineResult:
        self.ran.append(work.custom_id)
        return LineResult(200, f"req_{work.index}", {"echo": work.custom_id},
                          prompt_tokens=1, completion_tokens=1)


class Owners:
    async def identity(self, key_id: str) -> Any:
        return object()


def _parts(db: Database, tmp_path: Path, clock: Clock) -> tuple[FileStore, BatchStore,
                                                                  DatabaseQueue]:
    files = FileStore(db, tmp_path / "files")
    return files, BatchStore(db, files), DatabaseQueue(db, LEASE_S, clock=clock)


def _worker(name: str, store: BatchStore, queue: DatabaseQueue, files: FileStore,
            runner: Runner) -> BatchWorker:
    return BatchWorker(store=store, queue=queue, runner=runner, owners=Owners(),  # type: ignore[arg-type]
                       finalizer=Finalizer(store.db, files, LEASE_S), engines={},
                       concurrency=4, lease_s=LEASE_S, poll_s=0.05, name=name)


async def _batch(files: FileStore, store: BatchStore, queue: DatabaseQueue, n: int) -> str:
    f = files.upload(SCOPE, "in.jsonl", io.BytesIO(jsonl(*(line(f"c{i}") for i in range(n)))),
                     max_bytes=1 << 20, max_lines=100)
    b, _ = store.create(SCOPE, "key_a", f, CHAT, "24h", None)
    await queue.publish(b.id, b.total)
    await queue.publish(b.id, b.total)  # again, as after a crash between the steps: no-op
    store.started(b.id)
    return b.id


def _queued(db: Database) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(QueuedLine)) or 0


async def _until_final(store: BatchStore, batch_id: str, timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while (b := store.get(batch_id)).status not in ("completed", "cancelled", "expired"):
        assert time.monotonic() < deadline, b.status
        await asyncio.sleep(0.02)
    return b


async def test_a_dead_workers_line_is_reclaimed_after_its_lease(db: Database,
                                                                  tmp_path: Path) -> None:
    clock = Clock()
    files, store, queue = _parts(db, tmp_path, clock)
    batch_id = await _batch(files, store, queue, 3)
    dead = await queue.claim("dead-worker", 1)  # claims a line, then never comes back
    assert [(j.index, j.deliveries) for j in dead] == [(0, 1)]
    assert await queue.held(batch_id) == 1
    runner = Runner()
    alive = _worker("alive", store, queue, files, runner)
    alive.start()
    try:
        deadline = time.monotonic() + 10
        while sorted(runner.ran) != ["c1", "c2"]:  # everything but the leased line
            assert time.monotonic() < deadline, runner.ran
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        assert store.get(batch_id).status == "in_progress"  # line 0 is still leased
        clock.ahead = LEASE_S + 1  # the dead worker's lease runs out
        b = await _until_final(store, batch_id)
    finally:
        await alive.stop()
    assert sorted(runner.ran) == ["c0", "c1", "c2"]
    assert (b.status, b.completed, b.failed) == ("completed", 3, 0)
    out = read_lines(files.path(b.output_file_id).read_bytes())
    assert [o["custom_id"] for o in out] == ["c0", "c1", "c2"]
    assert await queue.held(batch_id) == 0 and await queue.claim("x", 10) == []


async def test_a_line_run_twice_is_stored_once(db: Database, tmp_path: Path) -> None:
    clock = Clock()
    files, store, queue = _parts(db, tmp_path, clock)
    batch_id = await _batch(files, store, queue, 2)
    slow = await queue.claim("slow", 1)  # hangs past its lease...
    clock.ahead = LEASE_S + 1
    fast = await queue.claim("fast", 2)  # ...so its line is delivered again
    assert [(j.index, j.deliveries) for j in fast] == [(0, 2), (1, 1)]
    first = LineResult(200, "req_fast", {"by": "fast"})
    assert store.record(batch_id, 0, "c0", first) == (True, False)
    assert store.record(batch_id, 1, "c1", first) == (True, True)
    await queue.ack(fast[0])
    await queue.ack(fast[1])
    # the slow worker finishes too: its result changes nothing, its ack neither
    assert store.record(batch_id, 0, "c0", LineResult(200, "req_slow", {"by": "slow"})) == (
        False, False)
    await queue.ack(slow[0])
    b = store.get(batch_id)
    assert (b.completed, b.failed, b.output_tokens) == (2, 0, 0)
    # both lines delivered once more (as if acks were lost): a worker acks them unrun,
    # and its housekeeping finalizes the batch, once
    await queue.publish(batch_id, 2)
    runner = Runner()
    late = _worker("late", store, queue, files, runner)
    late.start()
    try:
        b = await _until_final(store, batch_id)
        deadline = time.monotonic() + 10
        while _queued(db):  # acked, each of them
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
    finally:
        await late.stop()
    assert runner.ran == [] and b.status == "completed"
    assert Finalizer(db, files, LEASE_S).finalize(batch_id) is None
    out = read_lines(files.path(b.output_file_id).read_bytes())
    assert [(o["custom_id"], o["response"]["body"]) for o in out] == [
        ("c0", {"by": "fast"}), ("c1", {"by": "fast"})]


async def test_claims_never_overlap_and_leases_extend(db: Database, tmp_path: Path) -> None:
    clock = Clock()
    files, store, queue = _parts(db, tmp_path, clock)
    batch_id = await _batch(files, store, queue, 20)
    claims = await asyncio.gather(*(queue.claim(f"w{i}", 3) for i in range(8)))
    got = [(j.batch_id, j.index) for c in claims for j in c]
    assert len(got) == len(set(got)) == 20  # each line to one worker only
    owner, mine = next((f"w{i}", c) for i, c in enumerate(claims) if c)  # 24 asked for 20
    clock.ahead = LEASE_S / 2
    await queue.extend(owner, mine)
    clock.ahead = LEASE_S + 1  # the others' leases ran out; this one's was renewed
    again = await queue.claim("w9", 50)
    assert {j.index for j in again}.isdisjoint({j.index for j in mine})
    assert len(again) == 20 - len(mine)
    await queue.release(owner, mine[0], 0.0)  # handed back: claimable, not a delivery
    back = await queue.claim("w10", 50)
    assert [(j.index, j.deliveries) for j in back] == [(mine[0].index, 1)]
    await queue.drop(batch_id)  # only the lines nobody holds go
    assert await queue.held(batch_id) == len(again) + len(mine)


class Slots:
    """An engine's admission queue, as the worker sees it."""

    def __init__(self, slots: int, busy: int, depth: int) -> None:
        self.slots, self.busy, self.depth = slots, busy, depth


class Engine:
    def __init__(self, queue: Slots) -> None:
        self.queue = queue


async def test_lines_wait_for_a_slot_nobody_else_wants(db: Database, tmp_path: Path) -> None:
    clock = Clock()
    files, store, queue = _parts(db, tmp_path, clock)
    batch_id = await _batch(files, store, queue, 2)
    slots = Slots(slots=2, busy=2, depth=0)  # live requests hold every slot
    runner = Runner()
    worker = _worker("polite", store, queue, files, runner)
    worker.engines = {"smollm2-135m-instruct": Engine(slots)}
    worker.start()
    try:
        await asyncio.sleep(0.3)
        assert runner.ran == [] and worker.running == 0  # nothing even claimed
        slots.busy, slots.depth = 1, 3  # a slot is free, but live requests wait for it
        await asyncio.sleep(0.3)
        assert runner.ran == []
        slots.depth = 0  # nobody waits: the lines go
        b = await _until_final(store, batch_id)
    finally:
        await worker.stop()
    assert b.status == "completed" and sorted(runner.ran) == ["c0", "c1"]


async def test_an_expired_batch_ends_with_its_unrun_lines_in_the_error_file(
        db: Database, tmp_path: Path) -> None:
    clock = Clock()
    files, store, queue = _parts(db, tmp_path, clock)
    batch_id = await _batch(files, store, queue, 3)
    assert store.record(batch_id, 1, "c1", LineResult(200, "req_1", {"ok": True}))[0]
    with db.session() as s, s.begin():
        s.execute(update(Batch).where(Batch.id == batch_id)
                  .values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    worker = _worker("sweeper", store, queue, files, Runner())
    await worker.housekeeping()
    b = store.get(batch_id)
    assert (b.status, b.completed, b.failed) == ("expired", 1, 0) and b.expired_at is not None
    assert [o["custom_id"] for o in read_lines(files.path(b.output_file_id).read_bytes())] == [
        "c1"]
    errors = read_lines(files.path(b.error_file_id).read_bytes())
    assert [(e["custom_id"], e["response"], e["error"]["code"]) for e in errors] == [
        ("c0", None, "batch_expired"), ("c2", None, "batch_expired")]
    assert _queued(db) == 0
