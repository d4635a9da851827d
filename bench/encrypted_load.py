"""Engine start time and memory: an encrypted model package against the plain file.

    .venv/bin/python bench/encrypted_load.py [--rounds 5] [--out bench/results/encrypted_load.json]

Times the engine process, ``python -m autoglm.engine.llamacpp.worker``, from spawning it
to its first answer to ``{"op": "hello"}`` (``load_integrity.Engine``), for the bundled
SmolLM2 GGUF (~94 MiB), in alternating rounds with the order rotated, and reports
medians:

- ``plain, no check``: the plain GGUF, mapped by llama.cpp (``model_trust: any``).
- ``plain, verified``: the plain GGUF as a registered model is loaded under
  ``model_trust: verified``: header checked, data read (mmap off) beside the whole hash.
- ``encrypted, verified``: the package encrypted for one recipient (``model encrypt``), as
  the registered package is loaded: the package's SHA-256 on one thread while the other
  authenticates and decrypts every 1 MiB chunk into a memfd and hashes the plaintext; the
  sealed memfd is then mapped by llama.cpp (``supply/memload.py``).
- ``encrypted, no check``: the package with ``model_trust: any`` (chunks still
  authenticated and the plaintext hashed against the header; no package hash).

Two figures: ``load``, llama.cpp's load call alone, in this process (with the checks and
the decryption that come before it), and ``ready``, the engine process from spawn to
hello (imports, load, context, a warm-up decode; ``--n-threads 1``). Memory: the
engine's VmRSS, RssAnon, RssShmem and RssFile at ready (``/proc/PID/status``): the
decrypted model lives once, as shared memory (the memfd, mapped, not copied).
The page cache is warm for every variant (each file is read before the rounds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load_integrity
from load_integrity import WORKER, Engine

from autoglm.engine.catalog import embedded_model_path
from autoglm.supply import encryption as enc
from autoglm.supply.manifest import gguf_header, sha256_file

PLAIN, VERIFIED, ENC_VERIFIED, ENC_ANY = ("plain, no check", "plain, verified",
                                          "encrypted, verified", "encrypted, no check")
VARIANTS = (PLAIN, VERIFIED, ENC_VERIFIED, ENC_ANY)


def _memory(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssShmem", "RssFile"):
            out[key] = int(value.split()[0]) // 1024  # MiB
    return out


def _in_process(plain: Path, package: Path, keyfile: Path, info: dict[str, Any],
                plain_sha: str, header: dict[str, Any]) -> dict[str, float]:
    """One load of each variant in this process (llama.cpp's load call only, no context,
    no warm-up), in ms. A mapped plain file is read lazily, at the first decode; the
    verified and encrypted loads have every byte in memory when they return."""
    import os

    from autoglm.engine.llamacpp.model import free_weights, load_weights
    from autoglm.supply.integrity import load_verified
    from autoglm.supply.memload import load_encrypted

    key = enc.model_key(keyfile)
    out = {}
    t0 = time.perf_counter()
    free_weights(load_weights(str(plain), mmap=True))
    out[PLAIN] = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    w, _ = load_verified(plain, plain_sha, plain.stat().st_size,
                         lambda src: load_weights(src, mmap=False), free_weights,
                         header=(header["bytes"], header["sha256"]))
    out[VERIFIED] = (time.perf_counter() - t0) * 1e3
    free_weights(w)
    for variant, sha in ((ENC_VERIFIED, info["sha256"]), (ENC_ANY, None)):
        t0 = time.perf_counter()
        w, _, memfd = load_encrypted(package, key, lambda src: load_weights(src, mmap=True),
                                     sha256=sha, size=info["size"],
                                     plain_sha256=info["plain_sha256"])
        out[variant] = (time.perf_counter() - t0) * 1e3
        free_weights(w)
        os.close(memfd)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("bench/results/encrypted_load.json"))
    args = ap.parse_args()
    plain = embedded_model_path()
    with tempfile.TemporaryDirectory(prefix="enc-bench-") as d:
        tmp = Path(d)
        enc.generate_keypair(tmp / "k.key", tmp / "k.pub")
        package = tmp / (plain.name + enc.SUFFIX)
        t0 = time.perf_counter()
        info = enc.encrypt_file(plain, package, [enc.load_public(tmp / "k.pub")])
        encrypt_ms = (time.perf_counter() - t0) * 1e3
        plain_sha = sha256_file(plain)  # also warms the page cache
        sha256_file(package)
        header = gguf_header(plain) or {}
        key = ["--key-file", str(tmp / "k.key")]
        commands = {
            PLAIN: (plain, []),
            VERIFIED: (plain, ["--sha256", plain_sha, "--size", str(plain.stat().st_size),
                               "--header-bytes", str(header["bytes"]),
                               "--header-sha256", header["sha256"]]),
            ENC_VERIFIED: (package, ["--sha256", info["sha256"], "--size", str(info["size"]),
                                     "--plain-sha256", info["plain_sha256"], *key]),
            ENC_ANY: (package, key),
        }
        load_integrity.ENGINE_ARGS[load_integrity.ENGINE_ARGS.index("--n-threads") + 1] = "1"
        Engine(WORKER, plain, tmp, []).start().stop()  # uncounted: imports cached
        _in_process(plain, package, tmp / "k.key", info, plain_sha, header)  # uncounted
        loads: dict[str, list[float]] = {v: [] for v in VARIANTS}
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
        for r in range(args.rounds):
            for v, ms in _in_process(plain, package, tmp / "k.key", info, plain_sha,
                                     header).items():
                loads[v].append(round(ms, 1))
            order = VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]
            for variant in order:
                model, extra = commands[variant]
                engine = Engine(WORKER, model, tmp, extra).start()
                memory = _memory(engine.proc.pid)
                checked = engine.hello.get("integrity") or {}
                engine.stop()
                if variant.startswith("encrypted") and checked.get("plain_sha256") != plain_sha:
                    raise SystemExit(f"error: {variant}: the engine reported {checked!r}")
                runs[variant].append({"round": r, "ready_ms": round(engine.ready_ms, 1),
                                      "decrypt_ms": checked.get("decrypt_ms"),
                                      "load_ms": checked.get("load_ms"), **memory})
            print(f"  round {r + 1}/{args.rounds}: " + ", ".join(
                f"{v} {runs[v][-1]['ready_ms']:.0f} ms" for v in VARIANTS), flush=True)
    med = {v: statistics.median(x["ready_ms"] for x in runs[v]) for v in VARIANTS}
    load_med = {v: statistics.median(loads[v]) for v in VARIANTS}

    def median_of(v: str, key: str) -> float | None:
        vals = [x[key] for x in runs[v] if x.get(key) is not None]
        return statistics.median(vals) if vals else None

    result = {
        "model": plain.name, "plain_bytes": plain.stat().st_size,
        "package_bytes": info["size"], "chunk_size": info["chunk_size"],
        "encrypt_ms": round(encrypt_ms, 1), "rounds": args.rounds, "page_cache": "warm",
        "median_load_ms": load_med,
        "load_ratio_vs_plain_verified": {v: round(load_med[v] / load_med[VERIFIED], 3)
                                         for v in VARIANTS},
        "median_ready_ms": med,
        "ratio_vs_plain_verified": {v: round(med[v] / med[VERIFIED], 3) for v in VARIANTS},
        "ratio_vs_plain_no_check": {v: round(med[v] / med[PLAIN], 3) for v in VARIANTS},
        "median_decrypt_ms": {v: median_of(v, "decrypt_ms") for v in (ENC_VERIFIED, ENC_ANY)},
        "median_memory_mib": {v: {k: median_of(v, k) for k in
                                  ("VmRSS", "RssAnon", "RssShmem", "RssFile")}
                              for v in VARIANTS},
        "loads_ms": loads, "runs": runs,
    }
    print(f"\n{'variant':<22}{'load ms':>9}{'x verified':>12}")
    for v in VARIANTS:
        print(f"{v:<22}{load_med[v]:>9.0f}{result['load_ratio_vs_plain_verified'][v]:>12.2f}")
    print(f"\n{'variant':<22}{'ready ms':>10}{'x verified':>12}{'x no check':>12}"
          f"{'RSS MiB':>9}{'anon':>7}{'shmem':>7}{'file':>7}")
    for v in VARIANTS:
        m = result["median_memory_mib"][v]
        print(f"{v:<22}{med[v]:>10.0f}{result['ratio_vs_plain_verified'][v]:>12.2f}"
              f"{result['ratio_vs_plain_no_check'][v]:>12.2f}{m['VmRSS']:>9.0f}"
              f"{m['RssAnon']:>7.0f}{m['RssShmem']:>7.0f}{m['RssFile']:>7.0f}")
    print(f"encrypt (model encrypt): {encrypt_ms:.0f} ms; decrypt in the engine: "
          f"{result['median_decrypt_ms']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
