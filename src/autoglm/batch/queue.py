"""How batch lines reach workers: the ``JobQueue`` protocol, and its embedded
implementation in the control-plane database (the default; no Redis needed).

Delivery is at least once. A worker *claims* lines; each claim holds a lease of
``lease_s`` that the worker *extends* while it works (heartbeat). A line is *acked* once
its result is stored (or once it is skipped, its batch cancelled or expired); a line
whose lease ran out (its worker died or hung) is claimed again by any worker, and
``Job.deliveries`` counts the claims. A line may therefore run twice; its result is
written once, keyed by (batch id, line index) (``batches.BatchStore.record``), so it
never appears twice in the output. ``release`` hands a line back to run later (the engine
was unavailable); ``drop`` forgets a batch's lines nobody holds (cancel, expiry);
``held`` counts a batch's lines under a live lease (a cancelled batch is closed once
none are).

A Redis Streams implementation (``redis_url``; ``state.redis.RedisLink``) fits the same
seven calls, one consumer group ``batch`` on one stream ``<prefix>batch:lines``:

- ``publish``: ``XADD`` one entry ``{batch, idx}`` per line (pipelined); entry id = ``Job.ref``;
- ``claim``: ``XAUTOCLAIM ... min-idle-time lease_s COUNT n`` first (lines of dead workers),
  then ``XREADGROUP GROUP batch <consumer> COUNT n STREAMS ... >`` for new ones;
  ``deliveries`` is the entry's delivery count (``XPENDING``);
- ``extend``: ``XCLAIM <ids> min-idle 0 JUSTID`` by the same consumer resets the idle time;
- ``ack``: ``XACK`` + ``XDEL``;
- ``release``: ``XCLAIM ... RETRYCOUNT n-1`` and no ack: the entry idles out and is
  reclaimed after the lease (streams have no delay; the lease is the backoff);
- ``drop``: a ``<prefix>batch:dropped:<id>`` key (expiring after the completion window);
  entries of a dropped batch are acked unrun when they are delivered;
- ``held``: ``XPENDING`` (extended form, ``IDLE`` under the lease) is small by
  construction (workers x concurrency entries); their ``{batch}`` fields by ``XRANGE``.

Lines, results and batches stay in the database either way: the queue only delivers
(batch id, line index). While Redis is down, ``claim`` returns nothing (work waits, no
loss: unacked entries stay pending) and new batches are refused with a 503.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import delete, func, insert, select, update

from autoglm.store.db import Database
from autoglm.store.models import QueuedLine

Clock = Callable[[], float]
PUBLISH_ROWS = 1000  # lines inserted per statement


@dataclass(frozen=True)
class Job:
    """One delivery of one line."""

    batch_id: str
    index: int
    deliveries: int  # claims of this line so far, this one included
    ref: int | str  # the queue's handle: a row id here, an entry id in Redis


class JobQueue(Protocol):
    async def ready(self) -> None:
        """Raise ``ServiceUnavailableError`` if a new batch could not be queued now."""

    async def publish(self, batch_id: str, count: int) -> None:
        """Lines 0..count-1 of the batch become claimable (idempotent)."""

    async def claim(self, consumer: str, limit: int) -> list[Job]:
        """Up to ``limit`` lines: ones whose lease ran out first, then new ones."""

    async def extend(self, consumer: str, jobs: Sequence[Job]) -> None:
        """Still working on these: their leases start again."""

    async def ack(self, job: Job) -> None:
        """Done with (result stored, or skipped): never delivered again."""

    async def release(self, consumer: str, job: Job, delay_s: float) -> None:
        """Not done: deliver it again after about ``delay_s``, not counted as a delivery."""

    async def drop(self, batch_id: str) -> None:
        """Forget the batch's lines that nobody holds."""

    async def held(self, batch_id: str) -> int:
        """The batch's lines under a live lease."""


class DatabaseQueue:
    """``JobQueue`` in the ``batch_queue`` table: a row per line not yet acked.

    A claim is one ``UPDATE ... WHERE id IN (SELECT ... LIMIT n) RETURNING``: atomic on
    SQLite (one writer at a time) and, with ``FOR UPDATE SKIP LOCKED``, on PostgreSQL, so
    concurrent workers (processes, replicas) never claim the same live line. Every call
    runs on a worker thread, never on the event loop.
    """

    def __init__(self, db: Database, lease_s: float, clock: Clock = time.time) -> None:
        self.db = db
        self.lease_s = lease_s
        self.clock = clock
        self._postgres = db.engine.dialect.name == "postgresql"

    async def ready(self) -> None:
        return None  # the database is the control plane: if it is down, so is the request

    async def publish(self, batch_id: str, count: int) -> None:
        await asyncio.to_thread(self._publish, batch_id, count)

    def _publish(self, batch_id: str, count: int) -> None:
        now = self.clock()
        with self.db.session() as s, s.begin():
            if s.scalar(select(func.count()).select_from(QueuedLine)
                        .where(QueuedLine.batch_id == batch_id)):
                return  # published before (a retry after a crash between the two steps)
            for start in range(0, count, PUBLISH_ROWS):
                s.execute(insert(QueuedLine), [
                    {"batch_id": batch_id, "idx": i, "run_after": now, "deliveries": 0}
                    for i in range(start, min(count, start + PUBLISH_ROWS))])

    async def claim(self, consumer: str, limit: int) -> list[Job]:
        if limit <= 0:
            return []
        return await asyncio.to_thread(self._claim, consumer, limit)

    def _claim(self, consumer: str, limit: int) -> list[Job]:
        now = self.clock()
        due = (select(QueuedLine.id).where(QueuedLine.run_after <= now)
               .order_by(QueuedLine.run_after, QueuedLine.id).limit(limit))
        if self._postgres:
            due = due.with_for_update(skip_locked=True)
        stmt = (update(QueuedLine).where(QueuedLine.id.in_(due.scalar_subquery()))
                .values(claimed_by=consumer, run_after=now + self.lease_s,
                        deliveries=QueuedLine.deliveries + 1)
                .returning(QueuedLine.id, QueuedLine.batch_id, QueuedLine.idx,
                           QueuedLine.deliveries))
        with self.db.session() as s, s.begin():
            rows = s.execute(stmt).all()
        return sorted((Job(r.batch_id, r.idx, r.deliveries, r.id) for r in rows),
                      key=lambda j: (j.batch_id, j.index))

    async def extend(self, consumer: str, jobs: Sequence[Job]) -> None:
        if jobs:
            await asyncio.to_thread(self._extend, consumer, [j.ref for j in jobs])

    def _extend(self, consumer: str, refs: list[int | str]) -> None:
        with self.db.session() as s, s.begin():
            s.execute(update(QueuedLine)
                      .where(QueuedLine.id.in_(refs), QueuedLine.claimed_by == consumer)
                      .values(run_after=self.clock() + self.lease_s))

    async def ack(self, job: Job) -> None:
        await asyncio.to_thread(self._ack, job.ref)

    def _ack(self, ref: int | str) -> None:
        with self.db.session() as s, s.begin():
            s.execute(delete(QueuedLine).where(QueuedLine.id == ref))

    async def release(self, consumer: str, job: Job, delay_s: float) -> None:
        await asyncio.to_thread(self._release, consumer, job.ref, delay_s)

    def _release(self, consumer: str, ref: int | str, delay_s: float) -> None:
        with self.db.session() as s, s.begin():
            s.execute(update(QueuedLine)
                      .where(QueuedLine.id == ref, QueuedLine.claimed_by == consumer)
                      .values(claimed_by=None, run_after=self.clock() + delay_s,
                              deliveries=QueuedLine.deliveries - 1))

    async def drop(self, batch_id: str) -> None:
        await asyncio.to_thread(self._drop, batch_id)

    def _drop(self, batch_id: str) -> None:
        now = self.clock()
        with self.db.session() as s, s.begin():
            s.execute(delete(QueuedLine).where(
                QueuedLine.batch_id == batch_id,
                (QueuedLine.claimed_by.is_(None)) | (QueuedLine.run_after < now)))

    async def held(self, batch_id: str) -> int:
        return await asyncio.to_thread(self._held, batch_id)

    def _held(self, batch_id: str) -> int:
        with self.db.session() as s:
            return int(s.scalar(select(func.count()).select_from(QueuedLine).where(
                QueuedLine.batch_id == batch_id, QueuedLine.claimed_by.is_not(None),
                QueuedLine.run_after >= self.clock())) or 0)
