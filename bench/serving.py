"""Serving benchmark: Open-AutoGLM vs raw llama-cpp-python vs llama_cpp.server vs batched decode.

Run from the repository root::

    .venv/bin/python bench/serving.py [--rounds 3] [--max-tokens 128] [--out bench/results/serving.json]

Every system serves the bundled GGUF model with the same chat prompt (rendered through
the model's own chat template), temperature 0, the same ``max_tokens``, the same thread
count and the same llama.cpp context settings as the engine (n_batch = n_ubatch = 512,
flash attention as llama.cpp's default "auto" resolves it on CPU, i.e. on).

(a) one stream: our HTTP API (``autoglm serve --slots 1``, streamed, timed client-side
    with httpx) vs ``llama_cpp.Llama.create_chat_completion(stream=True)`` in-process.
(b) 1, 2, 4, 8 concurrent streams, three systems: our server with ``--slots 8``,
    ``python -m llama_cpp.server`` (one request at a time, its defaults otherwise), and
    llama.cpp's batched decode driven in-process through the low-level API (all N
    sequences in one ``llama_decode`` per step, greedy) -- the engine's upper limit;
    plus, as a diagnostic, our engine process driven through its Unix socket (no HTTP).
(c) with ``--only c`` (needs the train extra): a LoRA adapter against the base alone,
    the same 8 concurrent completions (48 tokens) to ``BASE`` and to ``BASE:acme`` on one
    server (bench/adapters.py's run, two of its mixes; it also measures mixed adapters).

Rounds are interleaved (every system once per round, order rotated) and medians are
reported, because a shared machine is noisy; targets use the median of per-round
ratios. Tokens are counted from ``usage`` where the API reports it (ours), else as
streamed content chunks (llama.cpp yields one chunk per token), and tokens/s always uses
the tokens actually received.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The sibling modules (_common, _reference, _systems) import however this file is started.
_BENCH_DIR = str(Path(__file__).resolve().parent)
if _BENCH_DIR not in sys.path:
    sys.path.insert(0, _BENCH_DIR)

import llama_cpp  # noqa: E402

from autoglm.engine.catalog import embedded_model_path  # noqa: E402
from autoglm.settings import EMBEDDED_MODEL_ID  # noqa: E402

from _common import (  # noqa: E402
    DIRECT, ENGINE, LCS, N_BATCH, OURS, PROMPT, RAW, ROOT, Run, med, pct,
)
from _reference import DirectBatched, RawLlama  # noqa: E402
from _systems import (  # noqa: E402
    autoglm_server, child_pid, cpu_s, engine_socket, http_run, ipc_run, llama_cpp_server,
    ttft_metric,
)


Log = Callable[[str], None]

# Targets (see bench/README.md).
T_ONE_STREAM_TPS = 0.95  # our tokens/s >= 95% of raw in-process
T_ONE_STREAM_TTFT_MS = 15.0  # our TTFT <= raw TTFT + 15 ms
T_BATCH_VS_DIRECT = 0.90  # 8 streams aggregate >= 90% of direct batched decode
T_BATCH_VS_LLAMA_SERVER = 1.5  # 8 streams aggregate >= 1.5x llama_cpp.server


# --------------------------------------------------------------------------------------
# the benchmark
# --------------------------------------------------------------------------------------
def part_a(args: argparse.Namespace, model_path: Path, tmp: Path, log: Log) -> dict[str, Any]:
    """One stream: our HTTP API (slots=1) vs raw in-process Llama, back to back."""
    raw = RawLlama(model_path, args.ctx_per_slot, args.threads)
    srv = autoglm_server(1, args.ctx_per_slot, args.threads, tmp / "data-a")
    runs: dict[str, list[Run]] = {OURS: [], RAW: []}
    pairs: list[tuple[Run, Run]] = []  # (ours, raw), adjacent in time
    try:
        srv.start()
        log(f"(a) one stream: {srv.name} on :{srv.port} vs in-process Llama; warm-up")
        raw.run(args.max_tokens)
        for _ in range(2):
            http_run(srv, OURS, 1, args.max_tokens)
        m0 = ttft_metric(srv)
        if srv.proc is None:
            raise RuntimeError(f"{srv.name} has no process after start()")
        gw_pid, eng_pid = srv.proc.pid, child_pid(srv.proc.pid)
        cpu0 = (cpu_s(gw_pid), cpu_s(eng_pid))
        for r in range(args.rounds):
            for k in range(args.one_stream_reps):
                order = [OURS, RAW] if (r + k) % 2 == 0 else [RAW, OURS]
                got: dict[str, Run] = {}
                for system in order:
                    if system == RAW:
                        got[system] = raw.run(args.max_tokens)
                    else:
                        got[system] = http_run(srv, OURS, 1, args.max_tokens)
                    runs[system].append(got[system])
                pairs.append((got[OURS], got[RAW]))
            log(f"(a) round {r + 1}/{args.rounds}: " + ", ".join(
                f"{s} {med([x.tps for x in runs[s][-args.one_stream_reps:]]):.1f} tok/s"
                for s in runs))
        cpu1 = (cpu_s(gw_pid), cpu_s(eng_pid))
        m1 = ttft_metric(srv)
    finally:
        srv.stop()
        raw.close()
    out: dict[str, Any] = {}
    for s, rs in runs.items():
        out[s] = {
            "tokens_per_s": med([r.tps for r in rs]),
            "ttft_ms": med([t for r in rs for t in r.ttfts_ms]),
            "tokens": med([r.tokens for r in rs]),
            "decode_tokens_per_s": med([
                (st.tokens - 1) / (st.total_s - st.ttft_s) for r in rs for st in r.streams
                if st.ttft_s is not None and st.tokens > 1 and st.total_s > st.ttft_s
            ]),
            "text_head": rs[-1].streams[0].text[:80] if rs else "",
        }
    out["pair_tps_ratio"] = med([o.tps / w.tps for o, w in pairs if w.tps])
    out["pair_ttft_delta_ms"] = med([o.ttfts_ms[0] - w.ttfts_ms[0] for o, w in pairs
                                     if o.ttfts_ms and w.ttfts_ms])
    dn = m1[1] - m0[1]
    out["server_side_ttft_ms"] = (m1[0] - m0[0]) / dn * 1e3 if dn else None
    n_tok = sum(r.tokens for r in runs[OURS])
    wall = sum(r.wall_s for r in runs[OURS])
    out["same_answer"] = (runs[OURS][-1].streams[0].text[:60]
                          == runs[RAW][-1].streams[0].text[:60])
    out["cpu_ms_per_token"] = {  # where our HTTP path spends CPU, per streamed token
        "gateway": (cpu1[0] - cpu0[0]) / n_tok * 1e3 if n_tok else None,
        "engine": (cpu1[1] - cpu0[1]) / n_tok * 1e3 if n_tok else None,
        "wall": wall / n_tok * 1e3 if n_tok else None,
    }
    out["runs"] = {s: [r.summary() for r in rs] for s, rs in runs.items()}
    return out


def part_b(args: argparse.Namespace, model_path: Path, tmp: Path, log: Log) -> dict[str, Any]:
    """1..8 concurrent streams: our server, llama_cpp.server, direct batched decode."""
    slots = max(args.concurrency)
    direct = DirectBatched(model_path, slots, args.ctx_per_slot, args.threads,
                           ignore_eos=not args.keep_eos)
    ours = autoglm_server(slots, args.ctx_per_slot, args.threads, tmp / "data-b")
    lcs = None if args.skip_llama_server else llama_cpp_server(
        model_path, args.ctx_per_slot, args.threads, interrupt=not args.llama_server_no_interrupt)
    systems = [OURS, DIRECT] + ([LCS] if lcs else []) + ([] if args.no_engine_ipc else [ENGINE])
    runs: dict[tuple[str, int], list[Run]] = {}
    try:
        ours.start()
        sock = engine_socket(ours)
        if lcs:
            lcs.start()
        log(f"(b) concurrent streams: {ours.name} on :{ours.port}"
            + (f", {lcs.name} on :{lcs.port}" if lcs else "") + "; warm-up")
        for n in (1, slots):
            direct.run(n, min(16, args.max_tokens))
            http_run(ours, OURS, n, min(16, args.max_tokens))
        if lcs:
            http_run(lcs, LCS, 1, min(16, args.max_tokens))

        def one(system: str, n: int) -> Run:
            if system == DIRECT:
                return direct.run(n, args.max_tokens)
            if system == ENGINE:
                return asyncio.run(ipc_run(sock, ENGINE, n, args.max_tokens))
            srv = ours if system == OURS else lcs
            if srv is None:
                raise RuntimeError(f"no server for {system!r} (llama_cpp.server was skipped)")
            return http_run(srv, system, n, args.max_tokens)

        for r in range(args.rounds):
            for n in args.concurrency:
                k = (r + n) % len(systems)
                for system in systems[k:] + systems[:k]:
                    runs.setdefault((system, n), []).append(one(system, n))
                    time.sleep(0.2)  # let a server's last frames drain before the next
                log(f"(b) round {r + 1}/{args.rounds} n={n}: " + ", ".join(
                    f"{s} {runs[(s, n)][-1].tps:.1f}" for s in systems) + " tok/s")
    finally:
        ours.stop()
        if lcs:
            lcs.stop()
        direct.close()
    rows: list[dict[str, Any]] = []
    for n in args.concurrency:
        for system in systems:
            rs = runs[(system, n)]
            ttfts = [t for r in rs for t in r.ttfts_ms]
            streams = [st for r in rs for st in r.streams]
            rows.append({
                "system": system, "n": n,
                "agg_tokens_per_s": med([r.tps for r in rs]),
                "ttft_p50_ms": pct(ttfts, 50), "ttft_p95_ms": pct(ttfts, 95),
                "tokens_per_stream": med([st.tokens for st in streams]),
                "streams": len(streams),
                "complete": sum(1 for st in streams if st.finish_reason and not st.error),
                "no_tokens": sum(1 for st in streams if st.tokens == 0),
                "errors": sum(1 for st in streams if st.error),
                "error_samples": sorted({st.error for st in streams if st.error})[:3],
            })

    def round_ratio(a: str, b: str, n: int) -> float | None:
        ra, rb = runs.get((a, n)), runs.get((b, n))
        if not ra or not rb:
            return None
        return med([x.tps / y.tps for x, y in zip(ra, rb) if y.tps])

    ratios = {f"{a} / {b} @ {n}": round_ratio(a, b, n)
              for n in args.concurrency for a, b in
              ((OURS, DIRECT), (OURS, LCS), (ENGINE, DIRECT), (OURS, ENGINE))}
    # Sanity: greedy decoding of one prompt must give one answer everywhere, and the
    # servers must have seen the prompt the direct decode was given.
    heads = {st.text[:40] for rs in runs.values() for r in rs for st in r.streams
             if len(st.text) >= 40}
    reported = {st.prompt_tokens for rs in runs.values() for r in rs for st in r.streams
                if st.prompt_tokens is not None}
    checks = {"same_answer_everywhere": len(heads) == 1,
              "answer_heads": sorted(heads),
              "prompt_tokens_direct": len(direct.prompt),
              "prompt_tokens_reported_by_ours": sorted(reported),
              "same_prompt_tokens": reported <= {len(direct.prompt)}}
    return {"rows": rows, "round_ratios": {k: v for k, v in ratios.items() if v is not None},
            "checks": checks, "prompt_tokens": len(direct.prompt),
            "runs": [r.summary() for rs in runs.values() for r in rs]}


def part_c(args: argparse.Namespace, tmp: Path, log: Log) -> dict[str, Any]:
    import adapters as ab

    data_dir = tmp / "adapter-data"
    log("(c) training the house-format adapter acme (8 steps)")
    ab.train(data_dir)
    mixes = {k: v for k, v in ab.MIXES.items() if k in ("8 base", "8 acme")}
    log("(c) 8 base vs 8 acme, interleaved rounds")
    out = asyncio.run(ab.serve(data_dir, ["acme"], args.threads, args.rounds, mixes))
    m = out["mixes"]
    return {**m, "adapter_over_base_tokens_per_s": round(
        m["8 acme"]["tokens_per_s"] / m["8 base"]["tokens_per_s"], 3)}


def targets(a: dict[str, Any] | None, b: dict[str, Any] | None, n_max: int) -> list[dict[str, Any]]:
    """Each target judged on the median of per-round ratios (runs adjacent in time)."""
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, goal: str, ok: bool, of_medians: float | None) -> None:
        out.append({"target": name, "value": value, "goal": goal,
                    "met": None if value is None else bool(ok),
                    "ratio_of_medians": of_medians})

    if a:
        ours, raw = a[OURS], a[RAW]
        v = a["pair_tps_ratio"]
        add("1 stream: tok/s, ours / raw Llama", v, f">= {T_ONE_STREAM_TPS:.2f}",
            v is not None and v >= T_ONE_STREAM_TPS,
            ours["tokens_per_s"] / raw["tokens_per_s"] if raw["tokens_per_s"] else None)
        v = a["pair_ttft_delta_ms"]
        add("1 stream: TTFT ours - raw Llama (ms)", v, f"<= +{T_ONE_STREAM_TTFT_MS:.0f}",
            v is not None and v <= T_ONE_STREAM_TTFT_MS,
            (ours["ttft_ms"] - raw["ttft_ms"]) if ours["ttft_ms"] and raw["ttft_ms"] else None)
    if b:
        rows = {(r["system"], r["n"]): r["agg_tokens_per_s"] for r in b["rows"]}
        rr = b["round_ratios"]
        o, d, s = rows.get((OURS, n_max)), rows.get((DIRECT, n_max)), rows.get((LCS, n_max))
        v = rr.get(f"{OURS} / {DIRECT} @ {n_max}")
        if v is not None:
            add(f"{n_max} streams: agg tok/s, ours / direct batched", v,
                f">= {T_BATCH_VS_DIRECT:.2f}", v >= T_BATCH_VS_DIRECT, o / d if o and d else None)
        v = rr.get(f"{OURS} / {LCS} @ {n_max}")
        if v is not None:
            add(f"{n_max} streams: agg tok/s, ours / llama_cpp.server", v,
                f">= {T_BATCH_VS_LLAMA_SERVER:.2f}", v >= T_BATCH_VS_LLAMA_SERVER,
                o / s if o and s else None)
    return out


def fmt(v: Any, spec: str = ".1f") -> str:
    if v is None:
        return "-"
    return format(v, spec) if isinstance(v, (int, float)) else str(v)


def render(result: dict[str, Any]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain text fallback
        Console = Table = None  # type: ignore[assignment,misc]

    cfg = result["config"]
    tables: list[tuple[str, list[str], list[list[str]]]] = []
    a = result.get("one_stream")
    if a:
        rows = [[s, fmt(a[s]["tokens_per_s"]), fmt(a[s]["decode_tokens_per_s"]),
                 fmt(a[s]["ttft_ms"]), fmt(a[s]["tokens"], ".0f")] for s in (RAW, OURS)]
        tables.append((
            f"(a) one stream, max_tokens {cfg['max_tokens']}, medians of "
            f"{cfg['rounds']}x{cfg['one_stream_reps']} runs each; our gateway's own TTFT "
            f"(/metrics): {fmt(a['server_side_ttft_ms'])} ms",
            ["system", "tok/s", "decode tok/s", "TTFT ms", "tokens"], rows))
    b = result.get("concurrent")
    if b:
        rows = [[str(r["n"]), r["system"], fmt(r["agg_tokens_per_s"]), fmt(r["ttft_p50_ms"]),
                 fmt(r["ttft_p95_ms"]), fmt(r["tokens_per_stream"], ".0f"),
                 f"{r['complete']}/{r['streams']}", str(r["errors"])] for r in b["rows"]]
        tables.append((
            f"(b) N concurrent streams (slots {cfg['slots']}), median aggregate tok/s of "
            f"{cfg['rounds']} rounds, TTFT percentiles over all streams",
            ["N", "system", "agg tok/s", "TTFT p50", "TTFT p95", "tok/stream", "complete",
             "errors"], rows))
    notes = []
    if a:
        cpu = a["cpu_ms_per_token"]
        notes.append(f"(a) same answer text as raw: {a['same_answer']}; our CPU per streamed "
                     f"token: gateway {fmt(cpu['gateway'], '.2f')} ms, engine "
                     f"{fmt(cpu['engine'], '.2f')} ms, wall {fmt(cpu['wall'], '.2f')} ms")
    if b:
        c = b["checks"]
        notes.append(f"(b) same answer text in every complete stream: "
                     f"{c['same_answer_everywhere']}; prompt tokens {c['prompt_tokens_direct']} "
                     f"(ours reported {c['prompt_tokens_reported_by_ours']})")
    rows = [[t["target"], fmt(t["value"], ".3f"), t["goal"], fmt(t["ratio_of_medians"], ".3f"),
             {True: "MET", False: "MISSED", None: "-"}[t["met"]]] for t in result["targets"]]
    tables.append(("targets (value: median of per-round ratios)",
                   ["target", "value", "goal", "ratio of medians", "result"], rows))

    if Console is not None:
        console = Console(width=max(110, shutil.get_terminal_size((110, 24)).columns))
        for title, header, rows in tables:
            t = Table(title=title, title_justify="left")
            for h in header:
                t.add_column(h, justify="left" if h in ("system", "target", "goal") else "right")
            for row in rows:
                t.add_row(*row)
            console.print(t)
        for note in notes:
            console.print(note, highlight=False)
    else:
        for title, header, rows in tables:
            print(f"\n{title}")
            widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
            print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
            for row in rows:
                print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
        for note in notes:
            print(note)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="rounds per configuration (median)")
    p.add_argument("--max-tokens", type=int, default=128, help="max_tokens of every request")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serving.json")
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")],
                   default=[1, 2, 4, 8], help="comma list of concurrent streams (b)")
    p.add_argument("--one-stream-reps", type=int, default=3,
                   help="(a): back-to-back pairs (ours, raw) per round")
    p.add_argument("--ctx-per-slot", type=int, default=2048)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="llama.cpp threads for every system (default: one per core)")
    p.add_argument("--only", choices=["a", "b", "c"],
                   help="run one part only (c, the adapter, runs only when asked)")
    p.add_argument("--skip-llama-server", action="store_true",
                   help="leave llama_cpp.server out of (b)")
    p.add_argument("--no-engine-ipc", action="store_true",
                   help="leave out the diagnostic run straight against our engine's socket")
    p.add_argument("--llama-server-no-interrupt", action="store_true",
                   help="run llama_cpp.server with --interrupt_requests False (default: its "
                        "default, True, which ends a stream when another request waits)")
    p.add_argument("--keep-eos", action="store_true",
                   help="direct batched decode stops at EOS (default: ignores it)")
    args = p.parse_args(argv)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    model_path = embedded_model_path()
    result: dict[str, Any] = {
        "config": {
            "model": EMBEDDED_MODEL_ID, "model_path": str(model_path), "prompt": PROMPT,
            "rounds": args.rounds, "one_stream_reps": args.one_stream_reps,
            "max_tokens": args.max_tokens, "temperature": 0, "threads": args.threads,
            "ctx_per_slot": args.ctx_per_slot, "n_batch": N_BATCH,
            "concurrency": args.concurrency, "slots": max(args.concurrency),
            "direct_ignores_eos": not args.keep_eos,
            "llama_server_interrupt_requests": not args.llama_server_no_interrupt,
        },
        "environment": {
            "python": platform.python_version(), "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "llama_cpp_python": llama_cpp.__version__,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    }
    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    t_start = time.perf_counter()
    try:
        if args.only in (None, "a"):
            result["one_stream"] = part_a(args, model_path, tmp, log)
        if args.only in (None, "b"):
            result["concurrent"] = part_b(args, model_path, tmp, log)
        if args.only == "c":
            result["adapter"] = part_c(args, tmp, log)
            print(json.dumps(result["adapter"], indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    result["targets"] = targets(result.get("one_stream"), result.get("concurrent"),
                                max(args.concurrency))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    if result["targets"]:
        render(result)
    print(f"\nwrote {args.out} ({result['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
