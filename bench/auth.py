"""Cost of authentication on a cache hit (the hot path of every request).

    .venv/bin/python bench/auth.py [--n 20000] [--out bench/results/auth.json]

Creates a SQLite control-plane database in a temp directory, one principal and key,
warms the cache, then times ``Authenticator.authenticate`` (header parsing, keyed hash,
cache lookup, expiry check) per call. Prints p50/p99 in microseconds and writes JSON.
The identity issue's target: authentication plus authorization <= 50 us p50.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from autoglm.security.auth import Authenticator, ensure_platform_admin
from autoglm.security.keystore import KeyService
from autoglm.store.db import Database


async def measure(n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite:///{Path(tmp) / 'cp.db'}")
        db.upgrade()
        svc = KeyService(db, b"p" * 32, cache_ttl_s=3600)
        secret, _ = svc.create(ensure_platform_admin(db))
        auth = Authenticator(svc)
        header = f"Bearer {secret}"
        await auth.authenticate(header)  # miss: loads the key into the cache
        samples = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            await auth.authenticate(header)
            samples.append((time.perf_counter_ns() - t0) / 1000)
        db.close()
    samples.sort()
    return {"n": n, "p50_us": statistics.median(samples),
            "p99_us": samples[int(len(samples) * 0.99) - 1], "mean_us": statistics.fmean(samples)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "auth.json")
    args = p.parse_args()
    result = asyncio.run(measure(args.n))
    print(f"authenticate (cache hit): p50 {result['p50_us']:.1f} us, p99 {result['p99_us']:.1f} us,"
          f" mean {result['mean_us']:.1f} us over {result['n']} calls (target: <= 50 us p50 "
          "with authorization)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
