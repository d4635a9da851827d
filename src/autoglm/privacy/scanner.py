"""One pass over a text that finds every recogniser's values.

All :class:`Recogniser` expressions are joined into one compiled pattern that begins with
a single character class (the union of their first characters), so the regular expression
engine skips every other character in C without trying the alternatives. A look-ahead
then drops candidates whose first characters no value starts with (times, prices, short
numbers, capitalised words), and look-behinds check the left boundary and each
alternative's own first character. Only a candidate of a recogniser's shape reaches
Python, where its check runs; when the check fails, the later recognisers that can start
with that character are tried at the same place. A text holding none of the characters
values need (digits, ``@``) costs one character-class search, and the anchored
recognisers' loop runs only when one search of all their anchors at once finds a hit:
most texts (answers streamed a few words at a time, log fields) hold no value, and then
a scan is three searches in C.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

from autoglm.errors import ConfigError
from autoglm.privacy.recognisers import HEAD_CHARS, AnchoredRecogniser, Recogniser

_LEFT = r"(?<![0-9A-Za-z].)"  # after the first character: the one before it is no letter/digit
_RIGHT = r"(?![0-9A-Za-z])"
_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


class Finding(NamedTuple):
    """A value of ``category`` at ``text[start:end]``; the value itself is not kept."""

    category: str
    start: int
    end: int


class Scanner:
    """Finds the values of a fixed set of recognisers; immutable and thread-safe."""

    def __init__(self, recognisers: Sequence[Recogniser | AnchoredRecogniser]) -> None:
        names = [r.category for r in recognisers]
        bad = [n for n in names if not _NAME.fullmatch(n)]
        if bad:
            raise ConfigError(f"PII category names must be lower-case identifiers "
                              f"(a-z, 0-9, _), not {bad}")
        if len(set(names)) != len(names):
            raise ConfigError(f"PII categories must be unique, got {names}")
        self.recognisers = tuple(recognisers)
        self.categories = tuple(names)
        self.max_len = max((r.max_len for r in recognisers), default=0)
        self._needs = tuple(sorted({c for r in recognisers for c in r.needs}))
        self._need = re.compile(f"[{''.join(map(re.escape, self._needs))}]") if self._needs \
            else None
        self._anchored = tuple((r, _compile(r.category, r.anchor))
                               for r in recognisers if isinstance(r, AnchoredRecogniser))
        self._any_anchor = _any_of([r.anchor for r, _ in self._anchored])
        pats = tuple(r for r in recognisers if isinstance(r, Recogniser))
        self._patterns = pats
        for r in pats:
            if _compile(r.category, r.rest).groups:
                raise ConfigError(f"the expression of PII category {r.category!r} must not "
                                  f"capture: write (?:...) instead of (...)")
        gate = f"(?=[{HEAD_CHARS}]{{{min((r.min_len for r in pats), default=1) - 1}}})"
        firsts = "".join(r.first for r in pats)
        branches = "|".join(f"((?<=[{r.first}])(?:{r.rest}))" for r in pats)
        self._combined = _compile("combined", f"[{firsts}]{_LEFT}{gate}(?:{branches}){_RIGHT}")
        singles = [(r, _compile(r.category, f"[{r.first}]{_LEFT}(?:{r.rest}){_RIGHT}"))
                   for r in pats]
        # After recogniser i's check fails on a value starting with character c: the later
        # recognisers whose values can start with c.
        starts = [_compile(r.category, f"[{r.first}]").fullmatch for r in pats]
        self._fallback = tuple(
            {c: tuple(s for s, starts_with in zip(singles[i + 1:], starts[i + 1:])
                      if starts_with(c))
             for c in map(chr, range(128))}
            for i in range(len(pats)))

    def may_hold(self, text: str) -> bool:
        """False when ``text`` lacks every character values need (each value holds one)."""
        return self._need is not None and self._need.search(text) is not None

    def scan(self, text: str) -> list[Finding]:
        """Every value in ``text``, in order, none overlapping (where two would, the one
        that starts first wins, then the longer)."""
        if not self.may_hold(text):
            return []
        found: list[Finding] = []
        if self._patterns:
            search, pos = self._combined.search, 0
            while (m := search(text, pos)) is not None:
                hit = self._confirm(text, m)
                if hit is None:
                    pos = m.start() + 1
                else:
                    found.append(hit)
                    pos = hit.end
        extra = False
        anchored = self._anchored
        if self._any_anchor is not None and self._any_anchor.search(text) is None:
            anchored = ()  # no anchor's hit anywhere: no anchored value
        for rec, anchor in anchored:
            last = -1
            if rec.literal:  # a rare character: str.find beats the regex engine's scan
                i = text.find(rec.literal)
                hits = []
                while i >= 0:
                    if (m := anchor.match(text, i)) is not None:
                        hits.append(m)
                    i = text.find(rec.literal, i + 1)
            else:
                hits = anchor.finditer(text)  # type: ignore[assignment]
            for m in hits:
                if m.start() < last:
                    continue
                span = rec.locate(text, m)
                if span is not None:
                    found.append(Finding(rec.category, span[0], span[1]))
                    last, extra = span[1], True
        if extra:
            found.sort(key=lambda f: (f.start, -f.end))
            kept: list[Finding] = []
            for f in found:
                if not kept or f.start >= kept[-1].end:
                    kept.append(f)
            found = kept
        return found

    def _confirm(self, text: str, m: re.Match[str]) -> Finding | None:
        start, end, index = m.start(), m.end(), m.lastindex - 1  # type: ignore[operator]
        rec = self._patterns[index]
        if rec.check(text, start, end):
            return Finding(rec.category, start, end)
        for rec, single in self._fallback[index].get(text[start], ()):
            other = single.match(text, start)
            if other is not None and rec.check(text, start, other.end()):
                return Finding(rec.category, start, other.end())
        return None


def _any_of(anchors: list[str]) -> re.Pattern[str] | None:
    """One expression that finds a hit of any of ``anchors``; None (search them one by one)
    when they cannot be joined as they are: an anchor with groups of its own (a
    back-reference would point elsewhere once joined), or global flags."""
    if not anchors:
        return None
    try:
        if any(re.compile(a, re.ASCII).groups for a in anchors):
            return None
        return re.compile("|".join(f"(?:{a})" for a in anchors), re.ASCII)
    except re.error:
        return None


def _compile(name: str, pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern, re.ASCII)
    except re.error as exc:
        raise ConfigError(f"the expression of PII category {name!r} does not compile: "
                          f"{exc}") from None
