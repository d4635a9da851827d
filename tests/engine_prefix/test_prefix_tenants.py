"""Cached prefixes are scoped per tenant through the whole platform: the gateway sends
the caller's tenant with the job, a second tenant's identical prompt is a miss (by the
counters and by the time it takes), usage reports OpenAI's ``cached_tokens``, and
/metrics exports the counters. ``prefix_cache_scope = "platform"`` shares them."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from tests.conftest import MODEL, make_settings, start_app
from tests.engine_prefix.support import SYSTEM, Engine, chat

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
async def world(tmp_path_factory) -> AsyncIterator[dict[str, Any]]:
    settings = make_settings(tmp_path_factory.mktemp("prefix-tenants"), ctx_per_slot=1024,
                             max_body_bytes=16384)
    async for client in start_app(settings):
        out: dict[str, Any] = {"client": client}
        for name in ("a", "b"):
            t = (await client.post("/admin/v1/tenants", {"name": f"pfx-{name}"})).json()["id"]
            await client.http.put(f"/admin/v1/tenants/{t}/models", json={"models": [MODEL]},
                                  headers=client.auth)
            prn = (await client.post(f"/admin/v1/tenants/{t}/principals",
                                     {"name": "admin"})).json()["id"]
            await client.post(f"/admin/v1/principals/{prn}/bindings", {"role": "tenant_admin"})
            key = (await client.post(f"/admin/v1/principals/{prn}/keys", {})).json()
            out[name] = {"Authorization": f"Bearer {key['key']}"}
        yield out


def body(question: str, **kw: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": chat(SYSTEM, question), "max_tokens": 1,
            "temperature": 0, **kw}


def counters(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("autoglm_prefix_cache_") and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


async def timed(client, payload: dict[str, Any], auth: dict[str, str]) -> tuple[dict, float]:
    t0 = time.perf_counter()
    r = await client.http.post("/v1/chat/completions", json=payload, headers=auth)
    assert r.status_code == 200, r.text
    return r.json(), time.perf_counter() - t0


async def test_a_second_tenant_never_hits_the_first_tenants_cache(world) -> None:
    client, a, b = world["client"], world["a"], world["b"]
    first, _ = await timed(client, body("Do you sell cheese?"), a)
    assert first["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    second, t_hit = await timed(client, body("Do you ship to Canada?"), a)
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached > 100  # the system prompt and the template around it
    before = counters((await client.get("/metrics")).text)
    other, t_other = await timed(client, body("Do you ship to Canada?"), b)
    after = counters((await client.get("/metrics")).text)
    assert other["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert other["usage"]["prompt_tokens"] == second["usage"]["prompt_tokens"]
    assert other["choices"][0]["message"] == second["choices"][0]["message"]
    hits = [k for k in after if k.startswith("autoglm_prefix_cache_hits_total")]
    assert hits and all(after[k] == before.get(k) for k in hits)
    miss = f'autoglm_prefix_cache_misses_total{{model="{MODEL}"}}'
    assert after[miss] == before[miss] + 1
    assert t_other > 2 * t_hit, (t_other, t_hit)  # it prefilled the whole prompt
    # tenant a again: still a hit, and the counters say so
    again, _ = await timed(client, body("Do you ship to Canada?"), a)
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] >= cached
    last = counters((await client.get("/metrics")).text)
    assert sum(last[k] for k in hits) == sum(after[k] for k in hits) + 1
    reused = f'autoglm_prefix_cache_reused_tokens_total{{model="{MODEL}"}}'
    assert last[reused] >= after[reused] + cached
    assert f'autoglm_prefix_cache_evictions_total{{model="{MODEL}"}}' in last


async def test_a_stream_reports_cached_tokens_in_its_usage_chunk(world) -> None:
    client, a = world["client"], world["a"]
    r = await client.http.post("/v1/chat/completions", headers=a, json=body(
        "Do you ship to Mexico?", stream=True, stream_options={"include_usage": True}))
    chunks = [orjson.loads(line[6:]) for line in r.text.splitlines()
              if line.startswith("data: {")]
    usage = chunks[-1]["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] > 100


def test_platform_scope_shares_prefixes_between_tenants() -> None:
    engine = Engine(slots=1, scope="platform")
    try:
        prompt = engine.tokens(chat(SYSTEM, "Is there a loyalty programme?"))
        engine.run(prompt, max_tokens=1, tenant="a")
        hit = engine.run(prompt, max_tokens=1, tenant="b")
        assert hit.cached == len(prompt) - 2
        assert engine.stats()["hits"]["slot"] == 1
    finally:
        engine.close()
