"""Shared pieces of the serving benchmark: the prompt, settings, and result records."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROMPT = (
    "Write a long, detailed essay about the history of the Roman Empire, "
    "from its founding to its fall."
)
MESSAGES = [{"role": "user", "content": PROMPT}]
ADMIN_KEY = "bench-serving-admin-key-0123456789abcdef"
N_BATCH = 512
REQUEST_TIMEOUT_S = 180.0

# System names, as they appear in the tables and the JSON.
OURS = "autoglm (HTTP)"
ENGINE = "autoglm engine (IPC)"  # diagnostic: our engine process without the HTTP gateway
RAW = "raw llama_cpp.Llama"
LCS = "llama_cpp.server (HTTP)"
DIRECT = "direct batched decode"


# --------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------
@dataclass
class Stream:
    """One generation as a client saw it."""

    ttft_s: float | None = None  # request sent -> first non-empty content
    total_s: float = 0.0  # request sent -> end of stream
    tokens: int = 0  # completion tokens (usage when reported, else content chunks)
    chunks: int = 0  # content chunks received
    usage_tokens: int | None = None
    prompt_tokens: int | None = None  # from usage, where reported
    finish_reason: str | None = None  # None: the stream ended without one (cut short)
    error: str | None = None
    text: str = ""


@dataclass
class Run:
    """N concurrent streams against one system."""

    system: str
    n: int
    wall_s: float
    streams: list[Stream] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.streams)

    @property
    def tps(self) -> float:
        return self.tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def ttfts_ms(self) -> list[float]:
        return [s.ttft_s * 1e3 for s in self.streams if s.ttft_s is not None]

    def summary(self) -> dict[str, Any]:
        return {
            "system": self.system, "n": self.n, "wall_s": round(self.wall_s, 4),
            "tokens": self.tokens, "tokens_per_s": round(self.tps, 2),
            "ttft_ms": [round(x, 2) for x in self.ttfts_ms],
            "streams": [
                {k: v for k, v in asdict(s).items() if k != "text"} | {"text_head": s.text[:60]}
                for s in self.streams
            ],
        }


def pct(values: list[float], q: float) -> float | None:
    """Percentile with linear interpolation (q in 0..100)."""
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None
