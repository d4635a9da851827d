"""Continuous batching: every active slot advances in the same ``llama_decode``.

The loop runs on its own thread inside the engine process (ctypes releases the GIL
during ``llama_decode``). Each step puts one token per generating slot into the batch
and fills the remaining room with prompt tokens of newly admitted slots (chunked
prefill), decodes once, then samples each slot from its own logits row. While answers
are being generated, long prompts get only the step's prefill budget (``budget.py``),
so running streams keep their pace.

A slot keeps its sequence's KV cache after its request ends; a new request is placed
where the longest prefix of its prompt is already cached (``prefix.py``) and only the
rest of its prompt is decoded.

Events leave through one ``emit(outbox)`` call per step, ``outbox`` being a list of
``(sink, events)``: one wake-up of the event loop per step, however many slots are
busy. Cancelling a slot frees it before the next step.

LoRA adapters (``lora.py``) apply to a whole decode, so a step decodes the requests of
one adapter (or of the base alone) only: the group in the context keeps it while others
wait, for at most ``ADAPTER_QUANTUM`` steps, then the group with the oldest request
goes next. Requests of different adapters arriving together thus take turns instead of
sharing steps; their KV caches stay where they are meanwhile.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from autoglm.engine.llamacpp.budget import BudgetConfig, PrefillBudget
from autoglm.engine.llamacpp.lora import AdapterSet
from autoglm.engine.llamacpp.model import Batch, LlamaModel
from autoglm.engine.llamacpp.prefix import PrefixCache
from autoglm.engine.llamacpp.sampling import Sampler
from autoglm.engine.llamacpp.text import TextStream

log = logging.getLogger("autoglm.engine")

ADAPTER_QUANTUM = 16  # steps one adapter's group keeps the context while another waits

Emit = Callable[[list[tuple[Any, list[dict]]]], None]


@dataclass(eq=False)
class Job:
    """One admitted generation: prompt tokens in, text events out to ``sink``."""

    prompt: list[int]
    max_tokens: int
    sampler: Sampler
    text: TextStream
    sink: Any
    scope: str = "t:"  # whose cached prefixes it may reuse (PrefixCache.scope_of)
    cancelled: threading.Event = field(default_factory=threading.Event)
    cached: int = 0  # prompt tokens whose KV cache was reused
    order: int = 0  # arrival number: prompts are fed first come first served
    adapter: str | None = None  # the LoRA adapter it is decoded with (None: the base)


@dataclass(eq=False)
class _Slot:
    seq_id: int
    job: Job | None = None
    fed: int = 0  # prompt tokens already decoded
    pos: int = 0
    generated: int = 0
    last_token: int = -1
    logits_index: int = -1
    tokens: list[int] = field(default_factory=list)  # reusable tokens of its KV cache
    growing: bool = False  # what the running request decodes still extends ``tokens``
    scope: str | None = None  # whose tokens they are
    used_at: float = 0.0  # when its last request ended
    pending_copy: bool = False  # gets another slot's KV at the next decode
    copy_source: bool = False  # another slot gets its KV at the next decode

    @property
    def prefilling(self) -> bool:
        return self.job is not None and self.fed < len(self.job.prompt)


class Scheduler:
    def __init__(self, model: LlamaModel, emit: Emit, prefix: PrefixCache | None = None,
                 budget: PrefillBudget | None = None,
                 adapters: AdapterSet | None = None) -> None:
        self.model = model
        self.adapters = adapters or AdapterSet(model)
        self._group_steps = 0  # steps the adapter in the context has had since it came in
        self._steps = 0
        self._ran_at: dict[str | None, int] = {}  # the last step each adapter's group ran
        self.emit = emit
        cfg = model.config
        self.prefix = prefix or PrefixCache(model, "", enabled=False, store_mib=0,
                                            scope="tenant")
        self.budget = budget or PrefillBudget(BudgetConfig(cfg.n_batch))
        self.ctx_per_slot = cfg.ctx_per_slot
        self.n_batch = cfg.n_batch
        self.slots = [_Slot(seq_id=i) for i in range(cfg.slots)]
        self.batch = Batch(max(cfg.n_batch, cfg.slots))
        self.inbox: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        # Jobs that arrived while every slot was still held: a client that went away
        # frees its slot only once the engine has seen the hang-up, and the gateway may
        # admit the next request before that. Such a job waits here, never refused.
        self.pending: deque[Job] = deque()
        self._arrivals = 0
        self._thread = threading.Thread(target=self._run, name="decode-loop", daemon=True)
        self._stopping = False
        self.warmed = threading.Event()

    # --- called from other threads -----------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        self.inbox.put(job)

    def stop(self) -> None:
        self._stopping = True
        self.inbox.put(None)
        self._thread.join(timeout=10)

    def busy(self) -> int:
        return sum(1 for s in self.slots if s.job is not None)

    def waiting(self) -> int:
        return len(self.pending)

    # --- the loop ------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self.model.warm_up()
            self.warmed.set()
            while not self._stopping:
                idle = not self.pending and not any(s.job for s in self.slots)
                self._admit(block=idle)
                self._drop_cancelled()
                self._fill()
                if any(s.job for s in self.slots):
                    self._step()
                elif self.pending:  # slots still held by hang-ups not yet seen: wait a bit
                    self._admit(block=True, timeout=0.005)
        except Exception:  # a bug here must end the process loudly, not hang requests
            log.exception("decode loop failed; engine exits")
            os._exit(70)

    def _admit(self, block: bool, timeout: float | None = None) -> None:
        while True:
            try:
                job = self.inbox.get(block=block, timeout=timeout if block else None)
            except queue.Empty:
                return
            block = False
            if job is None:
                return
            self._arrivals += 1
            job.order = self._arrivals
            self.pending.append(job)

    def _fill(self) -> None:
        """Waiting jobs into free slots, first come first served, each where most of its
        prompt is cached already."""
        while self.pending:
            job = self.pending[0]
            placed = self.prefix.place(job.prompt, job.scope, self.slots)
            if placed is None:
                return
            self.pending.popleft()
            slot, reused = placed
            job.cached = reused
            slot.job, slot.fed, slot.pos, slot.generated = job, reused, reused, 0
            slot.scope, slot.growing = job.scope, True

    def _drop_cancelled(self) -> None:
        for slot in self.slots:
            if slot.job is not None and slot.job.cancelled.is_set():
                self._release(slot)
        if any(job.cancelled.is_set() for job in self.pending):
            for job in [j for j in self.pending if j.cancelled.is_set()]:
                self.pending.remove(job)
                job.sampler.free()

    def _release(self, slot: _Slot) -> None:
        """The request is over; its KV cache stays for the next one (unless disabled)."""
        if slot.job is not None:
            slot.job.sampler.free()
        slot.job = None
        slot.used_at = time.monotonic()
        if not self.prefix.enabled:
            self.model.clear_sequence(slot.seq_id)
            slot.tokens, slot.scope = [], None

    def _group(self) -> str | None:
        """The adapter whose requests this step decodes (applied to the context first):
        the one in the context until its quantum is used up while another group waits,
        then the group that has waited longest (oldest request first on a tie)."""
        current = self.adapters.active
        jobs = [s.job for s in self.slots if s.job is not None]
        groups = {j.adapter for j in jobs}
        self._steps += 1
        if current in groups and (len(groups) == 1 or self._group_steps < ADAPTER_QUANTUM):
            self._group_steps += 1
            self._ran_at[current] = self._steps
            return current
        oldest = {g: min(j.order for j in jobs if j.adapter == g) for g in groups}
        waiting = [g for g in groups if g != current] or list(groups)
        chosen = min(waiting, key=lambda g: (self._ran_at.get(g, 0), oldest[g]))
        self.adapters.apply(chosen)
        self._group_steps = 1
        self._ran_at[chosen] = self._steps
        return chosen

    def _step(self) -> None:
        batch = self.batch
        batch.clear()
        generating = 0
        group = self._group()
        for slot in self.slots:  # one token for every slot that is generating
            slot.logits_index = -1
            if slot.job is not None and slot.job.adapter == group and not slot.prefilling:
                slot.logits_index = batch.add(slot.last_token, slot.pos, slot.seq_id, True)
                if slot.growing and self.prefix.reuse_answers:
                    slot.tokens.append(slot.last_token)
                else:
                    slot.growing = False
                slot.pos += 1
                generating += 1
        budget = self.budget.tokens(generating)
        prefilling = sorted(
            (s for s in self.slots if s.prefilling
             and s.job.adapter == group),  # type: ignore[union-attr]
            key=lambda s: s.job.order)  # type: ignore[union-attr]
        for slot in prefilling:  # then prompt chunks: short prompts whole, long ones by budget
            prompt = slot.job.prompt  # type: ignore[union-attr]
            rest = len(prompt) - slot.fed
            short = self.budget.short(len(prompt) - slot.job.cached)  # type: ignore[union-attr]
            if not short and budget <= 0:
                continue
            room = batch.capacity - batch.n
            take = min(rest if short else budget, rest, room)
            if rest - take == 1:  # never the last prompt token alone in a later step
                take = take + 1 if take < room and (short or take < 2) else take - 1
            if take <= 0:
                continue
            for k in range(take):
                last = slot.fed + k == len(prompt) - 1
                idx = batch.add(prompt[slot.fed + k], slot.pos, slot.seq_id, last)
                slot.pos += 1
                if last:
                    slot.logits_index = idx
            if slot.growing and take >= 2:  # a lone token is rounded otherwise (model.py)
                slot.tokens.extend(prompt[slot.fed:slot.fed + take])
            else:
                slot.growing = False
            slot.fed += take
            if not short:
                budget -= take
        t0 = time.perf_counter()
        rc = batch.decode(self.model)
        self.budget.observe(generating, batch.n - generating, time.perf_counter() - t0)
        for slot in self.slots:
            slot.pending_copy = slot.copy_source = False
        outbox: list[tuple[Any, list[dict]]] = []
        if rc != 0:
            for slot in self.slots:
                if slot.job is not None:
                    outbox.append((slot.job.sink, [_error(f"llama_decode failed ({rc})", 500)]))
                    self._release(slot)
            self.prefix.forget(self.slots)
        else:
            for slot in self.slots:
                if slot.job is not None and slot.logits_index >= 0:
                    self._sample(slot, outbox)
        if outbox:
            self.emit(outbox)

    def _sample(self, slot: _Slot, outbox: list[tuple[Any, list[dict]]]) -> None:
        job = slot.job
        if job is None:
            return
        token = job.sampler.sample(self.model, slot.logits_index)
        events: list[dict] = []
        finish: str | None = None
        if self.model.is_eog(token):
            finish = "stop"
        else:
            slot.generated += 1
            slot.last_token = token
            text = job.text.push(self.model.piece(token))
            if text:
                events.append({"ev": "delta", "text": text})
            if job.text.stopped:
                finish = "stop"
            elif slot.generated >= job.max_tokens or slot.pos >= self.ctx_per_slot:
                finish = "length"
        if finish is not None:
            tail = job.text.flush()
            if tail:
                events.append({"ev": "delta", "text": tail})
            events.append(
                {
                    "ev": "done",
                    "finish_reason": finish,
                    "prompt_tokens": len(job.prompt),
                    "completion_tokens": slot.generated,
                    "cached_tokens": job.cached,
                    "prefix": self.prefix.stats(),
                }
            )
            self._release(slot)
        if events:
            outbox.append((job.sink, events))


def _error(message: str, status: int) -> dict:
    return {"ev": "error", "status": status, "code": "engine_error", "message": message,
            "kind": "EngineError"}
