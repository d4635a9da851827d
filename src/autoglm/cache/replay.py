"""A cached answer: recorded on a miss, encoded for the store, replayed on a hit.

On a miss ``Recorder`` stands in for the engine (``ctx.engine``): the engine's events pass
through it unchanged, and ``Recording`` notes, per choice, its role, its text and its
finish reason, and the usage. Only a miss pays for that: a request that did not opt in
never meets either. The text is stored as the output guard leaves it: the stage masks it
with the caller's guard when it stores the answer (``PiiGuard.apply`` of the whole text
is what the stream guard released, chunk by chunk), so a stored answer never holds a raw
value. The form is the same whichever shape the answer had (JSON or a stream; the
embedded engine's or an upstream's), so an answer cached from a JSON request replays as a
stream and the other way round. An upstream answer carrying anything besides text (tool
calls, a refusal, logprobs, reasoning) is not kept: the guard does not scan those fields,
and they do not survive the change of shape.

``Replay`` stands in for the engine on a hit: ``generate`` yields the stored answer as
engine events without any ``raw`` object, so the encoder builds the OpenAI objects
itself, with a fresh ``id`` and ``created`` for every response and the cached usage.
Every stage after the engine sees it as a fresh answer (the output guard scans it again,
kept texts and accounting count it). It also answers the two things admission asks of an
engine (it is available; its queue grants a permit at once), so a hit never waits for,
or takes, an engine slot.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from autoglm.engine.base import Delta, Event, Finished, Started
from autoglm.pipeline.request import InferenceRequest

FORMAT = 1
_TEXT_FIELDS = frozenset({"role", "content"})


class Recording:
    """The engine's answer of one miss, event by event; ``encode`` once it finished."""

    __slots__ = ("key", "choices", "usage", "plain", "lead")

    def __init__(self, key: str, lead: Any = None) -> None:
        self.key = key
        self.lead = lead  # ``flight.Lead``: identical misses wait for this answer
        self.choices: dict[int, list[Any]] = {}  # index -> [role, [texts], finish_reason]
        self.usage: tuple[int, int, int | None] | None = None  # prompt, completion, cached
        self.plain = True  # False once an upstream sent more than text

    def add(self, ev: Event) -> None:
        if isinstance(ev, Delta):
            choice = self.choices.get(ev.index)
            if choice is None:
                choice = self.choices[ev.index] = [None, [], None]
            role = ev.role
            if ev.raw is not None:
                role = self._from_raw(ev.raw) or role
            if role:
                choice[0] = role
            if ev.text:
                choice[1].append(ev.text)
            if ev.finish_reason is not None:
                choice[2] = ev.finish_reason
        elif isinstance(ev, Finished):
            self.usage = (ev.prompt_tokens, ev.completion_tokens, ev.cached_tokens)

    def _from_raw(self, raw: dict[str, Any]) -> str | None:
        """An upstream's chunk (``choices[0]``) or choice object: its role, and whether it
        holds more than text."""
        chunk_choices = raw.get("choices")
        choice = chunk_choices[0] if isinstance(chunk_choices, list) and chunk_choices else raw
        if not isinstance(choice, dict):
            return None
        if choice.get("logprobs") is not None:
            self.plain = False
        box = choice.get("delta", choice.get("message"))
        if not isinstance(box, dict):
            return None
        if any(v for k, v in box.items() if k not in _TEXT_FIELDS):
            self.plain = False  # tool_calls, function_call, refusal, audio, reasoning...
        role = box.get("role")
        return role if isinstance(role, str) else None

    def encode(self, mask: Callable[[str], str | None]) -> bytes | None:
        """The stored form, each choice's text through ``mask`` (None: a blocked value, the
        answer is not kept), or None when this answer is not to be kept."""
        if not self.plain or self.usage is None or not self.choices:
            return None
        choices = []
        for index, (role, texts, finish) in sorted(self.choices.items()):
            text = mask("".join(texts))
            if text is None:
                return None
            choices.append([index, role, text, finish])
        return orjson.dumps({"v": FORMAT, "usage": list(self.usage), "choices": choices})


def decode(value: bytes) -> dict[str, Any] | None:
    """A stored answer, or None for anything unreadable or of another format (a miss)."""
    try:
        entry = orjson.loads(value)
        if entry.get("v") != FORMAT:
            return None
        prompt, completion, *cached = entry["usage"]  # cached: absent in older entries
        choices = [(int(i), r, str(t), f) for i, r, t, f in entry["choices"]]
        known = cached[0] if cached else None
        return {"usage": (int(prompt), int(completion), None if known is None else int(known)),
                "choices": choices}
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
        return None


class _Granted:
    __slots__ = ()

    def release(self) -> None:
        return None


class _OpenQueue:
    """An admission queue that grants at once: a replay uses no engine slot."""

    __slots__ = ()
    _permit = _Granted()

    async def acquire(self, owner: str) -> _Granted:
        return self._permit


class Recorder:
    """The engine of a miss: the real engine, whose events are noted on their way out."""

    __slots__ = ("model", "queue", "check_available", "engine", "recording")

    def __init__(self, engine: Any, recording: Recording) -> None:
        self.engine = engine
        self.recording = recording
        self.model = engine.model  # what admission and the service use, as they are
        self.queue = engine.queue
        self.check_available = engine.check_available

    def prepare(self, req: InferenceRequest) -> None:
        self.engine.prepare(req)

    async def generate(self, req: InferenceRequest) -> AsyncIterator[Event]:
        events = self.engine.generate(req)
        add = self.recording.add
        try:
            async for ev in events:
                add(ev)  # before any stage changes it: its text is masked when stored
                yield ev
        finally:  # closed early (client gone, an error): the engine stops at once
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()


class Replay:
    """The engine of a hit: yields the stored answer."""

    __slots__ = ("model", "entry")
    queue = _OpenQueue()

    def __init__(self, model: Any, entry: dict[str, Any]) -> None:
        self.model = model  # the real engine's card
        self.entry = entry

    def check_available(self) -> None:
        return None  # the answer is here, whatever state the engine is in

    def prepare(self, req: InferenceRequest) -> None:
        return None

    async def generate(self, req: InferenceRequest) -> AsyncIterator[Event]:
        prompt, completion, cached = self.entry["usage"]
        yield Started(prompt)
        for index, role, text, finish in self.entry["choices"]:
            if role:
                yield Delta("", index, role=role)
            if text:
                yield Delta(text, index)
            if finish is not None:
                yield Delta("", index, finish)
        yield Finished(prompt, completion, cached_tokens=cached)
