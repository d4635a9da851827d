"""An in-process embedded engine for the prefix-cache tests: the real model, the real
scheduler thread, and a sink that collects each request's events."""

from __future__ import annotations

import itertools
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from autoglm.engine.catalog import embedded_model_path
from autoglm.engine.llamacpp.budget import BudgetConfig, PrefillBudget
from autoglm.engine.llamacpp.model import ContextConfig, LlamaModel
from autoglm.engine.llamacpp.prefix import PrefixCache
from autoglm.engine.llamacpp.prompt import PromptBuilder
from autoglm.engine.llamacpp.sampling import Sampler, SamplingParams
from autoglm.engine.llamacpp.scheduler import Job, Scheduler
from autoglm.engine.llamacpp.text import TextStream


@dataclass(eq=False)
class Result:
    sent: float
    text: str = ""
    cached: int = -1
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish: str | None = None
    token_times: list[float] = field(default_factory=list)  # when each text delta came
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def ttft(self) -> float:
        return self.token_times[0] - self.sent

    def gaps(self) -> list[float]:
        t = self.token_times
        return [b - a for a, b in itertools.pairwise(t)]


class Engine:
    """One model context and its decode loop, driven without sockets."""

    def __init__(self, *, slots: int = 2, ctx: int = 1024, prefix: bool = True,
                 store_mib: int = 64, scope: str = "tenant", digest: str = "test-model",
                 budget: BudgetConfig | None = None, threads: int = 1,
                 reuse_answers: bool = False) -> None:
        self.model = LlamaModel(embedded_model_path(), ContextConfig(slots, ctx, 512, threads))
        self.prompts = PromptBuilder(self.model)
        self.cache = PrefixCache(self.model, digest, enabled=prefix, store_mib=store_mib,
                                 scope=scope, reuse_answers=reuse_answers)
        self.scheduler = Scheduler(self.model, self._emit, self.cache,
                                   PrefillBudget(budget or BudgetConfig(512)))
        self.scheduler.start()
        self.scheduler.warmed.wait()

    @staticmethod
    def _emit(outbox: list[tuple[Any, list[dict]]]) -> None:
        now = time.perf_counter()
        for res, events in outbox:
            for ev in events:
                if ev["ev"] == "delta":
                    res.text += ev["text"]
                    res.token_times.append(now)
                elif ev["ev"] == "done":
                    res.cached = ev["cached_tokens"]
                    res.prompt_tokens = ev["prompt_tokens"]
                    res.completion_tokens = ev["completion_tokens"]
                    res.finish = ev["finish_reason"]
                    res.done.set()
                else:
                    res.finish = "error"
                    res.done.set()

    def tokens(self, messages: list[dict] | None = None, text: str | None = None) -> list[int]:
        return self.prompts.chat(messages) if messages is not None else \
            self.prompts.completion(text or "")

    def submit(self, prompt: list[int], *, max_tokens: int = 12, tenant: str | None = "a",
               ) -> tuple[Result, Job]:
        res = Result(time.perf_counter())
        sampler = Sampler(self.model, SamplingParams.from_dict({"temperature": 0.0}))
        job = Job(prompt, max_tokens, sampler, TextStream([]), res,
                  self.cache.scope_of(tenant))
        self.scheduler.submit(job)
        return res, job

    def submit_together(self, prompts: list[list[int]], *, max_tokens: int = 12,
                        tenant: str | None = "a") -> list[Result]:
        """Jobs made first, then queued back to back: they arrive in the same instant (a
        sampler takes long enough to make that the decode loop could start in between)."""
        made = []
        for prompt in prompts:
            res = Result(time.perf_counter())
            sampler = Sampler(self.model, SamplingParams.from_dict({"temperature": 0.0}))
            made.append((res, Job(prompt, max_tokens, sampler, TextStream([]), res,
                                  self.cache.scope_of(tenant))))
        for _, job in made:
            self.scheduler.submit(job)
        return [res for res, _ in made]

    def run(self, prompt: list[int], **kw: Any) -> Result:
        res, _ = self.submit(prompt, **kw)
        if not res.done.wait(120):
            raise TimeoutError("the engine did not finish")
        return res

    def stats(self) -> dict[str, Any]:
        return self.cache.stats()

    def close(self) -> None:
        self.scheduler.stop()
        self.model.close()


def chat(system: str, *turns: str, answers: tuple[str, ...] = ()) -> list[dict]:
    msgs = [{"role": "system", "content": system}]
    for i, t in enumerate(turns):
        msgs.append({"role": "user", "content": t})
        if i < len(answers):
            msgs.append({"role": "assistant", "content": answers[i]})
    return msgs


SYSTEM = (
    "You are the support assistant of Northwind Traders, a wholesaler of fine foods. "
    "Answer politely and briefly. Orders ship from Seattle within two business days; "
    "express shipping costs twelve dollars and arrives the next day. Returns are accepted "
    "within thirty days when the goods are unopened. Our catalogue lists cheeses, teas, "
    "coffees, sauces, chocolates, dried fruit and pasta from eleven countries. Customers "
    "with an account earn one point per dollar; a hundred points give a five dollar "
    "voucher. Never promise delivery dates for items that are out of stock, and never "
    "share another customer's order details. Prices include sales tax in Washington only."
)


def wait_all(results: list[Result], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    for r in results:
        if not r.done.wait(max(0.0, deadline - time.monotonic())):
            raise TimeoutError("the engine did not finish")


__all__ = ["SYSTEM", "Engine", "Result", "chat", "queue", "wait_all"]
