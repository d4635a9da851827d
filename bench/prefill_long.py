"""Prefill that does not stall decoding, with a 4,000-token prompt, late in its prefill.

Run from the repository root::

    .venv/bin/python bench/prefill_long.py [--rounds 3] [--prompt-tokens 4000] [--at 0.0,0.5,0.75]

Each round, for each point ``at`` (a share of the long prompt already prefilled when the
stream starts): a quiet run of a short stream (its gaps between tokens alone), then the
long prompt is submitted and left to prefill alone, at full speed, until about ``at`` of
it is in; then the same stream starts and runs beside what is left of the prompt, which
the scheduler now feeds within its per-step budget. The p95 gap of the stream beside the
prompt over its quiet p95 is the figure (the promise: within 2x). Late in a 4,000-token
prompt each prompt token attends to thousands of cached ones, so it costs more than early
on: this is where the per-step budget has the least room.

The real model and scheduler in process (one thread, as the tests use); medians over
rounds; JSON in ``bench/results/prefill_long.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from autoglm.engine.catalog import embedded_model_path
from autoglm.engine.llamacpp.budget import BudgetConfig, PrefillBudget
from autoglm.engine.llamacpp.model import ContextConfig, LlamaModel
from autoglm.engine.llamacpp.prefix import PrefixCache
from autoglm.engine.llamacpp.prompt import PromptBuilder
from autoglm.engine.llamacpp.sampling import Sampler, SamplingParams
from autoglm.engine.llamacpp.scheduler import Job, Scheduler
from autoglm.engine.llamacpp.text import TextStream

ROOT = Path(__file__).resolve().parents[1]
COUNT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11,"


class Run:
    def __init__(self) -> None:
        self.times: list[float] = []
        self.done = threading.Event()

    def p95_gap(self, skip: int = 5) -> float:
        gaps = [b - a for a, b in zip(self.times, self.times[1:])][skip:]
        return statistics.quantiles(gaps, n=20)[-1]


class Bench:
    def __init__(self, ctx: int, threads: int, stall_factor: float) -> None:
        self.model = LlamaModel(embedded_model_path(), ContextConfig(2, ctx, 512, threads))
        self.prompts = PromptBuilder(self.model)
        self.cache = PrefixCache(self.model, "bench", enabled=False, store_mib=0,
                                 scope="tenant", reuse_answers=False)
        self.prefilled: dict[int, int] = {}
        self.scheduler = Scheduler(self.model, self._emit, self.cache,
                                   PrefillBudget(BudgetConfig(512, stall_factor=stall_factor)))
        self.scheduler.start()
        self.scheduler.warmed.wait()

    @staticmethod
    def _emit(outbox: list[tuple[Any, list[dict]]]) -> None:
        now = time.perf_counter()
        for run, events in outbox:
            for ev in events:
                if ev["ev"] == "delta":
                    run.times.append(now)
                elif ev["ev"] in ("done", "error"):
                    run.done.set()

    def submit(self, tokens: list[int], max_tokens: int) -> tuple[Run, Job]:
        run = Run()
        sampler = Sampler(self.model, SamplingParams.from_dict({"temperature": 0.0}))
        job = Job(tokens, max_tokens, sampler, TextStream([]), run, self.cache.scope_of("a"))
        self.scheduler.submit(job)
        return run, job

    def close(self) -> None:
        self.scheduler.stop()
        self.model.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--prompt-tokens", type=int, default=4000)
    p.add_argument("--at", default="0.0,0.5,0.75",
                   help="shares of the long prompt prefilled when the stream starts")
    p.add_argument("--stream-tokens", type=int, default=60)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--stall-factor", type=float, default=1.5)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "prefill_long.json")
    args = p.parse_args(argv)
    points = [float(x) for x in args.at.split(",")]
    bench = Bench(args.prompt_tokens + 256, args.threads, args.stall_factor)
    try:
        stream = bench.prompts.completion(COUNT)
        words = "The quick brown fox jumps over the lazy dog. "
        long_prompt = bench.prompts.completion(words * (args.prompt_tokens // 10 + 10))
        long_prompt = long_prompt[:args.prompt_tokens]
        # the prompt alone, at full speed: its prefill rate, to know when 'at' is reached
        t0 = time.perf_counter()
        alone, _ = bench.submit(long_prompt, 1)
        alone.done.wait(600)
        full_s = time.perf_counter() - t0
        rate = args.prompt_tokens / full_s
        print(f"{args.prompt_tokens}-token prompt alone: {full_s:.1f} s ({rate:.0f} tokens/s)",
              file=sys.stderr)
        rows: dict[float, list[float]] = {a: [] for a in points}
        for r in range(args.rounds):
            for at in points:
                quiet, _ = bench.submit(stream, args.stream_tokens)
                quiet.done.wait(120)
                _, job = bench.submit(long_prompt, 1)
                time.sleep(at * full_s)  # about this share of it is in by now
                busy, _ = bench.submit(stream, args.stream_tokens)
                busy.done.wait(300)
                job.cancelled.set()
                time.sleep(0.3)
                ratio = busy.p95_gap() / quiet.p95_gap()
                rows[at].append(ratio)
                print(f"round {r + 1}, stream starting at {at:.0%} of the prompt: p95 gap "
                      f"{busy.p95_gap() * 1e3:.1f} ms vs quiet {quiet.p95_gap() * 1e3:.1f} ms "
                      f"= {ratio:.2f}x", file=sys.stderr)
        result = {"config": {k: (str(v) if isinstance(v, Path) else v)
                             for k, v in vars(args).items()},
                  "prompt_alone_s": full_s, "prompt_tokens_per_s": rate,
                  "p95_gap_ratio_median": {f"{a:.2f}": statistics.median(v)
                                           for a, v in rows.items()},
                  "p95_gap_ratios": {f"{a:.2f}": v for a, v in rows.items()}}
        print(json.dumps(result["p95_gap_ratio_median"]))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        return 0
    finally:
        bench.close()


if __name__ == "__main__":
    raise SystemExit(main())
