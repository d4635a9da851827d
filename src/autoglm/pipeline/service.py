"""``InferenceService``: a request through the ordered stages to its engine, and back.

``open`` runs every ``before`` hook in order, starts the engine and waits for it to
accept the request (so a refusal at any point is still a clean error, before any byte
goes to the client), and returns an ``Answer``: the engine's events, passed through the
stages' ``on_event`` hooks. When the answer ends (finished, failed, or closed early
because the client went away), every ``after`` hook runs once.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence

from autoglm.engine.base import Delta, Event, Finished, Started
from autoglm.errors import AutoGLMError, ConfigError, EngineError
from autoglm.pipeline.context import RequestContext
from autoglm.pipeline.request import InferenceRequest
from autoglm.pipeline.stage import EngineStage, Stage, overrides


class InferenceService:
    def __init__(self, stages: Sequence[Stage]) -> None:
        positions = [i for i, s in enumerate(stages) if isinstance(s, EngineStage)]
        if len(positions) != 1:
            raise ConfigError("the stage list must name the engine exactly once")
        at = positions[0]
        late = [s.name for s in stages[at + 1:] if overrides(s, "before")]
        if late:
            raise ConfigError(f"stage(s) {', '.join(late)} act on the request but are listed "
                              "after the engine")
        self.stages = tuple(stages)
        self._before = tuple(s for s in stages if overrides(s, "before"))
        self._on_event = tuple(s for s in stages if overrides(s, "on_event"))
        self._after = tuple(s for s in stages if overrides(s, "after"))

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    async def open(self, ctx: RequestContext, req: InferenceRequest) -> Answer:
        events: AsyncIterator[Event] | None = None
        try:
            for stage in self._before:
                await stage.before(ctx, req)
            events = ctx.engine.generate(req)
            first = await anext(events)
            if not isinstance(first, Started):
                raise EngineError("the engine did not acknowledge the request")
        except BaseException as exc:
            if events is not None:
                await _close_quietly(events)
            self.finish(ctx, exc)
            raise
        if first.prompt_tokens is not None:
            ctx.prompt_tokens = first.prompt_tokens
        return Answer(self, ctx, first, events)

    def finish(self, ctx: RequestContext, exc: BaseException | None) -> None:
        """The request is over: record how, then every ``after`` hook, once."""
        if ctx.outcome != "pending":
            return
        if exc is None:
            ctx.outcome = "ok"
        elif isinstance(exc, AutoGLMError):
            ctx.outcome, ctx.error = "error", exc
        elif isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
            ctx.outcome = "cancelled"
        else:
            ctx.outcome = "error"
        for stage in self._after:
            stage.after(ctx)


async def _close_quietly(events: AsyncIterator[Event]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:  # noqa: BLE001 - closing after a failure; the first error wins
            pass


class Answer:
    """The engine's events after the stages. Iterate it to the end, or ``aclose`` it."""

    __slots__ = ("service", "ctx", "started", "_events", "_pending", "_done")

    def __init__(self, service: InferenceService, ctx: RequestContext, started: Started,
                 events: AsyncIterator[Event]) -> None:
        self.service = service
        self.ctx = ctx
        self.started = started
        self._events = events
        self._pending: deque[Event] = deque()
        self._done = False

    def __aiter__(self) -> Answer:
        return self

    async def __anext__(self) -> Event:
        while not self._pending:
            if self._done:
                raise StopAsyncIteration
            try:
                ev = await anext(self._events)
            except StopAsyncIteration:
                self._fail(EngineError("the engine ended the answer without finishing"))
            except BaseException as exc:
                self._fail(exc)
            self._take(ev)
        return self._pending.popleft()

    def _take(self, ev: Event) -> None:
        ctx = self.ctx
        if isinstance(ev, Delta):
            if ctx.first_token_at is None and (ev.text or ev.raw is not None):
                ctx.first_token_at = time.perf_counter()
        elif isinstance(ev, Finished):
            ctx.prompt_tokens = ev.prompt_tokens
            ctx.completion_tokens = ev.completion_tokens
            self._done = True
        out: Sequence[Event] = (ev,)
        for stage in self.service._on_event:
            nxt: list[Event] = []
            for e in out:
                nxt.extend(stage.on_event(ctx, e))
            out = nxt
        self._pending.extend(out)
        if self._done:
            self.service.finish(ctx, None)

    def _fail(self, exc: BaseException) -> None:
        self._done = True
        self.service.finish(self.ctx, exc)
        raise exc

    async def aclose(self) -> None:
        """Stop early (client gone) or clean up after the end; idempotent."""
        if not self._done:
            self._done = True
            self.service.finish(self.ctx, asyncio.CancelledError())
        await _close_quietly(self._events)
