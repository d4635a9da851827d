"""``JobQueue`` on a Redis stream (``redis_url``): one stream ``<prefix>batch:lines``, one
consumer group ``batch``, every worker process a consumer.

Why streams and not a task library: a stream with a consumer group is exactly the
protocol the workers need and nothing more. Entries stay *pending* (unacknowledged, with
their delivery count and idle time) until acked, so a worker killed mid-line loses
nothing: ``XAUTOCLAIM`` hands its entries to another worker once they have been idle
for a lease. A library (arq, Celery, RQ) would bring its own retry, result and
serialisation model on top of the one the batch store already has in the database, and
a second place where state lives. Lines, results and batches stay in the database; the
stream only says which (batch, line) to run next.

- ``publish``: ``XADD {batch, idx}`` per line, pipelined; a ``batch:published:<id>`` key
  makes a second publish of the same batch a no-op (a publish cut short and repeated
  may add a line twice: it runs at least once and its result is written once anyway);
- ``claim``: ``XAUTOCLAIM`` entries idle longer than the lease (their worker died or hung)
  first, then ``XREADGROUP >`` for new ones; deliveries come from ``XPENDING``; entries
  of a dropped batch are acked unrun;
- ``extend``: ``XCLAIM ... JUSTID`` by the holder resets the idle time (the heartbeat);
- ``ack``: ``XACK`` and ``XDEL``;
- ``release``: ``XCLAIM`` with ``IDLE`` set so that the entry is reclaimable after about
  ``delay_s``, and ``RETRYCOUNT`` one less (a release is not a delivery);
- ``drop``: a ``batch:dropped:<id>`` key (expiring with the completion window);
- ``held``: ``XPENDING`` entries idle less than a lease, and their batch ids (``XRANGE``).

While Redis is down, ``claim`` returns nothing (nothing is lost: unacked entries stay
pending), ``publish`` raises ``ServiceUnavailableError`` (a new batch is refused with a
503, so nothing is accepted that could be lost), and the rest are retried by the worker's
next round.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis

from autoglm.batch.queue import Job
from autoglm.errors import ServiceUnavailableError
from autoglm.state.redis import RedisDown, RedisLink

GROUP = "batch"
PUBLISH_CHUNK = 1000
MARK_TTL_S = 3 * 86_400  # published/dropped marks outlive any completion window


class RedisQueue:
    def __init__(self, link: RedisLink, lease_s: float) -> None:
        self.link = link
        self.lease_s = lease_s
        self.stream = link.key("batch", "lines")
        self._group_ready = False

    @property
    def _lease_ms(self) -> int:
        return max(1, int(self.lease_s * 1000))

    async def _group(self, client: Any) -> None:
        if self._group_ready:
            return
        try:
            await client.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def ready(self) -> None:
        if not await self.link.ping():
            raise ServiceUnavailableError(
                "the batch queue (Redis) is not reachable: new batches are refused until it "
                "is back (running ones wait; nothing is lost)", retry_after=5)

    async def publish(self, batch_id: str, count: int) -> None:
        mark = self.link.key("batch", "published", batch_id)

        async def run(client: Any) -> None:
            await self._group(client)
            if await client.exists(mark):
                return
            for start in range(0, count, PUBLISH_CHUNK):
                pipe = client.pipeline(transaction=False)
                for i in range(start, min(count, start + PUBLISH_CHUNK)):
                    pipe.xadd(self.stream, {"batch": batch_id, "idx": str(i)})
                await pipe.execute()
            await client.set(mark, b"1", ex=MARK_TTL_S)

        try:
            await self.link.call(run)
        except RedisDown:
            raise ServiceUnavailableError(
                "the batch queue (Redis) is not reachable: the batch was not accepted; try "
                "again shortly", retry_after=5) from None

    async def claim(self, consumer: str, limit: int) -> list[Job]:
        if limit <= 0:
            return []
        try:
            return await self.link.call(lambda c: self._claim(c, consumer, limit))
        except RedisDown:
            return []  # nothing is lost: the entries stay in the stream
        except redis.exceptions.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._group_ready = False  # a Redis that lost its data: made again next round
            return []

    async def _claim(self, client: Any, consumer: str, limit: int) -> list[Job]:
        await self._group(client)
        entries: list[tuple[bytes, dict[bytes, bytes]]] = []
        reply = await client.xautoclaim(self.stream, GROUP, consumer, self._lease_ms,
                                        start_id="0-0", count=limit)
        entries += [(eid, fields) for eid, fields in reply[1] if fields]
        if len(entries) < limit:
            got = await client.xreadgroup(GROUP, consumer, {self.stream: ">"},
                                          count=limit - len(entries))
            for _, batch in got or []:
                entries += [(eid, fields) for eid, fields in batch if fields]
        if not entries:
            return []
        pipe = client.pipeline(transaction=False)
        for eid, fields in entries:
            pipe.xpending_range(self.stream, GROUP, min=eid, max=eid, count=1)
            pipe.exists(self.link.key("batch", "dropped", fields[b"batch"].decode()))
        answers = await pipe.execute()
        jobs: list[Job] = []
        dropped: list[bytes] = []
        for n, (eid, fields) in enumerate(entries):
            pending, gone = answers[2 * n], answers[2 * n + 1]
            if gone:
                dropped.append(eid)
                continue
            deliveries = int(pending[0]["times_delivered"]) if pending else 1
            jobs.append(Job(fields[b"batch"].decode(), int(fields[b"idx"]), deliveries,
                            eid.decode()))
        if dropped:
            await client.xack(self.stream, GROUP, *dropped)
            await client.xdel(self.stream, *dropped)
        return sorted(jobs, key=lambda j: (j.batch_id, j.index))

    async def extend(self, consumer: str, jobs: Sequence[Job]) -> None:
        if not jobs:
            return
        ids = [str(j.ref) for j in jobs]
        try:
            await self.link.call(lambda c: c.xclaim(self.stream, GROUP, consumer, 0, ids,
                                                    justid=True))
        except RedisDown:
            pass  # the next heartbeat tries again; the lease may still be running

    async def ack(self, job: Job) -> None:
        async def run(client: Any) -> None:
            pipe = client.pipeline(transaction=False)
            pipe.xack(self.stream, GROUP, str(job.ref))
            pipe.xdel(self.stream, str(job.ref))
            await pipe.execute()

        await self.link.call(run)  # RedisDown: the worker keeps the job and acks later

    async def release(self, consumer: str, job: Job, delay_s: float) -> None:
        idle_ms = max(0, self._lease_ms - int(delay_s * 1000))
        try:
            await self.link.call(lambda c: c.xclaim(
                self.stream, GROUP, consumer, 0, [str(job.ref)], idle=idle_ms,
                retrycount=max(0, job.deliveries - 1), justid=True))
        except RedisDown:
            pass  # not released: it idles out after its lease all the same

    async def drop(self, batch_id: str) -> None:
        await self.link.call(lambda c: c.set(self.link.key("batch", "dropped", batch_id),
                                             b"1", ex=MARK_TTL_S))

    async def held(self, batch_id: str) -> int:
        async def run(client: Any) -> int:
            await self._group(client)
            pending = await client.xpending_range(self.stream, GROUP, min="-", max="+",
                                                  count=10_000, idle=None)
            live = [p["message_id"] for p in pending
                    if int(p["time_since_delivered"]) < self._lease_ms]
            if not live:
                return 0
            pipe = client.pipeline(transaction=False)
            for eid in live:
                pipe.xrange(self.stream, min=eid, max=eid, count=1)
            rows = await pipe.execute()
            return sum(1 for r in rows if r and r[0][1].get(b"batch") == batch_id.encode())

        return await self.link.call(run)
