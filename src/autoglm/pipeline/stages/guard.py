"""The PII guard on both sides of the engine (``autoglm.privacy``).

``GuardInput`` (before admission) masks or blocks personal data in every caller text before
the engine, and before anything logs it. ``GuardOutput`` (after the engine) does the same
to the answer as it streams: each choice has its own ``StreamGuard``, which holds back
only the text a value could still be completing, and releases it with the choice's last
delta (or before ``Finished``). A blocked category is a 400 naming the category, never the
value; in a stream it ends the answer with that error.

The actions come from ``pii_actions``, overridden per tenant by ``pii_tenant_actions``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from autoglm.engine.base import Delta, Event, Finished
from autoglm.errors import PiiBlockedError
from autoglm.pipeline.context import RequestContext
from autoglm.pipeline.request import InferenceRequest
from autoglm.pipeline.stage import Stage
from autoglm.privacy import GuardPolicy, PiiGuard, StreamGuard


class PiiGuards:
    """The guard of each tenant: the platform's actions, with the tenant's on top."""

    def __init__(self, actions: Mapping[str, str],
                 tenant_actions: Mapping[str, Mapping[str, str]]) -> None:
        self.default = PiiGuard(GuardPolicy.from_mapping(actions))
        self.tenants = {t: PiiGuard(GuardPolicy.from_mapping({**actions, **over}))
                        for t, over in tenant_actions.items()}

    def of(self, ctx: RequestContext) -> PiiGuard:
        tenant = getattr(ctx.identity, "tenant_id", None)
        return self.tenants.get(tenant, self.default) if tenant else self.default


class GuardInput(Stage):
    name = "guard_input"

    def __init__(self, guards: PiiGuards) -> None:
        self.guards = guards

    async def before(self, ctx: RequestContext, req: InferenceRequest) -> None:
        guard = self.guards.of(ctx)
        if guard.inert:
            return
        changed: dict[str, str] = {}
        blocked: list[str] = []
        for text in req.texts():
            result = guard.apply(text)
            blocked.extend(result.blocked)
            if result.text != text:
                changed[text] = result.text
        if blocked:
            raise PiiBlockedError(tuple(dict.fromkeys(blocked)))
        if changed:  # untouched requests keep their bytes (an upstream gets them as sent)
            req.rewrite_text(lambda t: changed.get(t, t))


class GuardOutput(Stage):
    name = "guard_output"

    def __init__(self, guards: PiiGuards) -> None:
        self.guards = guards

    def _streams(self, ctx: RequestContext) -> dict[int, StreamGuard] | None:
        streams = ctx.state.get(self.name)
        if streams is None:
            guard = self.guards.of(ctx)
            if guard.inert:
                return None
            streams = ctx.state[self.name] = {"guard": guard}
        return streams

    def on_event(self, ctx: RequestContext, event: Event) -> Sequence[Event]:
        if not isinstance(event, (Delta, Finished)):
            return (event,)
        streams = self._streams(ctx)
        if streams is None:
            return (event,)
        guard: PiiGuard = streams["guard"]
        if isinstance(event, Finished):
            out: list[Event] = []
            for index in [k for k in streams if k != "guard"]:
                rest = _checked(streams.pop(index), None)
                if rest:
                    out.append(Delta(rest, index=index))
            return (*out, event)
        if event.finish_reason is not None and event.index not in streams:
            # the choice's one delta (a JSON answer): the one-shot guard gives what a
            # stream guard fed it and finished would, without making one
            result = guard.apply(event.text)
            if result.blocked:
                raise PiiBlockedError(result.blocked)
            event.text = ""
            return (Delta(result.text, index=event.index), event) if result.text else (event,)
        stream = streams.get(event.index) or streams.setdefault(event.index, guard.stream())
        if event.finish_reason is None:
            event.text = _checked(stream, event.text)
        else:  # the choice's last delta: everything held goes out just before it
            rest = stream.feed(event.text) + _checked(streams.pop(event.index), None)
            event.text = ""
            if rest:
                return (Delta(rest, index=event.index), event)
        return (event,)


def _checked(stream: StreamGuard, text: str | None) -> str:
    out = stream.finish() if text is None else stream.feed(text)
    if stream.blocked:
        raise PiiBlockedError(tuple(dict.fromkeys(stream.blocked)))
    return out
