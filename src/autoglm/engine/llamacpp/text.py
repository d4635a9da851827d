"""Turning token bytes into client text: whole characters only, stop strings held back.

A character can be split across tokens (Chinese, emoji): the incremental UTF-8 decoder
keeps the partial bytes until the character is whole. Text that might be the start of
a stop string is held back until it is known not to be one, so a stop string is never
sent to the client.
"""

from __future__ import annotations

import codecs


class TextStream:
    def __init__(self, stop: list[str]) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = [s for s in stop if s]
        self._max_stop = max((len(s) for s in self._stop), default=0)
        self._held = ""
        self.stopped = False

    def push(self, data: bytes) -> str:
        """Feed token bytes; return the text that is now safe to send (maybe empty)."""
        if self.stopped:
            return ""
        text = self._decoder.decode(data)
        if not self._stop:
            return text
        buf = self._held + text
        cut = self._find_stop(buf)
        if cut is not None:
            self.stopped = True
            self._held = ""
            return buf[:cut]
        keep = self._partial_suffix(buf)
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        """The end of generation: whatever is held back is final text."""
        if self.stopped:
            return ""
        # Bytes of a character the answer stopped in the middle of are dropped: a
        # half-made character is never sent.
        rest = self._held
        self._held = ""
        self._decoder.reset()
        if self._stop:
            cut = self._find_stop(rest)
            if cut is not None:
                self.stopped = True
                return rest[:cut]
        return rest

    def _find_stop(self, buf: str) -> int | None:
        best: int | None = None
        for s in self._stop:
            i = buf.find(s)
            if i >= 0 and (best is None or i < best):
                best = i
        return best

    def _partial_suffix(self, buf: str) -> int:
        """Length of the longest tail of ``buf`` that begins some stop string."""
        for k in range(min(len(buf), self._max_stop - 1), 0, -1):
            tail = buf[-k:]
            if any(s.startswith(tail) for s in self._stop):
                return k
        return 0
