"""Engine start time with and without the load-time integrity check.

    .venv/bin/python bench/load_integrity.py [--rounds 5] [--big-mib 1024] [--work DIR] \
        [--models bundled,big] [--cache warm,cold] [--out bench/results/load_integrity.json]

For each model file (the bundled SmolLM2 GGUF, and a ~1 GiB GGUF built once from it into
``--work``), times the engine process, ``python -m autoglm.engine.llamacpp.worker``, from
spawning it to its first answer to ``{"op": "hello"}`` on its Unix socket, in alternating
rounds with the order rotated, and reports medians:

- ``without check``: no ``--sha256`` (``model_trust: any``): llama.cpp maps the file (mmap).
- ``with check``: ``--sha256 HEX --size N --header-bytes B --header-sha256 H``, what a
  registered GGUF gets under ``model_trust: verified``: the engine checks the GGUF header
  (all llama.cpp parses), then loads the tensor data through ``/proc/self/fd/N`` with mmap
  off while the whole file's hash, begun at process start, completes
  (``supply/integrity.py``).
- ``check, hash first``: ``--sha256 HEX --size N`` only (``model_trust: signed``, the
  bundled model, or a manifest without a header hash): the whole file is hashed before
  the load starts.
- ``mmap off, no check``: the same worker with mmap off and no hash, through a shim in
  this script that only changes ``load_weights``' default (``src/`` is unchanged). It
  separates the cost of hashing from the cost of reading the weights instead of mapping.

Goal (issue 10, point 1): with check <= 1.15x without check.

The 1 GiB model is a real llama.cpp model: the bundled model's metadata and tensors, with
its transformer blocks replicated (``blk.N.*`` copied from ``blk.(N % 30).*``, the
quantized bytes unchanged) and ``llama.block_count`` raised to match. Each file is read
in full before its rounds (``--cache warm``), or its pages are dropped from the page cache
before every start (``--cache cold``, ``posix_fadvise(DONTNEED)``: a first start after a
boot or a pull).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from autoglm.engine.catalog import embedded_model_path
from autoglm.supply.manifest import gguf_header, sha256_file

GOAL = 1.15
LLAMA_MAX_LAYERS = 512  # llama.cpp's fixed limit (llama-hparams.h)
WITHOUT, WITH, FIRST, NOMMAP = ("without check", "with check", "check, hash first",
                                "mmap off, no check")
VARIANTS = (WITHOUT, WITH, FIRST, NOMMAP)
CHECKED = (WITH, FIRST)
WORKER = [sys.executable, "-m", "autoglm.engine.llamacpp.worker"]
# The worker as it is, with mmap off by default: LlamaModel calls model.load_weights.
NOMMAP_WORKER = [sys.executable, "-c", (
    "import functools, sys\n"
    "from autoglm.engine.llamacpp import model, worker\n"
    "model.load_weights = functools.partial(model.load_weights, mmap=False)\n"
    "worker.main(sys.argv[1:])\n")]
ENGINE_ARGS = ["--model-id", "bench", "--slots", "2", "--ctx-per-slot", "512",
               "--n-batch", "512", "--n-threads", "0", "--default-max-tokens", "32"]
MIB = 1 << 20


# --------------------------------------------------------------------------------------
# the 1 GiB model
# --------------------------------------------------------------------------------------
def synthesize(src: Path, dest: Path, target_bytes: int) -> tuple[int, int]:
    """Write ``dest``: ``src`` with its blocks replicated until the file is about
    ``target_bytes``. Returns the block counts of ``dest`` and ``src``."""
    try:
        import gguf
    except ImportError:
        raise SystemExit('error: the gguf package is missing: pip install -e ".[bench]"') from None
    reader = gguf.GGUFReader(str(src))
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    count_key = f"{arch}.block_count"
    n_src = int(reader.fields[count_key].contents())
    blocks: dict[int, list[tuple[str, Any]]] = {}
    others = []
    for t in reader.tensors:
        m = re.fullmatch(r"blk\.(\d+)\.(.+)", t.name)
        if m:
            blocks.setdefault(int(m[1]), []).append((m[2], t))
        else:
            others.append(t)
    if sorted(blocks) != list(range(n_src)):
        raise SystemExit(f"error: {src} has blocks {sorted(blocks)[:5]}…, not 0..{n_src - 1}")
    block_bytes = sum(t.n_bytes for ts in blocks.values() for _, t in ts) / n_src
    n_blocks = n_src + max(0, math.ceil((target_bytes - src.stat().st_size) / block_bytes))
    if n_blocks > LLAMA_MAX_LAYERS:
        raise SystemExit(f"error: {n_blocks} blocks needed, llama.cpp loads at most "
                         f"{LLAMA_MAX_LAYERS}: ask for a smaller --big-mib")
    plan = [(t.name, t) for t in others]
    plan += [(f"blk.{n}.{suffix}", t) for n in range(n_blocks) for suffix, t in blocks[n % n_src]]

    partial = dest.with_name(dest.name + ".partial")
    writer = gguf.GGUFWriter(str(partial), arch=arch, endianess=reader.endianess)
    for field in reader.fields.values():  # as gguf's own gguf_new_metadata script copies
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        val_type = field.types[0]
        sub_type = field.types[-1] if val_type == gguf.GGUFValueType.ARRAY else None
        value = n_blocks if field.name == count_key else field.contents()
        writer.add_key_value(field.name, value, val_type, sub_type=sub_type)
    for name, t in plan:
        writer.add_tensor_info(name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _, t in plan:
        writer.write_tensor_data(t.data, tensor_endianess=reader.endianess)
    writer.close()
    partial.replace(dest)
    return n_blocks, n_src


def big_model(src: Path, work: Path, target_mib: int) -> tuple[Path, dict[str, Any]]:
    """The cached ~``target_mib`` model, built (and proven loadable) on first use."""
    work.mkdir(parents=True, exist_ok=True)
    dest = work / f"{src.stem}.x{target_mib}MiB.gguf"
    proof = dest.with_name(dest.name + ".json")  # written once llama.cpp ran it
    if dest.is_file() and proof.is_file():
        facts = json.loads(proof.read_text())
        if facts.get("bytes") == dest.stat().st_size and facts.get("source_bytes") == \
                src.stat().st_size:
            return dest, facts
    print(f"building {dest} ({target_mib} MiB) from {src.name} ...", flush=True)
    t0 = time.perf_counter()
    n_blocks, n_src = synthesize(src, dest, target_mib * MIB)
    print(f"  {n_blocks} blocks, {dest.stat().st_size / MIB:.0f} MiB in "
          f"{time.perf_counter() - t0:.1f} s; checking that llama.cpp runs it ...", flush=True)
    with tempfile.TemporaryDirectory(prefix="autoglm-bench-") as tmp:
        run = Engine(WORKER, dest, Path(tmp), []).start()
        try:
            text = run.complete("The capital of France is", 8)
        finally:
            run.stop()
    facts = {"bytes": dest.stat().st_size, "source_bytes": src.stat().st_size,
             "block_count": n_blocks, "source_block_count": n_src,
             "n_ctx_train": run.hello.get("n_ctx_train"), "sample_completion": text}
    print(f"  loaded; it decoded 8 tokens: {text!r}", flush=True)
    proof.write_text(json.dumps(facts, indent=2))
    return dest, facts


# --------------------------------------------------------------------------------------
# the engine process
# --------------------------------------------------------------------------------------
class Engine:
    """One engine process, spawned and timed to its first hello."""

    def __init__(self, command: list[str], model: Path, tmp: Path, extra: list[str],
                 cold: bool = False) -> None:
        self.command, self.model, self.extra, self.cold = command, model, extra, cold
        self.sock = tmp / "engine.sock"
        self.log_path = tmp / "engine.log"
        self.proc: subprocess.Popen | None = None
        self.ready_ms = 0.0
        self.cpu_ms = 0.0  # the engine's CPU time (all threads), spawn to exit
        self._cpu0 = 0.0
        self.hello: dict[str, Any] = {}

    def start(self, timeout_s: float = 600.0) -> Engine:
        self.sock.unlink(missing_ok=True)
        if self.cold:
            evict(self.model)
        self._cpu0 = _children_cpu_s()
        with self.log_path.open("wb") as log:
            t0 = time.perf_counter()
            self.proc = subprocess.Popen(
                [*self.command, "--socket", str(self.sock), "--model-path", str(self.model),
                 *ENGINE_ARGS, *self.extra], stdout=subprocess.DEVNULL, stderr=log)
        while True:
            try:
                self.hello = self._ask({"op": "hello"})[0]
                self.ready_ms = (time.perf_counter() - t0) * 1e3
                break
            except (OSError, ValueError, IndexError):
                pass
            if self.proc.poll() is not None:
                raise SystemExit(f"error: the engine exited with {self.proc.returncode} before "
                                 f"ready:\n{self.log_path.read_text()[-3000:]}")
            if time.perf_counter() - t0 > timeout_s:
                self.stop()
                raise SystemExit(f"error: the engine was not ready in {timeout_s:.0f} s")
            time.sleep(0.005)
        if self.hello.get("ev") != "hello":
            raise SystemExit(f"error: the engine answered {self.hello!r} to hello")
        return self

    def _ask(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        """Send one request; the events up to the last one (hello, done or error)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(120.0)
            s.connect(str(self.sock))
            s.sendall(json.dumps(request).encode() + b"\n")
            events, buf = [], b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return events
                buf += chunk
                *lines, buf = buf.split(b"\n")
                events += [json.loads(line) for line in lines if line.strip()]
                if events and events[-1].get("ev") in ("hello", "done", "error"):
                    return events

    def complete(self, prompt: str, max_tokens: int) -> str:
        events = self._ask({"op": "generate", "kind": "completion", "prompt": prompt,
                            "max_tokens": max_tokens, "sampling": {"temperature": 0}})
        if not events or events[-1].get("ev") != "done":
            raise SystemExit(f"error: the engine did not complete: {events[-1:]!r}")
        return "".join(e.get("text", "") for e in events if e.get("ev") == "delta")

    def stop(self) -> dict[str, Any]:
        """Stop the process; the engine's "model verified at load" record, if any."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.cpu_ms = (_children_cpu_s() - self._cpu0) * 1e3
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("msg") == "model verified at load":
                return rec
        return {}


# --------------------------------------------------------------------------------------
# the measurement
# --------------------------------------------------------------------------------------
def evict(path: Path) -> None:
    """Drop the file's pages from the page cache (its clean, unmapped ones): the next read
    comes from the disk, as at a first start after boot or a pull."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def measure(model: Path, label: str, rounds: int, tmp: Path, cold: bool) -> dict[str, Any]:
    size = model.stat().st_size
    t0 = time.perf_counter()
    digest = sha256_file(model)  # also warms the page cache for every variant
    warm_read_ms = (time.perf_counter() - t0) * 1e3
    if cold:
        evict(model)
        t0 = time.perf_counter()
        sha256_file(model)
        cold_read_ms = (time.perf_counter() - t0) * 1e3
    header = gguf_header(model)
    if header is None:
        raise SystemExit(f"error: {model} has no GGUF header this bench can read")
    checked = ["--sha256", digest, "--size", str(size)]
    commands = {WITHOUT: (WORKER, []),
                WITH: (WORKER, [*checked, "--header-bytes", str(header["bytes"]),
                                "--header-sha256", header["sha256"]]),
                FIRST: (WORKER, checked), NOMMAP: (NOMMAP_WORKER, [])}
    Engine(WORKER, model, tmp, []).start().stop()  # uncounted: imports and libraries cached
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    for r in range(rounds):
        order = VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]
        for variant in order:
            command, extra = commands[variant]
            engine = Engine(command, model, tmp, extra, cold).start()
            verified = engine.stop()
            checked = engine.hello.get("integrity")
            if (variant in CHECKED) != bool(checked):
                raise SystemExit(f"error: {variant}: the engine reported integrity {checked!r}")
            if variant in CHECKED and checked.get("sha256") != digest:
                raise SystemExit("error: the engine hashed another digest")
            runs[variant].append({"round": r, "ready_ms": round(engine.ready_ms, 1),
                                  "cpu_ms": round(engine.cpu_ms, 1),
                                  "hash_ms": verified.get("hash_ms"),
                                  "load_ms": verified.get("load_ms")})
        print(f"  {label} round {r + 1}/{rounds}: " + ", ".join(
            f"{v} {runs[v][-1]['ready_ms']:.0f} ms" for v in VARIANTS), flush=True)
    ms = {v: [x["ready_ms"] for x in runs[v]] for v in VARIANTS}
    out: dict[str, Any] = {
        "model": label, "path": str(model), "bytes": size, "sha256": digest,
        "page_cache": (f"cold: the file's pages dropped before every start (a cold read "
                       f"took {cold_read_ms:.0f} ms, a warm one {warm_read_ms:.0f} ms)" if cold
                       else "warm: the file was read in full just before the rounds "
                       f"({warm_read_ms:.0f} ms)"),
        "median_ms": {v: statistics.median(ms[v]) for v in VARIANTS},
        "best_ms": {v: min(ms[v]) for v in VARIANTS},
        "median_cpu_ms": {v: statistics.median(x["cpu_ms"] for x in runs[v]) for v in VARIANTS},
        "hash_ms": {v: statistics.median(x["hash_ms"] for x in runs[v]) for v in CHECKED},
        "load_ms": {v: statistics.median(x["load_ms"] for x in runs[v]) for v in CHECKED},
        "runs": runs,
    }
    for name, top, base in (("vs_without", WITH, WITHOUT), ("vs_mmap_off", WITH, NOMMAP),
                            ("hash_first_vs_without", FIRST, WITHOUT)):
        ratios = [w / b for w, b in zip(ms[top], ms[base])]
        added = [w - b for w, b in zip(ms[top], ms[base])]
        cpu = [w["cpu_ms"] / c["cpu_ms"] for w, c in zip(runs[top], runs[base])]
        out[name] = {"ratio": statistics.median(ratios), "added_ms": statistics.median(added),
                     "cpu_ratio": statistics.median(cpu),
                     "ratio_of_bests": out["best_ms"][top] / out["best_ms"][base],
                     "ratio_of_medians": out["median_ms"][top] / out["median_ms"][base],
                     "ratios": [round(x, 4) for x in ratios]}
    return out


def report(results: list[dict[str, Any]], rounds: int) -> None:
    print()
    head = (f"{'model':<34}{'size':>9}  {'variant':<20}{'median ms':>10}{'best ms':>9}{'CPU ms':>9}"
            f"{'hash ms':>9}{'load ms':>9}")
    print(head)
    print("-" * len(head))
    for res in results:
        for i, v in enumerate(VARIANTS):
            name = res["model"] if i == 0 else ""
            size = f"{res['bytes'] / MIB:.0f} MiB" if i == 0 else ""
            extra = (f"{res['hash_ms'][v]:>9.0f}{res['load_ms'][v]:>9.0f}" if v in CHECKED
                     else f"{'':>9}{'':>9}")
            print(f"{name:<34}{size:>9}  {v:<20}{res['median_ms'][v]:>10.0f}"
                  f"{res['best_ms'][v]:>9.0f}"
                  f"{res['median_cpu_ms'][v]:>9.0f}{extra}")
    print()
    for res in results:
        a, b = res["vs_without"], res["vs_mmap_off"]
        verdict = "MET" if a["ratio"] <= GOAL else "MISSED"
        print(f"{res['model']}: with/without check {a['ratio']:.3f} (+{a['added_ms']:.0f} ms) -> "
              f"{verdict} (goal <= {GOAL:.2f}), best {a['ratio_of_bests']:.3f}, CPU "
              f"{a['cpu_ratio']:.3f}; with check/mmap off {b['ratio']:.3f} (+{b['added_ms']:.0f} "
              f"ms), best {b['ratio_of_bests']:.3f}, CPU {b['cpu_ratio']:.3f}")
        c = res["hash_first_vs_without"]
        print(f"  {FIRST} (under model_trust: signed, or without a header hash): "
              f"{c['ratio']:.3f} (+{c['added_ms']:.0f} ms)")
    print(f"Spawn to first hello answer, {rounds} alternating rounds. Ratios and added ms: "
          "medians of per-round pairs; best: ratio of the fastest runs; CPU: the engine's "
          "CPU time, median of per-round ratios.")
    for res in results:
        print(f"{res['model']}: page cache {res['page_cache']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--big-mib", type=int, default=1024, help="size of the synthesized model")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) /
                   "autoglm-bench-load-integrity", help="where the synthesized model is kept")
    p.add_argument("--models", default="bundled,big", help="bundled, big or both")
    p.add_argument("--cache", default="warm,cold",
                   help="warm (file read before the rounds), cold (its pages dropped before "
                        "every start), or both")
    p.add_argument("--out", type=Path,
                   default=Path(__file__).parent / "results" / "load_integrity.json")
    args = p.parse_args()
    if args.rounds < 1:
        raise SystemExit("error: --rounds must be at least 1")
    caches = [c.strip() for c in args.cache.split(",") if c.strip()]
    if not caches or set(caches) - {"warm", "cold"}:
        raise SystemExit("error: --cache takes warm, cold or warm,cold")
    wanted = {m.strip() for m in args.models.split(",") if m.strip()}
    if not wanted or wanted - {"bundled", "big"}:
        raise SystemExit("error: --models takes bundled, big or bundled,big")
    src = embedded_model_path()
    models: list[tuple[Path, str]] = []
    big_facts = None
    if "bundled" in wanted:
        models.append((src, "bundled SmolLM2-135M"))
    if "big" in wanted:
        big, big_facts = big_model(src, args.work, args.big_mib)
        models.append((big, f"SmolLM2 x{big_facts['block_count']} blocks"))
    mem = _mem_available()
    results = []
    with tempfile.TemporaryDirectory(prefix="autoglm-bench-") as tmp:
        for cache in caches:
            for path, base in models:
                label = f"{base}, {cache}"
                print(f"{label}: {path.stat().st_size / MIB:.0f} MiB, {args.rounds} rounds",
                      flush=True)
                results.append(measure(path, label, args.rounds, Path(tmp), cache == "cold"))
    report(results, args.rounds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "rounds": args.rounds, "goal_ratio": GOAL, "cpus": os.cpu_count(),
        "mem_available_bytes": mem, "engine_args": ENGINE_ARGS, "big_model": big_facts,
        "results": results}, indent=2))
    print(f"written: {args.out}")


def _children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)  # children waited for so far
    return ru.ru_utime + ru.ru_stime


def _mem_available() -> int | None:
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/meminfo") as fh:
            line = next(ln for ln in fh if ln.startswith("MemAvailable:"))
        return int(line.split()[1]) * 1024
    return None


if __name__ == "__main__":
    main()
