"""``Feed``: the detector's counts, taken from the request path at the cost of a few dict
operations per request (no I/O, no clock read, no lock: it runs on the event loop).

Each ended request with a known caller (``pipeline/stages/alerts.py``) adds to the
current bucket's ``Tally`` of its key and of its tenant: one request, its tokens, an
error (5xx) or a refusal (4xx but 499), and for the key its client address. The monitor
``take``s the tallies when a bucket ends and hands them to the detector. Bounded: at
most ``max_subjects`` subjects and ``MAX_BUCKET_ADDRESSES`` addresses per key in one
bucket (more are not counted by address; they still count as requests).
"""

from __future__ import annotations

from autoglm.alerts.detector import Subject, Tally

MAX_BUCKET_ADDRESSES = 1024


class Feed:
    def __init__(self, max_subjects: int = 10_000) -> None:
        self.max_subjects = max_subjects
        self._tallies: dict[Subject, Tally] = {}

    def count(self, key_id: str | None, tenant_id: str | None, principal_id: str | None,
              client: str | None, tokens: int, status: int) -> None:
        """One ended request; ``status`` as answered (200, a 4xx or 5xx, 499 cancelled)."""
        error = status >= 500
        refusal = 400 <= status < 500 and status != 499
        if key_id:
            t = self._tally(("key", key_id))
            if t is not None:
                t.tenant_id, t.principal_id = tenant_id, principal_id
                self._add(t, tokens, error, refusal)
                if client:
                    addrs = t.addresses
                    if addrs is None:
                        addrs = t.addresses = {}
                    if client in addrs:
                        addrs[client] += 1
                    elif len(addrs) < MAX_BUCKET_ADDRESSES:
                        addrs[client] = 1
        if tenant_id:
            t = self._tally(("tenant", tenant_id))
            if t is not None:
                self._add(t, tokens, error, refusal)

    def take(self) -> dict[Subject, Tally]:
        """The tallies of the bucket that ended; a new bucket starts empty."""
        out, self._tallies = self._tallies, {}
        return out

    def _tally(self, subject: Subject) -> Tally | None:
        t = self._tallies.get(subject)
        if t is None:
            if len(self._tallies) >= self.max_subjects:
                return None
            t = self._tallies[subject] = Tally()
        return t

    @staticmethod
    def _add(t: Tally, tokens: int, error: bool, refusal: bool) -> None:
        t.requests += 1
        t.tokens += tokens
        if error:
            t.errors += 1
        elif refusal:
            t.refusals += 1
