"""Manifest hashing speed against `sha256sum` on the same file.

    .venv/bin/python bench/hashing.py [--size-mib 512] [--rounds 5] [--out bench/results/hashing.json]

Writes a file of random bytes in a temp directory (kept in the page cache by a first
read), then times `sha256sum FILE` and ``autoglm.supply.manifest.sha256_file`` in
alternating rounds and reports median throughput and the ratio. Target (model supply
chain issue): ours >= 90% of sha256sum.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from autoglm.supply.manifest import sha256_file


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size-mib", type=int, default=512)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "hashing.json")
    args = p.parse_args()
    if shutil.which("sha256sum") is None:
        raise SystemExit("error: sha256sum not found (coreutils)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "blob.bin"
        with path.open("wb") as fh:
            for _ in range(args.size_mib // 16):
                fh.write(os.urandom(16 << 20))
        size = path.stat().st_size
        subprocess.run(["sha256sum", str(path)], check=True, capture_output=True)  # warm cache
        ours, theirs = [], []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            out = subprocess.run(["sha256sum", str(path)], check=True, capture_output=True)
            theirs.append(size / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            digest = sha256_file(path)
            ours.append(size / (time.perf_counter() - t0))
            if out.stdout.split()[0].decode() != digest:
                raise SystemExit("error: digests differ")
    mib = 1 << 20
    result = {"size_bytes": size, "rounds": args.rounds,
              "sha256sum_mib_s": statistics.median(theirs) / mib,
              "ours_mib_s": statistics.median(ours) / mib,
              "ratios": [o / t for o, t in zip(ours, theirs)]}
    result["ratio"] = statistics.median(result["ratios"])
    print(f"sha256sum {result['sha256sum_mib_s']:.0f} MiB/s, ours {result['ours_mib_s']:.0f} "
          f"MiB/s, ratio {result['ratio']:.3f} (median of {args.rounds} paired rounds, "
          f"{size >> 20} MiB file) -> {'MET' if result['ratio'] >= 0.9 else 'MISSED'} (>= 0.90)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
