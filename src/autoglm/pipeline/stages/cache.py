"""The response cache in the pipeline (``autoglm.cache``), after ``guard_input`` (the key
holds the masked prompt) and before ``admission``.

A request is looked up when its caller opted in: its tenant is one of
``response_cache_tenants``, or the request says ``X-AutoGLM-Cache: use`` (gRPC: the
``x-autoglm-cache`` metadata); ``skip`` opts a request out. On a hit ``ctx.engine``
becomes a ``Replay`` of the stored answer: admission lets it through without a slot and
the service runs it like any engine, so every later stage (the output guard, kept texts,
accounting, audit) sees the answer as usual, with the cached usage. On a miss
``ctx.engine`` becomes a ``Recorder`` around the real engine, and ``after`` stores the
answer once it finished cleanly (``ctx.outcome`` ok: not failed, not cancelled), its
text masked by the caller's output guard: exactly what the guard let through, so a
stored answer never holds a raw value (and a blocked one is never stored).

Identical misses fly once (``cache/flight.py``): while a miss runs the model for a key,
the identical requests that miss meanwhile wait (before admission, taking no slot) for
its answer and replay it as hits; ``after`` hands the answer (or None) to them.

Each looked-up request gets the response header ``X-AutoGLM-Cache: hit | miss | bypass``
(bypass: it asked, but cannot use the cache: not deterministic, ``skip``, a model
nothing vouches for, or the shared store down) and is counted per model
(``autoglm_response_cache_total``). ``ctx.state["cache"]`` holds the same word, for the
audit record. A request that did not opt in costs two or three attribute reads here and
nothing per event.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import orjson

from autoglm.cache import (
    Lead,
    Recorder,
    Recording,
    Replay,
    ResponseCache,
    StoreDown,
    cache_key,
    decode,
    model_digest,
    scope_of,
    uncacheable,
)
from autoglm.errors import InvalidRequestError
from autoglm.pipeline.context import RequestContext
from autoglm.pipeline.request import InferenceRequest
from autoglm.pipeline.stage import Stage
from autoglm.pipeline.stages.guard import PiiGuards

log = logging.getLogger("autoglm.cache")

HEADER = b"x-autoglm-cache"
_HEADERS = {r: (HEADER, r.encode()) for r in ("hit", "miss", "bypass")}


class Cache(Stage):
    name = "cache"  # ctx.state["cache"]: "hit" | "miss" | "bypass", once looked up

    def __init__(self, cache: ResponseCache, guards: PiiGuards) -> None:
        self.cache = cache
        self.store = cache.store
        self.flights = cache.flights
        self.tenants = cache.tenants
        self.guards = guards

    async def before(self, ctx: RequestContext, req: InferenceRequest) -> None:
        asked = ctx.cache
        if asked is None:
            tenants = self.tenants
            if not tenants or getattr(ctx.identity, "tenant_id", None) not in tenants:
                return
        elif (asked := asked.strip().lower()) == "skip":
            self._result(ctx, "bypass")
            return
        elif asked != "use":
            raise InvalidRequestError(
                "Invalid value for the X-AutoGLM-Cache header: use 'use' or 'skip'")
        body = req.body
        digest = model_digest(ctx.engine) if uncacheable(body) is None else None
        if digest is None:
            self._result(ctx, "bypass")
            return
        try:
            key = cache_key(scope_of(getattr(ctx.identity, "tenant_id", None)), ctx.model,
                            digest, req.kind, self.cache.default_max_tokens, body)
        except orjson.JSONEncodeError:
            self._result(ctx, "bypass")
            return
        try:
            found = await self.store.get(key)
        except StoreDown:
            self._result(ctx, "bypass")  # inference goes on; the link recovers by itself
            return
        entry = decode(found) if found is not None else None
        lead: Lead | None = None
        if entry is None and self.flights is not None:
            joined = await self.flights.join(key)  # an identical miss may be running now
            if isinstance(joined, Lead):
                lead = joined
            else:
                entry = decode(joined)
        if entry is None:
            ctx.engine = Recorder(ctx.engine, Recording(key, lead))
            self._result(ctx, "miss")
        else:
            ctx.engine = Replay(ctx.engine.model, entry)
            self._result(ctx, "hit")

    def _result(self, ctx: RequestContext, result: str) -> None:
        ctx.state[self.name] = result
        ctx.response_headers.append(_HEADERS[result])
        self.cache.count(ctx.model, result)

    def after(self, ctx: RequestContext) -> None:
        engine = ctx.engine
        if engine.__class__ is not Recorder:
            return
        recording = engine.recording
        value = None
        try:
            if ctx.outcome == "ok":
                value = recording.encode(self._mask(ctx))
        except Exception:  # noqa: BLE001 - after hooks must not raise; the answer went out
            log.exception("an answer could not be encoded for the response cache")
        try:
            if recording.lead is not None:
                recording.lead.done(value)  # stores it, and hands it to who waits (None too)
            elif value is not None:
                self.store.put(recording.key, value)
        except Exception:  # noqa: BLE001 - as above
            log.exception("an answer could not be stored in the response cache")

    def _mask(self, ctx: RequestContext) -> Callable[[str], str | None]:
        guard = self.guards.of(ctx)

        def mask(text: str) -> str | None:
            result = guard.apply(text)
            return None if result.blocked else result.text

        return mask
