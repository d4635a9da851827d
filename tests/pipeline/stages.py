"""A stage written for the tests, proving the stage contract on every engine and transport.

Driven by the request's ``user`` field, so one app serves every case:

- ``"refuse"``: refused before the engine with a clean OpenAI error (403,
  ``content_refused``);
- ``"crash"``: an unexpected exception before the engine (a bug);
- ``"rewrite-in:OLD=NEW"``: every caller text has OLD replaced by NEW before the engine;
- ``"rewrite-out:OLD=NEW"``: answer text has OLD replaced by NEW, also where OLD is split
  across chunks: text that may be the start of OLD is held back until the next chunk
  shows whether it is, and released with the choice's last delta (or before
  ``Finished``).

It counts what its ``after`` hook saw, so tests can check it ran once per request.
"""

from __future__ import annotations

from collections.abc import Sequence

from autoglm.engine.base import Delta, Event, Finished
from autoglm.errors import PermissionDeniedError
from autoglm.pipeline.context import RequestContext
from autoglm.pipeline.request import InferenceRequest
from autoglm.pipeline.stage import Stage


class RewriteStage(Stage):
    name = "test_rewrite"

    def __init__(self) -> None:
        self.outcomes: list[tuple[str, str, int, int]] = []

    async def before(self, ctx: RequestContext, req: InferenceRequest) -> None:
        user = req.body.get("user")
        if not isinstance(user, str):
            return
        if user == "refuse":
            raise PermissionDeniedError("refused by the test stage", code="content_refused")
        if user == "crash":  # a bug in a stage: the client must get a plain 500
            raise RuntimeError("stage bug with internal detail /srv/secret")
        if user.startswith("rewrite-in:"):
            old, new = user[len("rewrite-in:"):].split("=", 1)
            req.rewrite_text(lambda t: t.replace(old, new))
        elif user.startswith("rewrite-out:"):
            old, new = user[len("rewrite-out:"):].split("=", 1)
            ctx.state[self.name] = [old, new, ""]  # target, replacement, held text

    def on_event(self, ctx: RequestContext, event: Event) -> Sequence[Event]:
        state = ctx.state.get(self.name)
        if state is None:
            return (event,)
        old, new, held = state
        if isinstance(event, Finished):
            state[2] = ""
            return (Delta(held), event) if held else (event,)
        if not isinstance(event, Delta) or event.index != 0:
            return (event,)
        text = (held + event.text).replace(old, new)
        keep = 0
        if event.finish_reason is None:  # the choice's last delta releases everything
            keep = next((k for k in range(min(len(old) - 1, len(text)), 0, -1)
                         if old.startswith(text[-k:])), 0)
        state[2] = text[len(text) - keep:] if keep else ""
        event.text = text[:len(text) - keep] if keep else text
        return (event,)

    def after(self, ctx: RequestContext) -> None:
        self.outcomes.append((ctx.model, ctx.outcome, ctx.prompt_tokens, ctx.completion_tokens))
