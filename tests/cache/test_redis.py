"""The response cache in Redis, on the real model and a ``redis-server`` of the test's own:
shared by two apps (processes), kept under the prefix with its TTL and expiring, a hit
passing the output stages once like a fresh answer, and Redis going away bypasses the
cache while inference goes on."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.cache.support import USE, SayPii, cache_counts, chat, json_text, run_app
from tests.conftest import make_settings
from tests.redis_server import RedisServer

pytestmark = pytest.mark.model


async def test_shared_through_redis_with_its_ttl(tmp_path: Path,
                                                 redis_server: RedisServer) -> None:
    settings = make_settings(tmp_path / "data", redis_url=redis_server.url,
                             response_cache_ttl_s=1.5)
    body = chat("Name a planet.")
    async for one in run_app(settings):
        async for two in run_app(settings.model_copy(update={"data_dir": tmp_path / "two"})):
            cache = one.app.state.response_cache
            redis = one.app.state.redis
            first = await one.post("/v1/chat/completions", body, headers=USE)
            await cache.store.settled()
            keys = await redis.client.keys(redis.key("cache", "*"))
            assert first.headers["x-autoglm-cache"] == "miss" and len(keys) == 1
            assert keys[0].startswith(b"autoglm:cache:")
            assert 0 < await redis.client.pttl(keys[0]) <= 1500
            shared = await two.post("/v1/chat/completions", body, headers=USE)
            assert shared.headers["x-autoglm-cache"] == "hit"  # the other process's answer
            assert json_text(shared) == json_text(first)
            await asyncio.sleep(1.6)
            expired = await one.post("/v1/chat/completions", body, headers=USE)
            assert expired.headers["x-autoglm-cache"] == "miss"


async def test_output_stages_see_a_hit_once_and_store_nothing_of_theirs(
        tmp_path: Path, redis_server: RedisServer) -> None:
    settings = make_settings(tmp_path / "data", redis_url=redis_server.url)
    async for client in run_app(settings, {"guard_output": [SayPii()]}):
        r = await client.post("/v1/chat/completions", chat("Hello"), headers=USE)
        assert r.headers["x-autoglm-cache"] == "miss"
        assert json_text(r).endswith("call 138****5678 or a***@example.com")  # masked
        await client.app.state.response_cache.store.settled()
        redis = client.app.state.redis
        (key,) = await redis.client.keys(redis.key("cache", "*"))
        stored = await redis.client.get(key)
        assert b" call " not in stored  # the engine's answer is stored, not the stages'
        for value in SayPii.VALUES:
            assert value.encode() not in stored
        hit = await client.post("/v1/chat/completions", chat("Hello"), headers=USE)
        assert hit.headers["x-autoglm-cache"] == "hit"
        assert json_text(hit) == json_text(r)  # the stage added its text once, as before


async def test_redis_down_bypasses_the_cache_and_inference_goes_on(
        tmp_path: Path, redis_server: RedisServer) -> None:
    settings = make_settings(tmp_path / "data", redis_url=redis_server.url)
    body = chat("Name a mountain.")
    async for client in run_app(settings):
        redis = client.app.state.redis
        assert (await client.post("/v1/chat/completions", body,
                                  headers=USE)).headers["x-autoglm-cache"] == "miss"
        await client.app.state.response_cache.store.settled()
        redis_server.stop()
        before = await cache_counts(client)
        for _ in range(2):
            r = await client.post("/v1/chat/completions", body, headers=USE)
            assert r.status_code == 200 and r.headers["x-autoglm-cache"] == "bypass"
            assert json_text(r)
        assert (await cache_counts(client))["bypass"] - before["bypass"] == 2
        assert redis.down
        redis_server.start()  # an empty Redis: what was cached is gone
        await asyncio.sleep(redis.retry_s + 0.1)
        again = await client.post("/v1/chat/completions", body, headers=USE)
        assert again.headers["x-autoglm-cache"] == "miss"
        await client.app.state.response_cache.store.settled()
        hit = await client.post("/v1/chat/completions", body, headers=USE)
        assert hit.headers["x-autoglm-cache"] == "hit"
