"""The limits stage: what deciding one request costs, with and without Redis.

    .venv/bin/python bench/limits.py [--requests 20000] [--rounds 3]
        [--redis-url redis://127.0.0.1:6379/0] [--out bench/results/limits.json]

Times ``Meter.take`` + ``Meter.settle`` (what the limits stage does per request: a key,
a project and a tenant, each with requests- and tokens-per-minute limits, and a daily
quota) with ``perf_counter_ns``, in three modes:

- **local**: no ``redis_url``, the embedded default (exact per process);
- **leased**: with Redis, the default ``lease_fraction`` (0.02): a process leases 2% of a
  limit at a time and decides locally while it lasts;
- **round trip**: with Redis, every decision made there (a lease as small as one
  request): the alternative design, one pipelined round trip per request.

Limits are high enough that nothing is refused. Median of the rounds' p50/p99. Goal
(Redis issue): the limits stage adds <= 0.05 ms p50. A Redis of its own prefix is used
and its keys deleted afterwards; unreachable, the Redis modes are skipped with a note.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import platform
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

from autoglm.limits import LimitBook, Meter
from autoglm.state.redis import RedisLink

LIMITS = {"key": {"requests_per_minute": 10**9, "tokens_per_minute": 10**12},
          "project": {"requests_per_minute": 10**9, "tokens_per_minute": 10**12},
          "tenant": {"requests_per_minute": 10**9, "tokens_per_minute": 10**12,
                     "tokens_per_day": 10**13}}
GOAL_P50_US = 50.0


async def _run(meter: Meter, n: int) -> list[int]:
    for i in range(200):  # warm: the first lease, code paths
        meter.settle(await meter.take("key_a", "prj_a", "ten_a", 600), 300)
    samples = []
    gc.disable()
    try:
        for _ in range(n):
            t0 = time.perf_counter_ns()
            d = await meter.take("key_a", "prj_a", "ten_a", 600)
            meter.settle(d, 300)
            samples.append(time.perf_counter_ns() - t0)
    finally:
        gc.enable()
    return samples


def _pct(samples: list[int], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))] / 1000


async def _mode(mode: str, args: argparse.Namespace) -> dict[str, Any] | None:
    link = None
    if mode != "local":
        link = RedisLink(args.redis_url, prefix=f"bench-{uuid.uuid4().hex[:8]}:")
        if not await link.ping():
            await link.close()
            return None
    # a round trip per request: a lease of one request (no limit is anywhere near 1e9 x)
    fraction = 1e-12 if mode == "round trip" else 0.02
    p50s, p99s = [], []
    for _ in range(args.rounds):
        meter = Meter(LimitBook(LIMITS), link=link, lease_fraction=fraction)
        samples = await _run(meter, args.requests)
        p50s.append(_pct(samples, 0.5))
        p99s.append(_pct(samples, 0.99))
    if link is not None:
        keys = await link.client.keys(link.key("*"))
        if keys:
            await link.client.delete(*keys)
        await link.close()
    return {"p50_us": round(statistics.median(p50s), 2),
            "p99_us": round(statistics.median(p99s), 2), "rounds_p50_us": p50s}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--out", type=Path, default=Path("bench/results/limits.json"))
    args = ap.parse_args()
    out: dict[str, Any] = {"machine": platform.platform(), "requests": args.requests,
                           "rounds": args.rounds, "goal_p50_us": GOAL_P50_US, "modes": {}}
    print(f"{'mode':<12} {'p50 us':>8} {'p99 us':>8}  goal")
    for mode in ("local", "leased", "round trip"):
        got = await _mode(mode, args)
        out["modes"][mode] = got
        if got is None:
            print(f"{mode:<12} skipped: no Redis at {args.redis_url}")
            continue
        verdict = "met" if got["p50_us"] <= GOAL_P50_US else "MISSED"
        print(f"{mode:<12} {got['p50_us']:>8.2f} {got['p99_us']:>8.2f}  {verdict}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"(goal: the limits stage adds <= {GOAL_P50_US:g} us p50; saved {args.out})")


if __name__ == "__main__":
    asyncio.run(main())
