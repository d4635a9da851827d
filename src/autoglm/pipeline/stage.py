"""The contract every stage keeps. A stage overrides only the hooks it needs:

- ``before(ctx, req)``: before the engine. Refuse by raising an ``AutoGLMError`` (the
  client gets it in the OpenAI shape, on every transport), or change the request
  (``req.rewrite_text``, ``req.body``) or the context.
- ``on_event(ctx, event)``: each event the engine sends, in order. Return the events to
  pass on: the same one, a changed one, none (text held back, e.g. a word that may
  continue in the next chunk), or several (held text released). Text still held when
  ``Finished`` arrives must be returned before it.
- ``after(ctx)``: once, when the request is over, whatever the outcome
  (``ctx.outcome``: ok, error, cancelled; ``ctx.error``; token usage on ``ctx``). It must
  not raise.

Per-request state goes in ``ctx.state[stage.name]``; a stage object serves every
request at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from autoglm.engine.base import Event
from autoglm.pipeline.context import RequestContext
from autoglm.pipeline.request import InferenceRequest


class Stage:
    name: ClassVar[str] = "stage"

    async def before(self, ctx: RequestContext, req: InferenceRequest) -> None:
        return None

    def on_event(self, ctx: RequestContext, event: Event) -> Sequence[Event]:
        return (event,)

    def after(self, ctx: RequestContext) -> None:
        return None


def overrides(stage: Stage, hook: str) -> bool:
    return getattr(type(stage), hook) is not getattr(Stage, hook)


class EngineStage(Stage):
    """Where the engine runs: stages listed before it act on the request, stages after it
    on the answer. The service calls ``ctx.engine.generate`` at this point."""

    name = "engine"
