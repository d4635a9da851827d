"""Generation speed of a GGUF file as the embedded engine serves it.

The file is served by the same engine process and client (``LlamaCppEngine``) that
``autoglm serve`` runs, with as many slots as concurrent streams and the prefix cache
off (every request prefills its whole prompt, as a new conversation does). Requests go
to the engine directly, without the HTTP gateway in front. After a short warm-up request,
each round times one stream alone, then ``streams`` at once; the figures are medians over
rounds (``runner`` interleaves rounds across files, one engine start per round).

- tokens/s, one stream: completion tokens / seconds from sending the request to its
  last token (prefill included, as a client sees it).
- tokens/s, N streams: completion tokens of all N / seconds from sending the first to
  the last one finishing.
- time to first token: sending the request -> its first text, one stream.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from autoglm.engine.base import Delta, Finished
from autoglm.errors import ConfigError
from autoglm.settings import Settings

if TYPE_CHECKING:
    from autoglm.engine.llamacpp.client import LlamaCppEngine

PROMPT = ("Write a long, detailed essay about the history of the Roman Empire, "
          "from its founding to its fall.")
Progress = Callable[[int, int], None]  # (rounds done, rounds in all)


@dataclass(frozen=True)
class SpeedConfig:
    streams: int = 8
    max_tokens: int = 32
    rounds: int = 3

    def check(self) -> None:
        if not 1 <= self.streams <= 64:
            raise ConfigError(f"concurrent streams must be 1..64, not {self.streams}")
        if self.max_tokens < 2:
            raise ConfigError("the speed runs need at least 2 tokens per request")
        if self.rounds < 1:
            raise ConfigError("the speed runs need at least one round")


@dataclass(frozen=True)
class Speed:
    tokens_per_s_1: float
    tokens_per_s_n: float
    ttft_ms: float
    streams: int


@dataclass(frozen=True)
class _Run:
    tokens: int
    ttft_s: float
    start: float
    end: float


def measure_speed(settings: Settings, model_path: Path, config: SpeedConfig,
                  progress: Progress | None = None) -> Speed:
    config.check()
    return asyncio.run(_measure(settings, model_path, config, progress))


async def _measure(settings: Settings, model_path: Path, config: SpeedConfig,
                   progress: Progress | None) -> Speed:
    from autoglm.engine.llamacpp.client import LlamaCppEngine

    served = settings.model_copy(update={
        "slots": config.streams, "prefix_cache": False, "log_level": "warning",
        "ctx_per_slot": max(512, config.max_tokens + 256),
        "default_max_tokens": config.max_tokens})
    run_dir = Path(tempfile.mkdtemp(prefix="autoglm-eval-"))  # short: a socket path
    engine = LlamaCppEngine(served, model_path, "evaluate", run_dir)
    try:
        await engine.start()
        await _one(engine, 4)  # warm-up
        single: list[_Run] = []
        rates_n: list[float] = []
        for r in range(config.rounds):
            single.append(await _one(engine, config.max_tokens))
            runs = await asyncio.gather(*(_one(engine, config.max_tokens)
                                          for _ in range(config.streams)))
            wall = max(x.end for x in runs) - min(x.start for x in runs)
            rates_n.append(sum(x.tokens for x in runs) / wall)
            if progress is not None:
                progress(r + 1, config.rounds)
    finally:
        await engine.close()
        shutil.rmtree(run_dir, ignore_errors=True)
    return Speed(
        tokens_per_s_1=statistics.median(x.tokens / (x.end - x.start) for x in single),
        tokens_per_s_n=statistics.median(rates_n),
        ttft_ms=statistics.median(x.ttft_s for x in single) * 1e3,
        streams=config.streams)


def median_speed(rounds: list[Speed]) -> Speed:
    """Each figure's median over rounds measured separately (``measure_speed`` per round)."""
    return Speed(tokens_per_s_1=statistics.median(s.tokens_per_s_1 for s in rounds),
                 tokens_per_s_n=statistics.median(s.tokens_per_s_n for s in rounds),
                 ttft_ms=statistics.median(s.ttft_ms for s in rounds),
                 streams=rounds[0].streams)


async def _one(engine: LlamaCppEngine, max_tokens: int) -> _Run:
    from autoglm.pipeline.request import InferenceRequest

    req = InferenceRequest("chat", body={
        "model": "evaluate", "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens, "temperature": 0})
    engine.prepare(req)
    start = time.perf_counter()
    first: float | None = None
    tokens = 0
    async for ev in engine.generate(req):
        if isinstance(ev, Delta) and ev.text and first is None:
            first = time.perf_counter()
        elif isinstance(ev, Finished):
            tokens = ev.completion_tokens
    end = time.perf_counter()
    return _Run(tokens, (first or end) - start, start, end)
