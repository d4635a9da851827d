"""Keep text: the prompt and answer of the tenants whose policy keeps them in the audit
record (``audit_text_tenants``; absent from the stage list when none does).

Two stages, each after its guard, so they see the texts as the guards left them (masked
values stay masked): ``KeepPrompt`` after ``guard_input``, ``KeepAnswer`` after
``guard_output``. They hand the texts to the audit stage in ``ctx.state``; the audit log
seals them under the caller's personal data key (``privacy.vault``), never in clear.
"""

from __future__ import annotations

from collections.abc import Sequence

from autoglm.engine.base import Delta, Event
from autoglm.pipeline.context import RequestContext
from autoglm.pipeline.request import InferenceRequest
from autoglm.pipeline.stage import Stage
from autoglm.privacy.vault import TEXT_MAX_CHARS

KEY = "keep_text"  # ctx.state: {"prompt": str, "answer": {choice index: [texts]}}


class KeepPrompt(Stage):
    name = "keep_prompt"

    def __init__(self, tenants: frozenset[str]) -> None:
        self.tenants = tenants

    async def before(self, ctx: RequestContext, req: InferenceRequest) -> None:
        if getattr(ctx.identity, "tenant_id", None) in self.tenants:
            ctx.state[KEY] = {"prompt": "\n".join(req.texts())[:TEXT_MAX_CHARS], "answer": {},
                              "size": 0}


class KeepAnswer(Stage):
    name = "keep_answer"

    def on_event(self, ctx: RequestContext, event: Event) -> Sequence[Event]:
        kept = ctx.state.get(KEY)
        if (kept is not None and isinstance(event, Delta) and event.text
                and kept["size"] < TEXT_MAX_CHARS):  # what is kept is cut there anyway
            kept["answer"].setdefault(event.index, []).append(event.text)
            kept["size"] += len(event.text)
        return (event,)


def kept_texts(ctx: RequestContext) -> dict[str, str] | None:
    """What to keep of this request: ``prompt`` and ``answer`` (choices one after the
    other), or None when its tenant keeps no text."""
    kept = ctx.state.get(KEY)
    if kept is None:
        return None
    answer = "\n".join("".join(parts) for _, parts in sorted(kept["answer"].items()))
    return {"prompt": kept["prompt"], "answer": answer[:TEXT_MAX_CHARS]}
