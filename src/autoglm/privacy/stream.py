"""The guard for a streamed answer: values split across chunks are still caught.

``feed(chunk)`` returns at once all text that no later chunk can change and holds back
only the tail that could still be, or still become, part of a value: the trailing run of
characters a value is made of (letters, digits, ``+-.@:_%()``, single spaces between
digits), never more than ``max_hold`` characters (the longest value plus the two
characters a check may look past it). Text before a character that can be in no value
is final, because no value spans such a character; when the run is longer than
``max_hold``, a value that reaches the end of the buffer starts inside the held part.

``feed`` + ... + ``finish`` give exactly ``PiiGuard.apply`` of the whole text.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from autoglm.privacy.recognisers import VALUE_CHARS

if TYPE_CHECKING:
    from autoglm.privacy.guard import PiiGuard
    from autoglm.privacy.scanner import Finding

_LOOKAHEAD = 2  # characters a check may read past the end of a value (IPv4: ".5")
_CONTEXT = 72   # released characters kept for checks that look left (e-mail local part: 65)
# The trailing run, matched on the reversed tail: value characters, and spaces that sit
# between two digits (or after a digit or ")" at the very end).
_TAIL_REVERSED = re.compile(rf"(?: (?=[0-9)]))?(?:[{VALUE_CHARS}]|(?<=[0-9]) (?=[0-9)]))*",
                            re.ASCII)


class StreamGuard:
    """Per streamed answer; not thread-safe. ``blocked`` lists the blocked categories
    released so far: the caller ends the stream with ``PiiBlockedError`` when it is set."""

    def __init__(self, guard: PiiGuard) -> None:
        self._guard = guard
        self.max_hold = guard.max_value_len + _LOOKAHEAD
        self._pending = ""
        self._context = ""
        self.blocked: list[str] = []

    @property
    def held(self) -> int:
        """Characters fed but not yet released."""
        return len(self._pending)

    def feed(self, chunk: str) -> str:
        """The text that is safe to send now, masked where the policy says."""
        if self._guard.inert:
            return chunk
        buf = self._pending + chunk
        if not buf:
            return ""
        window = buf[-self.max_hold:]
        run = _TAIL_REVERSED.match(window[::-1]).end()  # type: ignore[union-attr]
        cut, forced = len(buf) - run, run == self.max_hold
        if not self._guard.scanner.may_hold(buf):
            # No value lies in buf (each holds a digit or "@"), none from the released
            # text reaches into it: release up to the tail as it is.
            self._advance(self._context + buf, len(self._context) + cut, forced)
            return buf[:cut]
        return self._release(buf, cut, forced=forced)

    def finish(self) -> str:
        """The rest, at the end of the stream."""
        if self._guard.inert or not self._pending:
            return ""
        out = self._release(self._pending, len(self._pending), forced=False, final=True)
        self._context = ""
        return out

    def _release(self, buf: str, cut: int, *, forced: bool, final: bool = False) -> str:
        text = self._context + buf
        off = len(self._context)
        cut += off
        found = self._guard.scanner.scan(text)  # in order of their starts
        if not found or found[-1].start < off:  # the common case: release up to the cut
            self._advance(text, cut, forced)
            return text[off:cut]
        # A value starting in the context was settled when that text was released.
        findings = [f for f in found if f.start >= off]
        ready: list[Finding] = []
        for f in findings:
            if f.end <= cut:
                ready.append(f)
                continue
            if f.start < cut:  # crosses the cut: only when the run outgrew max_hold
                if final or forced:
                    # It ends more than _LOOKAHEAD before the end of the text (it is at most
                    # max_hold - _LOOKAHEAD long): nothing later can change it.
                    ready.append(f)
                    cut = f.end
                else:
                    cut = f.start  # (no value holds a character outside the tail's set)
            break
        out, blocked = self._guard.render(text, ready, off, cut)
        for category in blocked:
            if category not in self.blocked:
                self.blocked.append(category)
        self._advance(text, cut, forced)
        return out

    def _advance(self, text: str, cut: int, forced: bool) -> None:
        # After a cut behind a character no value holds, checks that look left stop there
        # (or, for 护照 before a passport number, within _CONTEXT). After a cut inside a long
        # run, a check reading the kept text from its first character (an e-mail local
        # part cut short) could find a value the whole text does not have; keeping twice
        # max_hold puts any such value's end before the cut.
        keep = 2 * self.max_hold if forced else _CONTEXT
        self._context = text[max(0, cut - keep):cut]
        self._pending = text[cut:]
