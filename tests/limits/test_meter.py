"""The meter: per key, project and tenant, requests and tokens per window and tenants'
daily quotas; exact in one process, shared through a real Redis across several (the sum
holds), and per process while Redis is down."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from autoglm.errors import QuotaExceededError, RateLimitError
from autoglm.limits import LimitBook, Meter
from autoglm.limits.meter import reset_text
from autoglm.state.redis import RedisLink
from tests.redis_server import RedisServer


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def meter(defaults: dict[str, Any], **kw: Any) -> Meter:
    return Meter(LimitBook(defaults), **kw)


async def test_requests_per_window_then_429_with_retry_after_and_headers() -> None:
    clock = Clock()
    m = meter({"key": {"requests_per_minute": 3}}, clock=clock)
    for left in (2, 1, 0):
        d = await m.take("key_a", None, None, 10)
        assert dict(d.headers)[b"x-ratelimit-remaining-requests"] == str(left).encode()
        assert dict(d.headers)[b"x-ratelimit-limit-requests"] == b"3"
    with pytest.raises(RateLimitError) as caught:
        await m.take("key_a", None, None, 10)
    err = caught.value
    assert err.status == 429 and err.code == "rate_limit_exceeded"
    assert "requests per minute on key key_a: limit 3, used 3, requested 1" in err.message
    assert 0 < err.retry_after <= 60
    assert dict(err.headers)[b"x-ratelimit-remaining-requests"] == b"0"
    await m.take("key_b", None, None, 10)  # another key has its own
    clock.now += 60  # the next window
    await m.take("key_a", None, None, 10)


async def test_tokens_are_reserved_then_settled_to_the_real_usage() -> None:
    m = meter({"tenant": {"tokens_per_minute": 100}}, clock=Clock())
    first = await m.take("key_a", None, "ten_a", 40)
    await m.take("key_a", None, "ten_a", 40)
    with pytest.raises(RateLimitError) as caught:
        await m.take("key_a", None, "ten_a", 40)
    assert "tokens per minute on tenant ten_a" in caught.value.message
    m.settle(first, 5)  # used 5 of its 40: 35 come back
    d = await m.take("key_a", None, "ten_a", 40)
    assert dict(d.headers)[b"x-ratelimit-remaining-tokens"] == b"15"  # 100 - 5 - 40 - 40
    with pytest.raises(RateLimitError) as too_big:
        await m.take("key_a", None, "ten_a", 101)
    assert "lower max_tokens" in too_big.value.message


async def test_the_tightest_scope_refuses_and_nothing_is_charged_then() -> None:
    m = meter({"key": {"requests_per_minute": 10}, "project": {"requests_per_minute": 2}},
              clock=Clock())
    await m.take("key_a", "prj_p", None, 1)
    await m.take("key_b", "prj_p", None, 1)
    with pytest.raises(RateLimitError, match="on project prj_p"):
        await m.take("key_a", "prj_p", None, 1)
    d = await m.take("key_a", "prj_q", None, 1)  # the refusal charged key_a nothing
    assert dict(d.headers)[b"x-ratelimit-remaining-requests"] == b"1"  # prj_q is tighter


async def test_daily_quota_of_a_tenant() -> None:
    clock = Clock(86_400 * 20_000 + 100)
    m = meter({"tenant": {"tokens_per_day": 50}}, clock=clock)
    await m.take("key_a", None, "ten_a", 30)
    with pytest.raises(QuotaExceededError) as caught:
        await m.take("key_a", None, "ten_a", 30)
    assert caught.value.code == "insufficient_quota" and caught.value.status == 429
    assert caught.value.retry_after == pytest.approx(86_300)
    clock.now += 86_400
    await m.take("key_a", None, "ten_a", 30)


def test_overrides_replace_defaults_field_by_field() -> None:
    book = LimitBook({"key": {"requests_per_minute": 5, "tokens_per_minute": 1000}})
    book.put("key", "key_vip", {"requests_per_minute": 0})  # 0: unlimited
    assert book.of("key", "key_vip").requests_per_minute is None
    assert book.of("key", "key_vip").tokens_per_minute == 1000
    assert book.of("key", "key_x").requests_per_minute == 5
    assert book.of("tenant", "ten_a") is None and book.of("key", None) is None


def test_reset_text_as_openai_writes_it() -> None:
    assert [reset_text(s) for s in (0.02, 1.5, 59.9, 360, 3725)] == [
        "20ms", "1.5s", "59.9s", "6m0s", "1h2m5s"]


async def test_two_processes_on_one_redis_hold_the_sum(redis_server: RedisServer) -> None:
    """Two meters (as two processes) take from one key as fast as they can: exactly the
    limit is accepted in the window, though most decisions are made without Redis."""
    limit = 200
    links = [RedisLink(redis_server.url, prefix="t:") for _ in range(2)]
    clock = Clock()
    meters = [Meter(LimitBook({"key": {"requests_per_minute": limit}}), link=link,
                    clock=clock) for link in links]
    for m in meters:
        await m.start()
    accepted = 0

    async def hammer(m: Meter) -> None:
        nonlocal accepted
        for _ in range(300):
            try:
                await m.take("key_shared", None, None, 1)
                accepted += 1
            except RateLimitError:
                pass
            await asyncio.sleep(0)

    await asyncio.gather(*(hammer(m) for m in meters))
    for m in meters:
        await m.stop()
    assert accepted == limit
    total = int(await links[0].client.get(links[0].key("rl", meters[0].buckets(
        "key_shared", None, None, clock.now)[0].name)))
    assert total == limit
    for link in links:
        await link.close()


async def test_redis_down_means_per_process_limits_then_recovery(
        redis_server: RedisServer) -> None:
    link = RedisLink(redis_server.url, prefix="t:", retry_s=0.05)
    clock = Clock()
    m = Meter(LimitBook({"key": {"requests_per_minute": 5}}), link=link, clock=clock)
    await m.take("key_a", None, None, 1)  # seen in Redis
    redis_server.stop()
    for _ in range(4):  # decided here, at once
        await m.take("key_a", None, None, 1)
    with pytest.raises(RateLimitError):
        await m.take("key_a", None, None, 1)
    assert link.down
    redis_server.start()
    await asyncio.sleep(0.1)
    clock.now += 60  # a new window: leased from Redis again
    d = await m.take("key_a", None, None, 1)
    assert not link.down
    bucket = m.buckets("key_a", None, None, clock.now)[0].name
    assert int(await link.client.get(link.key("rl", bucket))) >= 1
    assert dict(d.headers)[b"x-ratelimit-remaining-requests"] == b"4"
    await link.close()


async def test_lower_priority_work_leaves_the_rest_of_a_limit_to_live_calls() -> None:
    m = meter({"key": {"requests_per_minute": 10}}, clock=Clock())
    for _ in range(8):
        await m.take("key_a", None, None, 1, share=0.8)
    with pytest.raises(RateLimitError, match="kept for live requests"):
        await m.take("key_a", None, None, 1, share=0.8)
    await m.take("key_a", None, None, 1)  # a live call still fits
    await m.take("key_a", None, None, 1)
    with pytest.raises(RateLimitError):
        await m.take("key_a", None, None, 1)
