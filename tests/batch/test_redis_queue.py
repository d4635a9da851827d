"""The batch queue on a real Redis stream (``RedisQueue``): at-least-once delivery with
leases, reclaim after a dead worker's lease, release, drop, held, and Redis outages
(claims return nothing, new batches are refused with a 503, nothing is lost)."""

from __future__ import annotations

import asyncio

import pytest

from autoglm.batch.redis_queue import RedisQueue
from autoglm.errors import ServiceUnavailableError
from autoglm.state.redis import RedisLink
from tests.redis_server import RedisServer, redis_server

__all__ = ["redis_server"]


@pytest.fixture
async def queue(redis_server: RedisServer):  # noqa: ANN201
    link = RedisLink(redis_server.url, prefix="t:", retry_s=0.05)
    yield RedisQueue(link, lease_s=0.3)
    await link.close()


async def test_each_line_goes_to_one_worker_and_is_gone_once_acked(queue: RedisQueue) -> None:
    await queue.publish("batch_a", 5)
    await queue.publish("batch_a", 5)  # a second publish adds nothing
    first = await queue.claim("w1", 3)
    second = await queue.claim("w2", 3)
    assert [j.index for j in first] == [0, 1, 2] and [j.index for j in second] == [3, 4]
    assert {j.deliveries for j in first + second} == {1}
    assert await queue.claim("w3", 3) == []
    for job in first + second:
        await queue.ack(job)
    await asyncio.sleep(0.4)
    assert await queue.claim("w3", 10) == []  # acked: never again


async def test_a_dead_workers_lines_are_claimed_again_after_its_lease(queue: RedisQueue) -> None:
    await queue.publish("batch_b", 2)
    taken = await queue.claim("dead", 2)
    assert len(taken) == 2
    assert await queue.held("batch_b") == 2
    await asyncio.sleep(0.35)  # no heartbeat: the lease runs out
    assert await queue.held("batch_b") == 0
    again = await queue.claim("alive", 5)
    assert [(j.index, j.deliveries) for j in again] == [(0, 2), (1, 2)]


async def test_a_heartbeat_keeps_the_lease(queue: RedisQueue) -> None:
    await queue.publish("batch_c", 1)
    jobs = await queue.claim("w1", 1)
    for _ in range(4):
        await asyncio.sleep(0.15)
        await queue.extend("w1", jobs)
    assert await queue.claim("w2", 1) == []  # 0.6 s held, lease 0.3 s
    assert await queue.held("batch_c") == 1


async def test_release_hands_a_line_back_without_counting_a_delivery(queue: RedisQueue) -> None:
    await queue.publish("batch_d", 1)
    job = (await queue.claim("w1", 1))[0]
    await queue.release("w1", job, delay_s=0.1)
    await asyncio.sleep(0.15)
    again = await queue.claim("w2", 1)
    assert [(j.index, j.deliveries) for j in again] == [(0, 1)]


async def test_dropped_batches_are_not_run(queue: RedisQueue) -> None:
    await queue.publish("batch_e", 3)
    await queue.publish("batch_f", 1)
    await queue.drop("batch_e")
    jobs = await queue.claim("w1", 10)
    assert [(j.batch_id, j.index) for j in jobs] == [("batch_f", 0)]


async def test_redis_down_refuses_new_batches_and_loses_nothing(
        queue: RedisQueue, redis_server: RedisServer) -> None:
    await queue.publish("batch_g", 2)
    redis_server.stop()
    assert await queue.claim("w1", 2) == []
    with pytest.raises(ServiceUnavailableError) as caught:
        await queue.publish("batch_h", 1)
    assert caught.value.status == 503
    # the test's Redis keeps nothing across a restart (durability across one is Redis's own
    # appendonly file): what this shows is that the queue recovers by itself
    redis_server.start()
    await asyncio.sleep(0.1)
    assert await queue.claim("w1", 2) == []  # the stream and its group are gone: made again
    await queue.publish("batch_i", 1)
    assert [j.batch_id for j in await queue.claim("w1", 2)] == ["batch_i"]
