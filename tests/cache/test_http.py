"""The response cache over HTTP on the real model, in this process's store: a hit after a
miss with the same answer (fresh id), a JSON answer replayed as a stream and the other way
round, what is not cached, a hit that needs no engine slot, the masked prompt as the key,
the response header, the metrics, and what the audit stage sees."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select

from autoglm.store.models import AuditRecord
from tests.cache.support import (
    USE,
    SeenByAudit,
    cache_counts,
    chat,
    json_text,
    run_app,
    sse_chunks,
    streamed_text,
)
from tests.conftest import MODEL, AppClient, make_settings

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
async def cached(tmp_path_factory: pytest.TempPathFactory
                 ) -> AsyncIterator[tuple[AppClient, SeenByAudit]]:
    # one slot and no waiting room: a request that needs the engine while it is busy is a 503
    settings = make_settings(tmp_path_factory.mktemp("cache-http"), slots=1, max_queue=0)
    seen = SeenByAudit()
    async for client in run_app(settings, {"audit": [seen]}):
        yield client, seen


async def post(client: AppClient, body: dict[str, Any], **headers: str) -> Any:
    r = await client.post("/v1/chat/completions", body, headers=headers)
    assert r.status_code == 200, r.text
    return r


async def test_a_hit_after_a_miss_is_the_same_answer(
        cached: tuple[AppClient, SeenByAudit]) -> None:
    client, seen = cached
    before = await cache_counts(client)
    first = await post(client, chat("Name a colour."), **USE)
    second = await post(client, chat("Name a colour."), **USE)
    assert (first.headers["x-autoglm-cache"], second.headers["x-autoglm-cache"]) == \
        ("miss", "hit")
    a, b = first.json(), second.json()
    assert b["choices"] == a["choices"] and b["usage"] == a["usage"]  # the cached usage
    assert b["usage"]["completion_tokens"] > 0
    assert b["id"] != a["id"] and b["id"].startswith("chatcmpl-")  # fresh per response
    assert isinstance(b["created"], int) and b["created"] >= a["created"]
    assert b["model"] == MODEL
    assert [seen.seen[r.headers["x-request-id"]] for r in (first, second)] == ["miss", "hit"]
    after = await cache_counts(client)
    assert (after["miss"] - before["miss"], after["hit"] - before["hit"]) == (1, 1)
    plain = await post(client, chat("Name a colour."))  # did not ask: not looked up
    assert "x-autoglm-cache" not in plain.headers
    assert seen.seen[plain.headers["x-request-id"]] is None
    client.app.state.audit.flush()  # and the audit record says so
    with client.app.state.db.session() as s:
        details = {r.request_id: r.detail for r in s.scalars(select(AuditRecord).where(
            AuditRecord.request_id.in_([x.headers["x-request-id"]
                                        for x in (first, second, plain)])))}
    assert [details[x.headers["x-request-id"]].get("cache") for x in (first, second, plain)] \
        == ["miss", "hit", None]


async def test_json_replayed_as_a_stream_and_a_stream_as_json(
        cached: tuple[AppClient, SeenByAudit]) -> None:
    client, _ = cached
    whole = await post(client, chat("Name a fruit."), **USE)
    streamed = await post(client, chat("Name a fruit.", stream=True,
                                       stream_options={"include_usage": True}), **USE)
    assert (whole.headers["x-autoglm-cache"], streamed.headers["x-autoglm-cache"]) == \
        ("miss", "hit")
    assert streamed.headers["content-type"].startswith("text/event-stream")
    chunks = sse_chunks(streamed.content)
    assert streamed_text(streamed.content) == json_text(whole)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == whole.json()["choices"][0][
        "finish_reason"]
    assert chunks[-1]["usage"] == whole.json()["usage"]  # asked for with include_usage
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"] != whole.json()["id"]
    assert streamed.content.endswith(b"data: [DONE]\n\n")

    first = await post(client, chat("Name a tree.", stream=True), **USE)
    again = await post(client, chat("Name a tree."), **USE)
    assert (first.headers["x-autoglm-cache"], again.headers["x-autoglm-cache"]) == \
        ("miss", "hit")
    assert json_text(again) == streamed_text(first.content)
    assert not any("usage" in c for c in sse_chunks(first.content))  # not asked for
    assert again.json()["usage"]["completion_tokens"] > 0


async def test_what_is_not_cached(cached: tuple[AppClient, SeenByAudit]) -> None:
    client, _ = cached
    store = client.app.state.response_cache.store
    kept = len(store)
    sampled = chat("Name a bird.", temperature=0.9)
    for _ in range(2):
        r = await post(client, sampled, **USE)
        assert r.headers["x-autoglm-cache"] == "bypass"
    assert len(store) == kept
    skipped = await post(client, chat("Name a bird."), **{"X-AutoGLM-Cache": "skip"})
    assert skipped.headers["x-autoglm-cache"] == "bypass" and len(store) == kept
    seeded = chat("Name a bird.", temperature=0.9, seed=42)  # a seed fixes the answer
    assert (await post(client, seeded, **USE)).headers["x-autoglm-cache"] == "miss"
    assert (await post(client, seeded, **USE)).headers["x-autoglm-cache"] == "hit"
    wrong = await client.post("/v1/chat/completions", chat("Name a bird."),
                              headers={"X-AutoGLM-Cache": "please"})
    assert wrong.status_code == 400 and "X-AutoGLM-Cache" in wrong.json()["error"]["message"]


async def test_a_hit_needs_no_engine_slot(cached: tuple[AppClient, SeenByAudit]) -> None:
    client, _ = cached
    body = chat("Name a river.")
    assert (await post(client, body, **USE)).headers["x-autoglm-cache"] == "miss"
    engine = client.app.state.engines[MODEL]
    long = asyncio.create_task(client.post("/v1/chat/completions", chat(
        "Write a long story about a dragon.", max_tokens=200, temperature=0.8)))
    try:
        for _ in range(500):
            if engine.queue.busy:
                break
            await asyncio.sleep(0.01)
        assert engine.queue.busy == 1  # the only slot is taken, and nobody may wait
        refused = await client.post("/v1/chat/completions", chat("Name a lake."),
                                    headers=USE)
        assert refused.status_code == 503  # a miss needs the engine
        hit = await post(client, body, **USE)
        assert hit.headers["x-autoglm-cache"] == "hit" and engine.queue.busy == 1
    finally:
        assert (await long).status_code == 200


async def test_the_key_is_the_masked_prompt(cached: tuple[AppClient, SeenByAudit]) -> None:
    client, _ = cached
    first = await post(client, chat("Repeat: my number is 13812345678."), **USE)
    # masked the same (138****5678): the engine would see the very same prompt
    other = await post(client, chat("Repeat: my number is 13899995678."), **USE)
    assert (first.headers["x-autoglm-cache"], other.headers["x-autoglm-cache"]) == \
        ("miss", "hit")
    stored = b"".join(client.app.state.response_cache.store.values())
    assert b"13812345678" not in stored and b"13899995678" not in stored
