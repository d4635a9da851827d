"""Single-flight of identical misses (``cache/flight.py``): identical requests arriving
together run the real model once and all get its answer, JSON or streamed; two tenants
never share a flight; a leader that fails or hangs lets its followers run; and across
processes through a ``redis-server`` of the test's own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from autoglm.cache import Flights, Lead, MemoryStore, RedisStore
from autoglm.state.locks import Locks
from autoglm.state.redis import RedisLink
from tests.cache.support import USE, cache_counts, chat, json_text, run_app, streamed_text
from tests.cache.test_tenants import make_tenant
from tests.conftest import AppClient, make_settings
from tests.redis_server import RedisServer

N = 4


@pytest.fixture(scope="module")
async def client(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AppClient]:
    async for c in run_app(make_settings(tmp_path_factory.mktemp("flight"))):
        yield c


async def _ask(client: AppClient, content: str, stream: bool,
               who: dict[str, str] | None = None) -> tuple[str, str]:
    r = await client.http.post("/v1/chat/completions",
                               json=chat(content, max_tokens=24, stream=stream),
                               headers={**(who or client.auth), **USE})
    assert r.status_code == 200, r.text
    return r.headers["x-autoglm-cache"], streamed_text(r.content) if stream else json_text(r)


@pytest.mark.model
async def test_identical_misses_run_the_model_once(client: AppClient) -> None:
    before = await cache_counts(client)
    answers = await asyncio.gather(*(_ask(client, "Name a river.", stream=i % 2 == 1)
                                     for i in range(N)))
    after = await cache_counts(client)
    assert (after["miss"] - before["miss"], after["hit"] - before["hit"]) == (1, N - 1)
    assert sorted(result for result, _ in answers) == ["hit"] * (N - 1) + ["miss"]
    assert len({text for _, text in answers}) == 1 and answers[0][1]
    assert len(client.app.state.response_cache.flights) == 0  # nothing left waiting


@pytest.mark.model
async def test_two_tenants_never_share_a_flight(client: AppClient) -> None:
    tenant = await make_tenant(client, "flight-a")
    before = await cache_counts(client)
    answers = await asyncio.gather(*(_ask(client, "Name a lake.", stream=False,
                                          who=tenant["auth"] if i % 2 else None)
                                     for i in range(N)))
    after = await cache_counts(client)
    assert (after["miss"] - before["miss"], after["hit"] - before["hit"]) == (2, N - 2)
    for who in (0, 1):  # each tenant: one miss, its own answer to the other requests
        assert sorted(answers[i][0] for i in range(who, N, 2)) == ["hit", "miss"]


async def test_followers_get_the_answer_and_run_when_the_leader_fails() -> None:
    store = MemoryStore(60, 100, 1 << 20)
    flights = Flights(store, wait_s=30)
    lead = await flights.join("k")
    assert isinstance(lead, Lead)
    followers = [asyncio.create_task(flights.join("k")) for _ in range(3)]
    await asyncio.sleep(0.01)
    lead.done(b"answer")
    assert await asyncio.gather(*followers) == [b"answer"] * 3
    assert await store.get("k") == b"answer" and len(flights) == 0
    lead = await flights.join("f")
    follower = asyncio.create_task(flights.join("f"))
    await asyncio.sleep(0.01)
    lead.done(None)  # failed, or kept no answer: the follower runs the model itself
    mine = await follower
    assert isinstance(mine, Lead) and mine.future is None


async def test_a_hung_leader_holds_its_followers_no_longer_than_the_wait() -> None:
    flights = Flights(MemoryStore(60, 100, 1 << 20), wait_s=0.2)
    hung = await flights.join("k")
    late = await flights.join("k")  # waits wait_s, then runs itself
    assert isinstance(late, Lead) and late.future is None
    fresh = await flights.join("k")  # the stuck flight is dropped: this one leads anew
    assert isinstance(fresh, Lead) and fresh.future is not None
    assert isinstance(hung, Lead)
    hung.done(b"late")  # its end changes nothing for the new flight
    assert len(flights) == 1
    fresh.done(None)
    assert len(flights) == 0


async def test_across_processes_through_redis(redis_server: RedisServer) -> None:
    parts = []
    for _ in range(2):  # two processes: each its own link, locks and flights
        link = RedisLink(redis_server.url, prefix="sf:")
        locks = Locks(redis_server.url, prefix="sf:")
        parts.append((link, locks, Flights(RedisStore(link, 60), locks, wait_s=10,
                                           poll_s=0.02, lease_s=1.0)))
    (_, locks_one, one), (_, _, two) = parts
    try:
        lead = await one.join("k")
        assert isinstance(lead, Lead) and lead.lease is not None  # it took the lock
        elsewhere = [asyncio.create_task(two.join("k")) for _ in range(2)]
        await asyncio.sleep(0.2)
        assert not any(t.done() for t in elsewhere)  # waiting for the other process
        lead.done(b"answer")
        assert await asyncio.gather(*elsewhere) == [b"answer", b"answer"]
        await one.settled()
        assert not locks_one.held("cache:k")  # released once the answer was stored
        # a leader that died: its lock is not renewed, its lease runs out, and the
        # process that waited runs the model itself
        assert locks_one.take("cache:d", lease_s=0.3, renew_for_s=0.0) is not None
        mine = await two.join("d")
        assert isinstance(mine, Lead)
        mine.done(None)
    finally:
        for link, locks, _ in parts:
            await link.close()
            locks.close()
