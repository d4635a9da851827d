"""Continuous batching: every active slot advances in the same ``llama_decode``.

The loop runs on its own thread inside the engine process (ctypes releases the GIL
during ``llama_decode``). Each step puts one token per generating slot into the batch
and fills the remaining room with prompt tokens of newly admitted slots (chunked
prefill), decodes once, then samples each slot from its own logits row.

Events leave through one ``emit(outbox)`` call per step, ``outbox`` being a list of
``(sink, events)``: one wake-up of the event loop per step, however many slots are
busy. Cancelling a slot frees it before the next step.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from autoglm.engine.llamacpp.model import Batch, LlamaModel
from autoglm.engine.llamacpp.sampling import Sampler
from autoglm.engine.llamacpp.text import TextStream

log = logging.getLogger("autoglm.engine")

Emit = Callable[[list[tuple[Any, list[dict]]]], None]


@dataclass(eq=False)
class Job:
    """One admitted generation: prompt tokens in, text events out to ``sink``."""

    prompt: list[int]
    max_tokens: int
    sampler: Sampler
    text: TextStream
    sink: Any
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass(eq=False)
class _Slot:
    seq_id: int
    job: Job | None = None
    fed: int = 0  # prompt tokens already decoded
    pos: int = 0
    generated: int = 0
    last_token: int = -1
    logits_index: int = -1

    @property
    def prefilling(self) -> bool:
        return self.job is not None and self.fed < len(self.job.prompt)


class Scheduler:
    def __init__(self, model: LlamaModel, emit: Emit) -> None:
        self.model = model
        self.emit = emit
        cfg = model.config
        self.ctx_per_slot = cfg.ctx_per_slot
        self.n_batch = cfg.n_batch
        self.slots = [_Slot(seq_id=i) for i in range(cfg.slots)]
        self.batch = Batch(max(cfg.n_batch, cfg.slots))
        self.inbox: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        # Jobs that arrived while every slot was still held: a client that went away
        # frees its slot only once the engine has seen the hang-up, and the gateway may
        # admit the next request before that. Such a job waits here, never refused.
        self.pending: deque[Job] = deque()
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
            self.pending.append(job)

    def _fill(self) -> None:
        """Waiting jobs into free slots, first come first served."""
        while self.pending:
            slot = next((s for s in self.slots if s.job is None), None)
            if slot is None:
                return
            job = self.pending.popleft()
            slot.job, slot.fed, slot.pos, slot.generated = job, 0, 0, 0

    def _drop_cancelled(self) -> None:
        for slot in self.slots:
            if slot.job is not None and slot.job.cancelled.is_set():
                self._release(slot)
        if any(job.cancelled.is_set() for job in self.pending):
            for job in [j for j in self.pending if j.cancelled.is_set()]:
                self.pending.remove(job)
                job.sampler.free()

    def _release(self, slot: _Slot) -> None:
        if slot.job is not None:
            slot.job.sampler.free()
        slot.job = None
        self.model.clear_sequence(slot.seq_id)

    def _step(self) -> None:
        batch = self.batch
        batch.clear()
        for slot in self.slots:  # one token for every slot that is generating
            slot.logits_index = -1
            if slot.job is not None and not slot.prefilling:
                slot.logits_index = batch.add(slot.last_token, slot.pos, slot.seq_id, True)
                slot.pos += 1
        for slot in self.slots:  # then prompt chunks, as room allows
            if not slot.prefilling or batch.n >= batch.capacity:
                continue
            prompt = slot.job.prompt  # type: ignore[union-attr]
            take = min(len(prompt) - slot.fed, batch.capacity - batch.n)
            for k in range(take):
                last = slot.fed + k == len(prompt) - 1
                idx = batch.add(prompt[slot.fed + k], slot.pos, slot.seq_id, last)
                slot.pos += 1
                if last:
                    slot.logits_index = idx
            slot.fed += take
        rc = batch.decode(self.model)
        outbox: list[tuple[Any, list[dict]]] = []
        if rc != 0:
            for slot in self.slots:
                if slot.job is not None:
                    outbox.append((slot.job.sink, [_error(f"llama_decode failed ({rc})", 500)]))
                    self._release(slot)
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
                }
            )
            self._release(slot)
        if events:
            outbox.append((job.sink, events))


def _error(message: str, status: int) -> dict:
    return {"ev": "error", "status": status, "code": "engine_error", "message": message,
            "kind": "EngineError"}
