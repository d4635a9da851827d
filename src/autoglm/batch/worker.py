"""The batch worker of ``autoglm serve``: claims lines from the queue and runs them, at
most ``batch_concurrency`` at once, behind live traffic.

Priority: a line is claimed only while some model has a free slot and nobody waiting,
and each claimed line waits, before it enters the pipeline, until its own model has a
free slot and an empty queue (``_yield_to_live``). Live requests therefore never queue
behind batch lines (a request arriving while lines run waits for at most the lines
already running, no more than ``batch_concurrency`` per process), and a batch only ever
uses capacity nobody else wants.

The worker also keeps its leases alive (every ``lease_s / 3``), stops the lines of a
batch that was cancelled or expired (seen within ``poll_s``; the line is cancelled in the
engine, its job acked, no result), and does the housekeeping any worker may do for any
batch: finishing the intake (copying its lines, ``intake``) and the publish of a batch
whose creator died before it was ``in_progress``, dropping the lines of cancelled and
expired batches, and finalizing batches (``finalize``), taking over from a finalizer
that died. A failure of one round (the database away for a moment) is logged and the
next round tries again: the worker never stops on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from autoglm.batch.batches import RUNNABLE, BatchStore, LineResult, LineWork
from autoglm.batch.finalize import Finalizer
from autoglm.batch.owner import Owners
from autoglm.batch.queue import Job, JobQueue
from autoglm.batch.runner import LineRunner, Retry

log = logging.getLogger("autoglm.batch")

MAX_DELIVERIES = 3  # a line whose worker died this often fails instead of running again
YIELD_S = 0.05  # how often a waiting line looks at its model's slots
CRASHED = ("worker_failed",
           (f"The line was started {MAX_DELIVERIES} times and its worker stopped each time "
            "before it finished."))


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def runnable(status: str, expires_at: datetime, now: datetime | None = None) -> bool:
    return status in RUNNABLE and (now or datetime.now(UTC)) < _aware(expires_at)


class BatchWorker:
    def __init__(self, *, store: BatchStore, queue: JobQueue, runner: LineRunner,
                 owners: Owners, finalizer: Finalizer, engines: dict[str, Any],
                 concurrency: int, lease_s: float, poll_s: float, name: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.queue = queue
        self.runner = runner
        self.owners = owners
        self.finalizer = finalizer
        self.engines = engines
        self.concurrency = concurrency
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.clock = clock
        self.name = name or f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(3)}"
        self._running: dict[int | str, tuple[Job, asyncio.Task[None]]] = {}
        self._stopped_batches: set[str] = set()  # cancelled or expired: lines end unrun
        self._entering: dict[int, int] = {}  # per engine: lines past the gate, no slot yet
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False

    # --- life ---------------------------------------------------------------------------------
    def start(self) -> None:
        if self.concurrency > 0 and self._loop_task is None:
            self._loop_task = asyncio.create_task(self._loop(), name="batch-worker")

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Stop claiming; lines in flight are cancelled and handed back to the queue."""
        self._stopping = True
        tasks = [t for _, t in self._running.values()]
        if self._loop_task is not None:
            tasks.append(self._loop_task)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)
        self._loop_task = None

    def wake(self) -> None:
        """A batch was created here: look for lines now, not at the next poll."""
        self._wake.set()

    def stopped(self, batch_id: str) -> None:
        """A batch was cancelled here: its lines in flight in this process stop now (other
        processes see it within ``poll_s``)."""
        self._stop_lines(batch_id)
        self._wake.set()

    @property
    def running(self) -> int:
        return len(self._running)

    # --- the loop -----------------------------------------------------------------------------
    async def _loop(self) -> None:
        next_chores = next_beat = 0.0
        while not self._stopping:
            self._wake.clear()
            try:
                now = self.clock()
                if now >= next_chores:
                    next_chores = now + self.poll_s
                    await self.housekeeping()
                    await self._watch()
                if now >= next_beat and self._running:
                    next_beat = now + self.lease_s / 3
                    await self.queue.extend(self.name, [j for j, _ in self._running.values()])
                await self._claim()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception("batch worker round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)

    def _room(self) -> bool:
        """Some model has a free slot and nobody waiting for one (or there is no model,
        and every line gets the pipeline's 404)."""
        return not self.engines or any(_idle(e, self._entering.get(id(e), 0))
                                       for e in self.engines.values())

    async def _claim(self) -> None:
        free = self.concurrency - len(self._running)
        if free <= 0 or not self._room():
            return
        for job in await self.queue.claim(self.name, free):
            task = asyncio.create_task(self._line(job), name=f"batch-line-{job.batch_id}")
            self._running[job.ref] = (job, task)

    async def _watch(self) -> None:
        """Cancel the lines in flight of batches that were cancelled (elsewhere) or expired."""
        batches = {j.batch_id for j, _ in self._running.values()}
        self._stopped_batches &= batches  # the others' lines have all ended
        if not batches:
            return
        statuses = await asyncio.to_thread(self.store.statuses, sorted(batches))
        now = datetime.now(UTC)
        for batch_id in batches:
            status = statuses.get(batch_id)
            if status is None or not runnable(*status, now):
                self._stop_lines(batch_id)

    def _stop_lines(self, batch_id: str) -> None:
        self._stopped_batches.add(batch_id)
        for job, task in list(self._running.values()):
            if job.batch_id == batch_id:
                task.cancel()

    # --- one line -----------------------------------------------------------------------------
    async def _line(self, job: Job) -> None:
        try:
            await self._run_line(job)
        except asyncio.CancelledError:
            await self._after_cancel(job)
        except Exception:  # noqa: BLE001 - handed back; the lease brings it again
            log.exception("a batch line could not be run",
                          extra={"batch": job.batch_id, "line": job.index})
            await self._quietly(self.queue.release(self.name, job, self.poll_s))
        finally:
            self._running.pop(job.ref, None)
            self._wake.set()

    async def _run_line(self, job: Job) -> None:
        work = await asyncio.to_thread(self.store.line, job.batch_id, job.index)
        if work is None or work.done or not runnable(work.status, work.expires_at):
            await self.queue.ack(job)  # gone, ran before (delivered twice), or stopped
            return
        if job.deliveries > MAX_DELIVERIES:
            await self._store(job, work, LineResult(None, None, None, error=CRASHED))
            return
        opened = await self._yield_to_live(work)
        try:
            identity = await self.owners.identity(work.key_id)
            outcome = await self.runner.run(work, identity, opened)
        finally:
            opened()
        if isinstance(outcome, Retry):
            await self.queue.release(self.name, job, outcome.delay_s)
            return
        await self._store(job, work, outcome)

    async def _store(self, job: Job, work: LineWork, result: LineResult) -> None:
        _, finished = await asyncio.to_thread(self.store.record, job.batch_id, job.index,
                                              work.custom_id, result)
        await self.queue.ack(job)
        if finished:
            await self._finalize(job.batch_id)

    async def _yield_to_live(self, work: LineWork) -> Callable[[], None]:
        """Wait until the line's model has a free slot and nobody waiting for one, counting
        this worker's lines that passed here and have no slot yet (so that two lines never
        take one free slot's place). Returns what to call once the line has its slot."""
        model = orjson.loads(work.body).get("model")
        engine = self.engines.get(model) if isinstance(model, str) else None
        if engine is None:
            return lambda: None  # the pipeline answers an unknown model
        key = id(engine)
        while not _idle(engine, self._entering.get(key, 0)):
            await asyncio.sleep(YIELD_S)
        self._entering[key] = self._entering.get(key, 0) + 1
        done = [False]

        def opened() -> None:
            if not done[0]:
                done[0] = True
                self._entering[key] -= 1

        return opened

    async def _after_cancel(self, job: Job) -> None:
        """Its batch stopped: acked without a result. The server stops: handed back."""
        if job.batch_id in self._stopped_batches and not self._stopping:
            await self._quietly(self.queue.ack(job))
        else:
            await self._quietly(self.queue.release(self.name, job, 0.0))

    async def _quietly(self, call: Any) -> None:
        try:
            await call
        except Exception:  # noqa: BLE001 - the lease brings the line back anyway
            log.warning("the batch queue could not be told", exc_info=True)

    def _tag(self) -> str:
        return f".{secrets.token_hex(4)}"

    # --- chores any worker may do ---------------------------------------------------------------
    async def housekeeping(self) -> None:
        for b in await asyncio.to_thread(self.store.unsettled):
            now = datetime.now(UTC)
            if b.status == "validating":
                if self.store.intake.stalled(b):  # its creator died (its lease ran out)
                    total = await asyncio.to_thread(self.store.intake.resume, b.id)
                    if total is not None:
                        await self.queue.publish(b.id, total)
                        await asyncio.to_thread(self.store.started, b.id)
            elif b.status == "in_progress" and b.completed + b.failed >= b.total:
                await self._finalize(b.id)
            elif b.status == "cancelling" or (b.status == "in_progress"
                                              and now >= _aware(b.expires_at)):
                await self.queue.drop(b.id)
                if await self.queue.held(b.id) == 0:
                    await self._finalize(b.id)
            elif b.status == "finalizing":
                await self._finalize(b.id)  # taken only if its finalizer's lease ran out

    async def _finalize(self, batch_id: str) -> None:
        ending = await asyncio.to_thread(self.finalizer.finalize, batch_id, self._tag())
        if ending is not None:
            log.info("batch finalized", extra={"batch": batch_id, "status": ending})


def _idle(engine: Any, entering: int = 0) -> bool:
    """No request waits for the engine, and a slot is free beyond ``entering`` lines'."""
    queue = getattr(engine, "queue", None)
    return queue is None or (queue.depth == 0 and queue.busy + entering < queue.slots)
