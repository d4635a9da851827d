import asyncio

import pytest

from autoglm.engine.admission import AdmissionQueue
from autoglm.errors import OverloadedError


async def test_slots_then_queue_then_overload() -> None:
    q = AdmissionQueue(slots=2, max_queue=1, timeout_s=5)
    a = await q.acquire("x")
    b = await q.acquire("x")
    assert q.busy == 2
    waiter = asyncio.create_task(q.acquire("x"))
    await asyncio.sleep(0)
    assert q.depth == 1
    with pytest.raises(OverloadedError) as info:
        await q.acquire("y")
    assert info.value.status == 503 and info.value.retry_after
    a.release()
    c = await asyncio.wait_for(waiter, 1)
    assert q.busy == 2 and q.depth == 0
    b.release()
    c.release()
    c.release()  # double release is harmless
    assert q.busy == 0


async def test_round_robin_across_owners() -> None:
    q = AdmissionQueue(slots=1, max_queue=10, timeout_s=5)
    first = await q.acquire("greedy")
    order: list[str] = []

    async def want(owner: str) -> None:
        permit = await q.acquire(owner)
        order.append(owner)
        await asyncio.sleep(0)
        permit.release()

    tasks = [asyncio.create_task(want("greedy")) for _ in range(3)]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(want("polite")))
    await asyncio.sleep(0)
    first.release()
    await asyncio.gather(*tasks)
    assert order[:2] == ["greedy", "polite"], order


async def test_timeout_gives_503_and_leaves_queue() -> None:
    q = AdmissionQueue(slots=1, max_queue=5, timeout_s=0.05)
    held = await q.acquire("a")
    with pytest.raises(OverloadedError):
        await q.acquire("b")
    assert q.depth == 0
    held.release()
    assert q.busy == 0


async def test_cancelled_waiter_leaves_queue_and_slot_is_not_lost() -> None:
    q = AdmissionQueue(slots=1, max_queue=5, timeout_s=5)
    held = await q.acquire("a")
    t = asyncio.create_task(q.acquire("b"))
    await asyncio.sleep(0)
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t
    assert q.depth == 0
    held.release()
    assert q.busy == 0
    again = await asyncio.wait_for(q.acquire("c"), 1)
    again.release()


async def test_one_caller_cannot_take_every_waiting_place() -> None:
    q = AdmissionQueue(slots=1, max_queue=4, timeout_s=5, max_share=0.5)
    held = await q.acquire("flood")
    flood = [asyncio.create_task(q.acquire("flood")) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(OverloadedError) as info:  # its share (2 of 4) is used up
        await q.acquire("flood")
    assert info.value.retry_after and "waiting" in info.value.message
    other = asyncio.create_task(q.acquire("other"))  # others still get a place
    await asyncio.sleep(0)
    assert q.depth == 3
    held.release()
    first = await asyncio.wait_for(flood[0], 1)
    first.release()
    served = await asyncio.wait_for(other, 1)  # round-robin: before the flood's second
    assert not flood[1].done()
    served.release()
    (await asyncio.wait_for(flood[1], 1)).release()
    assert q.busy == 0 and q.depth == 0
