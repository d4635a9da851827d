"""The response cache's parts without a model: keys, what is cacheable, the bounded store,
recording and replaying an answer, and the lookup stage's opt-in rules."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from autoglm.cache import (
    MemoryStore,
    Recording,
    Replay,
    ResponseCache,
    cache_key,
    decode,
    model_digest,
    scope_of,
    uncacheable,
)
from autoglm.engine.base import Delta, Finished, ModelCard, Started
from autoglm.errors import InvalidRequestError
from autoglm.pipeline.context import RequestContext
from autoglm.pipeline.request import InferenceRequest
from autoglm.pipeline.stages.cache import Cache
from autoglm.pipeline.stages.guard import PiiGuards

GUARDS = PiiGuards({"default": "mask"}, {"ten_b": {"cn_mobile": "block"}})
CARD = ModelCard(id="m", owned_by="t", created=0, context_length=512,
                 verification={"load": {"sha256": "ab" * 32, "bytes": 1}})


def body(**kw: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "temperature": 0,
            **kw}


def key(scope: str = "platform", **kw: Any) -> str:
    return cache_key(scope, "m", "sha256:x", "chat", 512, body(**kw))


def test_key_ignores_delivery_fields_and_sorts_keys() -> None:
    assert key() == key(stream=True, stream_options={"include_usage": True}, user="u1")
    reordered = {"temperature": 0, "messages": [{"content": "Hi", "role": "user"}],
                 "model": "m"}
    assert cache_key("platform", "m", "sha256:x", "chat", 512, reordered) == key()
    assert key() != key(max_tokens=5)
    assert key() != cache_key("platform", "m", "sha256:x", "completion", 512, body())
    assert key() != cache_key("platform", "m", "sha256:y", "chat", 512, body())
    assert key() != cache_key("platform", "m", "sha256:x", "chat", 256, body())


def test_key_holds_the_tenant() -> None:
    assert scope_of(None) == "platform" and scope_of("ten_a") == "tenant:ten_a"
    keys = {key(scope_of(t)) for t in (None, "ten_a", "ten_b")}
    assert len(keys) == 3


@pytest.mark.parametrize(("fields", "why"), [
    ({}, "not deterministic"),
    ({"temperature": 0.7}, "not deterministic"),
    ({"temperature": False}, "not deterministic"),
    ({"seed": True}, "not deterministic"),
    ({"temperature": 0, "n": 2}, "n > 1"),
    ({"seed": 7, "best_of": 3}, "best_of > 1"),
    ({"temperature": 0, "logprobs": True}, "logprobs"),
    ({"temperature": 0, "top_logprobs": 2}, "logprobs"),
])
def test_what_is_not_cached(fields: dict[str, Any], why: str) -> None:
    reason = uncacheable({"model": "m", **fields})
    assert reason is not None and reason.startswith(why)


@pytest.mark.parametrize("fields", [{"temperature": 0}, {"temperature": 0.0},
                                    {"seed": 1, "temperature": 1.2}, {"seed": 0, "n": 1},
                                    {"temperature": 0, "tools": [{"type": "function"}]}])
def test_what_is_cached(fields: dict[str, Any]) -> None:
    assert uncacheable({"model": "m", **fields}) is None


def test_model_digest() -> None:
    assert model_digest(SimpleNamespace(model=CARD)) == "sha256:" + "ab" * 32
    unverified = ModelCard(id="m", owned_by="t", created=0, context_length=0,
                           verification={"verified": False})
    assert model_digest(SimpleNamespace(model=unverified)) is None  # nothing vouches for it
    bare = ModelCard(id="up", owned_by="openai", created=0, context_length=0)
    inst = [SimpleNamespace(url="http://a/v1", upstream_model=None)]
    one = model_digest(SimpleNamespace(model=bare, router=SimpleNamespace(instances=inst)))
    renamed = [SimpleNamespace(url="http://a/v1", upstream_model="other")]
    two = model_digest(SimpleNamespace(model=bare, router=SimpleNamespace(instances=renamed)))
    assert one and two and one.startswith("upstream:") and one != two
    tree = SimpleNamespace(files={"a.safetensors": (3, "cd" * 32)})
    assert model_digest(SimpleNamespace(model=unverified, files=tree)).startswith("tree:")


async def test_memory_store_is_a_bounded_lru_with_a_ttl() -> None:
    now = [0.0]
    store = MemoryStore(10.0, max_entries=3, max_bytes=16 * 100, clock=lambda: now[0])
    for k in "abc":
        store.put(k, b"x" * 10)
    assert await store.get("a") == b"x" * 10  # a is now the most recent
    store.put("d", b"y")
    assert await store.get("b") is None and len(store) == 3  # b was the least recent
    assert store.bytes == sum(1 + len(v) for v in store.values())
    store.put("big", b"z" * 100)  # over a sixteenth of the byte bound: not kept
    assert await store.get("big") is None
    for i in range(20):  # the byte bound: 20 entries of 90 bytes do not fit in 1,600
        store.max_entries = 100
        store.put(f"k{i:02}", b"v" * 88)
    assert store.bytes <= 1600 and await store.get("k19") and await store.get("k00") is None
    now[0] = 10.0
    assert await store.get("k19") is None  # expired
    store.put("k19", b"again")
    assert await store.get("k19") == b"again"


def replayed(events: list[Any]) -> tuple[dict[str, Any], list[Any]]:
    rec = Recording("k")
    for ev in events:
        rec.add(ev)
    value = rec.encode(lambda t: t)
    assert value is not None
    entry = decode(value)
    assert entry is not None
    return orjson.loads(value), entry


async def test_an_answer_recorded_and_replayed() -> None:
    stored, entry = replayed([Delta("", role="assistant"), Delta("Hel"), Delta("lo 138****5678"),
                              Delta("", finish_reason="stop"), Finished(7, 3)])
    assert stored == {"v": 1, "usage": [7, 3, None],
                      "choices": [[0, "assistant", "Hello 138****5678", "stop"]]}
    replay = Replay(CARD, entry)
    req = InferenceRequest("chat", body={})
    events = [ev async for ev in replay.generate(req)]
    assert isinstance(events[0], Started) and events[0].prompt_tokens == 7
    assert [(e.text, e.role, e.finish_reason) for e in events[1:-1]] == [
        ("", "assistant", None), ("Hello 138****5678", None, None), ("", None, "stop")]
    assert isinstance(events[-1], Finished) and events[-1].completion_tokens == 3
    assert all(getattr(e, "raw", None) is None for e in events)  # the encoder makes fresh ids
    replay.check_available()
    permit = await replay.queue.acquire("anyone")  # admission: granted at once
    permit.release()


def test_upstream_answers_kept_only_when_they_are_text() -> None:
    chunk = {"id": "x", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "",
                                                           "tool_calls": []},
                                     "logprobs": None, "finish_reason": None}]}
    stored, _ = replayed([Delta("", raw=chunk), Delta("Hi", raw=chunk),
                          Delta("", finish_reason="stop", raw=chunk), Finished(1, 1, raw={})])
    assert stored["choices"] == [[0, "assistant", "Hi", "stop"]]
    choice = {"index": 0, "message": {"role": "assistant", "content": "Hi", "refusal": None},
              "finish_reason": "stop"}
    stored, _ = replayed([Delta("Hi", 0, "stop", raw=choice), Finished(1, 1)])
    assert stored["choices"] == [[0, "assistant", "Hi", "stop"]]
    for raw in ({"index": 0, "message": {"role": "assistant", "content": None,
                                         "tool_calls": [{"id": "c"}]}},
                {"choices": [{"index": 0, "delta": {"content": "a"},
                              "logprobs": {"content": []}}]},
                {"choices": [{"index": 0, "delta": {"reasoning_content": "hmm"}}]}):
        rec = Recording("k")
        rec.add(Delta("a", 0, "stop", raw=raw))
        rec.add(Finished(1, 1))
        assert rec.encode(lambda t: t) is None
    unfinished = Recording("k")
    unfinished.add(Delta("a"))
    assert unfinished.encode(lambda t: t) is None


@pytest.mark.parametrize("value", [b"", b"[]", b"{}", b'{"v":2,"usage":[1,1],"choices":[]}',
                                   b'{"v":1,"usage":[1],"choices":[]}', b"\xff"])
def test_an_unreadable_entry_is_a_miss(value: bytes) -> None:
    assert decode(value) is None


def ctx_for(tenant: str | None, asked: str | None = None) -> RequestContext:
    ctx = RequestContext("req_1", "http", cache=asked)
    ctx.identity = SimpleNamespace(id="prn", tenant_id=tenant)
    ctx.model = "m"
    ctx.engine = FakeEngine()
    return ctx


class FakeEngine:
    """An engine whose answer holds personal data (as a model's might)."""

    model = CARD
    queue = None

    def __init__(self) -> None:
        self.closed = False

    def check_available(self) -> None:
        return None

    async def generate(self, req: InferenceRequest) -> Any:
        try:
            yield Started(4)
            yield Delta("", role="assistant")
            yield Delta("Call 1381234")
            yield Delta("5678 now.")
            yield Delta("", finish_reason="stop")
            yield Finished(4, 5)
        finally:
            self.closed = True


@pytest.mark.parametrize(("tenant", "asked", "result"), [
    ("ten_a", None, "miss"),       # the tenant opted in
    ("ten_b", None, None),         # neither opted in: nothing happens, no header
    (None, None, None),
    ("ten_b", "use", "miss"),      # the request opted in
    (None, " USE ", "miss"),
    ("ten_a", "skip", "bypass"),   # the request opted out
])
async def test_who_uses_the_cache(tenant: str | None, asked: str | None,
                                  result: str | None) -> None:
    stage = Cache(ResponseCache(MemoryStore(60, 10, 10_000), tenants=frozenset({"ten_a"})),
                  GUARDS)
    ctx = ctx_for(tenant, asked)
    await stage.before(ctx, InferenceRequest("chat", body=body()))
    assert ctx.state.get("cache") == result
    expected = [(b"x-autoglm-cache", result.encode())] if result else []
    assert ctx.response_headers == expected


async def test_a_wrong_header_value_is_a_400_and_nondeterministic_is_a_bypass() -> None:
    stage = Cache(ResponseCache(MemoryStore(60, 10, 10_000)), GUARDS)
    with pytest.raises(InvalidRequestError, match="X-AutoGLM-Cache"):
        await stage.before(ctx_for(None, "yes"), InferenceRequest("chat", body=body()))
    ctx = ctx_for(None, "use")
    await stage.before(ctx, InferenceRequest("chat", body=body(temperature=0.8)))
    assert ctx.state["cache"] == "bypass"


async def run(stage: Cache, ctx: RequestContext, *, stop_after: int | None = None) -> None:
    """The stage around its engine, as the service runs it."""
    await stage.before(ctx, InferenceRequest("chat", body=body()))
    events = ctx.engine.generate(None)
    seen = 0
    async for _ in events:
        seen += 1
        if seen == stop_after:
            await events.aclose()
            ctx.outcome = "cancelled"
            break
    else:
        ctx.outcome = "ok"
    stage.after(ctx)


async def test_a_miss_is_stored_masked_by_the_callers_guard() -> None:
    store = MemoryStore(60, 10, 10_000)
    stage = Cache(ResponseCache(store, tenants=frozenset({"ten_a", "ten_b"})), GUARDS)
    await run(stage, ctx_for("ten_a"))
    (value,) = store.values()
    assert orjson.loads(value)["choices"] == [[0, "assistant", "Call 138****5678 now.", "stop"]]
    hit = ctx_for("ten_a")
    await stage.before(hit, InferenceRequest("chat", body=body()))
    assert hit.state["cache"] == "hit" and isinstance(hit.engine, Replay)

    blocked = MemoryStore(60, 10, 10_000)  # ten_b blocks mobile numbers: never stored
    await run(Cache(ResponseCache(blocked, tenants=frozenset({"ten_b"})), GUARDS),
              ctx_for("ten_b"))
    assert len(blocked) == 0


async def test_an_answer_cut_short_is_not_stored_and_its_engine_is_closed() -> None:
    store = MemoryStore(60, 10, 10_000)
    ctx = ctx_for("ten_a")
    await run(Cache(ResponseCache(store, tenants=frozenset({"ten_a"})), GUARDS), ctx,
              stop_after=3)
    assert len(store) == 0 and ctx.engine.engine.closed
