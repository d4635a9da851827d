"""The response cache in front of an upstream pool (a stand-in OpenAI server process): a
hit never reaches the upstream, JSON and streamed answers replay in the other shape with
a fresh id, answers with more than text (tool calls, logprobs) are not kept, and the
output guard's masking is what is stored (in this process and in Redis)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from autoglm.settings import Settings

from tests.cache.support import USE, chat, json_text, run_app, sse_chunks, streamed_text
from tests.conftest import AppClient, make_settings
from tests.redis_server import RedisServer
from tests.standin import Standin

UP = "cache-upstream"


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standin]:
    st = Standin("cache", tmp_path_factory.mktemp("standin")).start()
    yield st
    st.kill()


def settings_for(data: Path, standin: Standin, **kw: Any) -> Settings:
    return make_settings(data, models=[
        {"id": UP, "engine": "openai", "instances": [{"url": standin.url}]}], **kw)


@pytest.fixture(scope="module")
async def client(tmp_path_factory: pytest.TempPathFactory,
                 standin: Standin) -> AsyncIterator[AppClient]:
    async for c in run_app(settings_for(tmp_path_factory.mktemp("cache-up"), standin)):
        yield c


@pytest.fixture(autouse=True)
def plain(standin: Standin) -> Iterator[None]:
    standin.control(answer="plain", say="The weather is fine today.", say_chunk=4)
    yield
    standin.control(answer="plain", say=None)


async def test_hits_never_reach_the_upstream_and_change_shape(client: AppClient,
                                                              standin: Standin) -> None:
    sent = standin.stats()["requests"]
    whole = await client.post("/v1/chat/completions", chat("a", UP), headers=USE)
    streamed = await client.post("/v1/chat/completions", chat("a", UP, stream=True),
                                 headers=USE)
    assert (whole.headers["x-autoglm-cache"], streamed.headers["x-autoglm-cache"]) == \
        ("miss", "hit")
    assert streamed_text(streamed.content) == json_text(whole) == "The weather is fine today."
    chunks = sse_chunks(streamed.content)
    assert {c["id"] for c in chunks} != {"chatcmpl-standin"}  # not the upstream's id
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert standin.stats()["requests"] == sent + 1

    first = await client.post("/v1/chat/completions", chat("b", UP, stream=True,
                                                           stream_options={
                                                               "include_usage": True}),
                              headers=USE)
    again = await client.post("/v1/chat/completions", chat("b", UP), headers=USE)
    assert (first.headers["x-autoglm-cache"], again.headers["x-autoglm-cache"]) == \
        ("miss", "hit")
    assert json_text(again) == streamed_text(first.content)
    assert again.json()["usage"] == sse_chunks(first.content)[-1]["usage"]
    assert again.json()["id"] != "chatcmpl-standin" and again.json()["model"] == UP
    assert standin.stats()["requests"] == sent + 2


async def test_answers_with_more_than_text_are_not_kept(client: AppClient,
                                                        standin: Standin) -> None:
    standin.control(answer="rich", say=None)
    sent = standin.stats()["requests"]
    for stream in (False, True, False):
        r = await client.post("/v1/chat/completions", chat("c", UP, stream=stream),
                              headers=USE)
        assert r.status_code == 200 and r.headers["x-autoglm-cache"] == "miss"
    assert standin.stats()["requests"] == sent + 3
    assert '"tool_calls"' in r.text  # passed on to the client as the upstream sent them


async def test_what_the_guard_masked_is_what_is_stored(client: AppClient,
                                                       standin: Standin) -> None:
    standin.control(say="Call 13812345678 or mail bob.li@example.com now.")
    r = await client.post("/v1/chat/completions", chat("d", UP, stream=True), headers=USE)
    assert r.headers["x-autoglm-cache"] == "miss"
    text = streamed_text(r.content)
    assert "138****5678" in text and "13812345678" not in text
    stored = b"".join(client.app.state.response_cache.store.values())
    assert b"138****5678" in stored
    assert b"13812345678" not in stored and b"bob.li@example.com" not in stored
    hit = await client.post("/v1/chat/completions", chat("d", UP), headers=USE)
    assert hit.headers["x-autoglm-cache"] == "hit" and json_text(hit) == text


async def test_nothing_raw_in_redis(tmp_path: Path, standin: Standin,
                                    redis_server: RedisServer) -> None:
    standin.control(say="Mail bob.li@example.com or call 13812345678.")
    async for c in run_app(settings_for(tmp_path / "data", standin,
                                        redis_url=redis_server.url)):
        r = await c.post("/v1/chat/completions", chat("e", UP), headers=USE)
        assert r.headers["x-autoglm-cache"] == "miss"
        await c.app.state.response_cache.store.settled()
        redis = c.app.state.redis
        (key,) = await redis.client.keys(redis.key("cache", "*"))
        stored = await redis.client.get(key)
        assert b"138****5678" in stored and b"@example.com" in stored
        assert b"13812345678" not in stored and b"bob.li@example.com" not in stored
        hit = await c.post("/v1/chat/completions", chat("e", UP, stream=True), headers=USE)
        assert hit.headers["x-autoglm-cache"] == "hit"
        assert streamed_text(hit.content) == json_text(r)
