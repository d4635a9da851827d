"""Prefix reuse: a new request skips the prompt tokens whose KV cache is already computed.

Three places can hold a prefix, tried for every request the scheduler places in a slot:

- ``slot``: a free slot's own sequence (the previous request's prompt and answer stay in
  the KV cache after it ends); the tail past the shared prefix is removed.
- ``copy``: another slot's sequence, busy or free, copied inside the llama.cpp context
  (``llama_memory_seq_cp``), then cut to the shared prefix. The context keeps one KV
  stream per sequence (llama.cpp's default, ``kv_unified`` off, which keeps attention
  per slot), and llama.cpp copies across streams only whole: the source's stream is
  copied during the next ``llama_decode``, so a slot that is the source of a pending
  copy is not given a new request in the same step, and a slot with a pending copy is
  neither a source nor saved until that decode ran.
- ``store``: a bounded host-memory LRU of saved sequence states
  (``llama_state_seq_get_data``), filled when a slot's content is about to be dropped
  (its slot goes to another prefix), so a conversation resumed after other requests
  used its slot still skips its prefix.

Only tokens that were prefilled as prompt are reused unless ``prefix_cache_reuse_answers``
is on (a conversation's previous answer is then reused too, as llama.cpp's server does,
at the price of answers that may differ from a full prefill's). Every cached prefix
carries a scope: the tenant by default, so no tenant's request ever
reuses (or times) another tenant's prompt; ``prefix_cache_scope = "platform"`` shares
them platform-wide. Store entries also carry the model digest: another model is a miss.
At least two prompt tokens are always decoded (model.py says why).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from autoglm.engine.llamacpp.model import LlamaModel

# Copying or restoring a sequence costs memory traffic on the decode thread: done only
# for prefixes at least this long (the slot's own prefix is always kept: it is free).
MIN_TOKENS = 32


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix (binary search over slice equality, in C)."""
    lo, hi = 0, min(len(a), len(b))
    if a[:hi] == b[:hi]:
        return hi
    while lo < hi:  # a[:lo] == b[:lo], a[:hi] != b[:hi]
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def model_digest(path: Path, integrity: dict[str, Any] | None) -> str:
    """What identifies the loaded weights: the verified SHA-256 when the trust check
    hashed the file, else a digest of its size, mtime, inode and first and last MiB."""
    sha = (integrity or {}).get("sha256")
    if isinstance(sha, str) and sha:
        return sha
    st = path.stat()
    h = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}".encode())
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, st.st_size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()


class SlotView(Protocol):
    """What the planner reads and sets on the scheduler's slots."""

    seq_id: int
    job: Any
    tokens: list[int]  # reusable tokens of the sequence's KV cache, positions 0..n-1
    scope: str | None
    used_at: float
    pending_copy: bool  # receives a whole-stream copy at the next decode
    copy_source: bool  # the source of a copy pending until the next decode


@dataclass(eq=False)
class _Entry:
    digest: str
    scope: str
    tokens: list[int]
    data: Any  # ctypes array of the sequence state
    size: int


@dataclass
class Counters:
    hits: dict[str, int] = field(default_factory=lambda: {"slot": 0, "copy": 0, "store": 0})
    misses: int = 0
    reused_tokens: int = 0
    evictions: int = 0

    def snapshot(self, store: PrefixStore) -> dict[str, Any]:
        return {"hits": dict(self.hits), "misses": self.misses,
                "reused_tokens": self.reused_tokens, "evictions": self.evictions,
                "store_bytes": store.used, "store_entries": len(store.entries)}


class PrefixStore:
    """Saved sequence states in host memory, least recently used first out."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = capacity_bytes
        self.entries: OrderedDict[int, _Entry] = OrderedDict()
        self.used = 0
        self._next = 0

    def best(self, digest: str, scope: str, prompt: list[int]) -> tuple[_Entry | None, int]:
        found, n = None, 0
        for entry in self.entries.values():
            if entry.digest != digest or entry.scope != scope:
                continue
            k = common_prefix(entry.tokens, prompt)
            if k > n:
                found, n = entry, k
        return found, n

    def covers(self, digest: str, scope: str, tokens: list[int]) -> bool:
        """An entry already holds ``tokens`` (or more after them)."""
        return any(e.digest == digest and e.scope == scope and len(e.tokens) >= len(tokens)
                   and common_prefix(e.tokens, tokens) == len(tokens)
                   for e in self.entries.values())

    def touch(self, entry: _Entry) -> None:
        for key, e in self.entries.items():
            if e is entry:
                self.entries.move_to_end(key)
                return

    def put(self, entry: _Entry) -> int:
        """Keep ``entry``; entries it extends go (a conversation's earlier turn). Returns
        how many entries were pushed out for room."""
        for key in [k for k, e in self.entries.items()
                    if e.digest == entry.digest and e.scope == entry.scope
                    and len(e.tokens) <= len(entry.tokens)
                    and common_prefix(e.tokens, entry.tokens) == len(e.tokens)]:
            self.used -= self.entries.pop(key).size
        evicted = 0
        while self.entries and self.used + entry.size > self.capacity:
            _, old = self.entries.popitem(last=False)
            self.used -= old.size
            evicted += 1
        self.entries[self._next] = entry
        self._next += 1
        self.used += entry.size
        return evicted


class PrefixCache:
    def __init__(self, model: LlamaModel, digest: str, *, enabled: bool,
                 store_mib: int, scope: str, reuse_answers: bool = False) -> None:
        self.model = model
        # Answer tokens are decoded one per step, and llama.cpp rounds a sequence's lone
        # token differently from the same token among a prompt's (model.py): reusing
        # them is faster for conversations, but then an answer can differ from the one
        # a full prefill gives. Off: only tokens prefilled as prompt are reused.
        self.reuse_answers = reuse_answers
        self.digest = digest
        self.enabled = enabled
        self.platform_wide = scope == "platform"
        self.store = PrefixStore(store_mib << 20)
        self.counters = Counters()

    def scope_of(self, tenant: str | None) -> str:
        """The cache key's scope for a request of ``tenant``."""
        return "*" if self.platform_wide else f"t:{tenant or ''}"

    def stats(self) -> dict[str, Any]:
        return self.counters.snapshot(self.store)

    # --- placing a request -----------------------------------------------------------------
    def place(self, prompt: list[int], scope: str, slots: list[Any]) -> tuple[Any, int] | None:
        """Pick a free slot for ``prompt`` and put the longest cached prefix there.
        Returns (slot, tokens reused), or None while no slot can take it."""
        free = [s for s in slots if s.job is None and not s.copy_source]
        if not free:
            return None
        if not self.enabled:
            slot = min(free, key=_emptiest)
            self._drop(slot, 0)
            return slot, 0
        # At least two prompt tokens are always decoded: the last one's logits start the
        # answer, and one token alone in a step is computed by other kernels (model.py).
        limit = max(0, len(prompt) - 2)

        def own(s: Any) -> int:
            return min(limit, common_prefix(s.tokens, prompt)) if s.scope == scope else 0

        # the free slot that already holds most of it (ties: the one losing least)
        mine = max(free, key=lambda s: (own(s), -len(s.tokens), s.used_at))
        n_own = own(mine)
        src, n_copy = None, 0  # another slot's sequence (busy, or free but held)
        for s in slots:
            if s is not mine and not s.pending_copy and s.scope == scope:
                k = min(limit, common_prefix(s.tokens, prompt))
                if k > n_copy:
                    src, n_copy = s, k
        entry, n_store = self.store.best(self.digest, scope, prompt)
        n_store = min(limit, n_store)
        other = max(n_copy if n_copy >= MIN_TOKENS else 0,
                    n_store if n_store >= MIN_TOKENS else 0)
        c = self.counters
        if n_own > 0 and n_own + MIN_TOKENS > other:
            self._drop(mine, n_own)
            return self._hit(mine, n_own, "slot")
        target = min(free, key=_emptiest)
        self._drop(target, 0)
        if other == 0:
            c.misses += 1
            return target, 0
        if src is not None and n_copy >= n_store:
            self.model.copy_sequence(src.seq_id, target.seq_id)
            self.model.trim_sequence(target.seq_id, n_copy)
            target.pending_copy, src.copy_source = True, True
            target.tokens, target.scope = prompt[:n_copy], scope
            return self._hit(target, n_copy, "copy")
        if entry is not None and self.model.load_sequence(target.seq_id, entry.data) and \
                self.model.trim_sequence(target.seq_id, n_store):
            self.store.touch(entry)
            target.tokens, target.scope = prompt[:n_store], scope
            return self._hit(target, n_store, "store")
        self.model.clear_sequence(target.seq_id)
        c.misses += 1
        return target, 0

    def _hit(self, slot: Any, n: int, source: str) -> tuple[Any, int]:
        self.counters.hits[source] += 1
        self.counters.reused_tokens += n
        return slot, n

    def _drop(self, slot: Any, keep: int) -> None:
        """Cut ``slot``'s sequence to its first ``keep`` tokens; what goes is saved to the
        host store first when it is long enough to be worth keeping."""
        tokens = slot.tokens
        if self.enabled and len(tokens) - keep >= MIN_TOKENS and slot.scope is not None:
            self._save(slot)
        if keep > 0 and self.model.trim_sequence(slot.seq_id, keep):
            slot.tokens = tokens[:keep]
        else:
            self.model.clear_sequence(slot.seq_id)
            slot.tokens, slot.scope = [], None

    def _save(self, slot: Any) -> None:
        store = self.store
        if store.capacity <= 0 or slot.pending_copy:
            self.counters.evictions += 1
            return
        if store.covers(self.digest, slot.scope, slot.tokens):
            return
        data = self.model.save_sequence(slot.seq_id)
        if data is None or len(data) > store.capacity:
            self.counters.evictions += 1
            return
        self.counters.evictions += store.put(
            _Entry(self.digest, slot.scope, list(slot.tokens), data, len(data)))

    def forget(self, slots: list[Any]) -> None:
        """After a failed decode nothing in the context is trusted: every slot empties."""
        for s in slots:
            self.model.clear_sequence(s.seq_id)
            s.tokens, s.scope, s.pending_copy, s.copy_source = [], None, False, False


def _emptiest(slot: Any) -> tuple[int, float]:
    """The free slot whose content is cheapest to lose: empty first, then least recent."""
    return (1 if slot.tokens else 0, slot.used_at)
