"""Folding floods of identical refusals into one record with a count.

The first refusal of a kind (same actor, key, client address, action and status) passes
through at once, so a single failure is recorded as it happens. Identical ones that
follow within ``interval_s`` of it are only counted; when the interval is over, one record
stands for them all: the first folded record's fields, its ``count`` the number folded
and ``detail`` naming the interval. A flood of N identical refusals per interval thus
costs two records, not N. Folded refusals are recorded when their interval ends (``due``)
or at shutdown (``drain``), not before their response.

At most ``max_kinds`` kinds are folded at once; refusals of further kinds pass through
unfolded, so memory stays bounded whatever the flood.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from autoglm.audit.record import Record
from autoglm.errors import ConfigError
from autoglm.timefmt import stamp

FoldKey = tuple[str | None, str | None, str | None, str, int | None]


@dataclasses.dataclass(slots=True)
class _Window:
    opened: float  # monotonic
    opened_at: datetime
    folded: Record | None = None  # the first folded record
    count: int = 0


class Folder:
    """Thread-safe; see the module docstring."""

    def __init__(self, interval_s: float = 1.0, *, max_kinds: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if interval_s <= 0:
            raise ConfigError(f"the audit fold interval must be positive, not {interval_s}")
        self.interval_s = interval_s
        self.max_kinds = max_kinds
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[FoldKey, _Window] = {}
        self._pending: list[Record] = []  # counts of intervals closed by ``offer``

    @staticmethod
    def kind(rec: Record) -> FoldKey:
        return (rec.actor, rec.key_id, rec.client_addr, rec.action, rec.status)

    def offer(self, rec: Record) -> Record | None:
        """``rec`` when it must be recorded now; None when it was folded into a count."""
        key = self.kind(rec)
        now = self._clock()
        with self._lock:
            win = self._windows.get(key)
            if win is not None and now - win.opened >= self.interval_s:
                done = self._close(self._windows.pop(key))
                if done is not None:  # the last interval's count; this one opens the next
                    self._pending.append(done)
                win = None
            if win is None:
                if len(self._windows) < self.max_kinds:
                    self._windows[key] = _Window(now, datetime.now(UTC))
                return rec
            win.count += rec.count
            if win.folded is None:
                win.folded = rec
            return None

    def due(self) -> list[Record]:
        """Count records of every interval that is over (call it now and then)."""
        now = self._clock()
        out = []
        with self._lock:
            out.extend(self._pending)
            self._pending.clear()
            for key in [k for k, w in self._windows.items() if now - w.opened >= self.interval_s]:
                rec = self._close(self._windows.pop(key))
                if rec is not None:
                    out.append(rec)
        return out

    def drain(self) -> list[Record]:
        """Every pending count record, intervals over or not (at shutdown)."""
        with self._lock:
            out = list(self._pending)
            self._pending.clear()
            for win in self._windows.values():
                rec = self._close(win)
                if rec is not None:
                    out.append(rec)
            self._windows.clear()
        return out

    @staticmethod
    def _close(win: _Window) -> Record | None:
        if win.folded is None or win.count == 0:
            return None
        detail = dict(win.folded.detail or {})
        detail["folded"] = {"from": stamp(win.opened_at), "to": stamp()}
        return dataclasses.replace(win.folded, count=win.count, detail=detail,
                                   seq=None, hash=None)
