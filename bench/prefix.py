"""Prefix-cache benchmark: Open-AutoGLM vs llama-cpp-python's own server, same model, same run.

Run from the repository root::

    .venv/bin/python bench/prefix.py [--rounds 2] [--threads 2] [--out bench/results/prefix.json]

(a) a six-turn conversation with a ~1,100-token system prompt, each turn resent in full
    with the history, streamed, temperature 0: TTFT per turn for ours (prefix cache on),
    ours with ``prefix_cache`` off (the texts must be identical), and ``llama_cpp.server``
    (which keeps its previous prompt's KV cache). Each round uses a fresh system prompt.
(b) 8 users, one shared 1,000-token system prompt and different questions, arriving
    together after one warm-up request: TTFT p50 vs one cached turn (a single request
    with that system prompt and a new question), ours and llama_cpp.server.
(c) 8 concurrent short streams (bench/_common's prompt): TTFT p50 vs the batched
    prefill time of the 8 prompts (llama.cpp's batched decode in-process: its TTFT).
(d) with ``--baseline-src DIR`` (the ``src`` of an earlier checkout, e.g. from
    ``git archive HEAD~1 src | tar -x -C /tmp/base``): 8 streams' aggregate tokens/s of
    this version vs that one, rounds interleaved.

Servers run with the same threads and context; medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

_BENCH_DIR = str(Path(__file__).resolve().parent)
if _BENCH_DIR not in sys.path:
    sys.path.insert(0, _BENCH_DIR)

import httpx
import orjson
from _common import LCS, OURS, ROOT, med, pct
from _reference import DirectBatched
from _systems import ServerProc, autoglm_server, http_run, llama_cpp_server

from autoglm.engine.catalog import embedded_model_path
from autoglm.settings import EMBEDDED_MODEL_ID

OURS_OFF = "autoglm, prefix_cache off"
TOPICS = ["shipping", "returns", "payments", "loyalty points", "allergens", "wholesale",
          "gift cards", "subscriptions", "damaged goods", "customs", "invoices", "storage"]
QUESTIONS = ["How long does express shipping take?", "Can I return an opened jar?",
             "Do you accept bank transfers?", "How do I use my points?",
             "Which cheeses are vegetarian?", "Is there a minimum wholesale order?",
             "Do gift cards expire?", "Can I pause my coffee subscription?"]


def system_prompt(tag: str, words: int) -> str:
    """A long, plausible policy text (about 1.3 tokens a word), unique per ``tag``."""
    out = [f"You are the assistant of Northwind Traders (session {tag}). Policies follow."]
    i = 0
    while sum(len(s.split()) for s in out) < words:
        t = TOPICS[i % len(TOPICS)]
        out.append(f"Section {i + 1}, {t}: customers asking about {t} get a short, exact "
                   f"answer; quote rule {i + 1}.{i % 7} of the handbook, never invent a "
                   f"figure, and offer to connect them with the {t} desk when unsure.")
        i += 1
    return " ".join(out)


def stream_chat(srv: ServerProc, messages: list[dict], max_tokens: int,
                go: threading.Barrier | None = None) -> dict[str, Any]:
    body = {"model": EMBEDDED_MODEL_ID, "messages": messages, "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    if go is not None:
        go.wait()
    t0 = time.perf_counter()
    ttft, parts, usage = None, [], {}
    with httpx.stream("POST", srv.base + "/v1/chat/completions", json=body,
                      headers=srv.headers, timeout=300) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            obj = orjson.loads(line[6:])
            usage = obj.get("usage") or usage
            for ch in obj.get("choices") or []:
                text = (ch.get("delta") or {}).get("content")
                if text:
                    ttft = ttft if ttft is not None else time.perf_counter() - t0
                    parts.append(text)
    return {"ttft_ms": None if ttft is None else ttft * 1e3, "text": "".join(parts),
            "prompt_tokens": usage.get("prompt_tokens"),
            "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens")}


def conversation(srv: ServerProc, system: str, turns: int, max_tokens: int) -> list[dict]:
    messages = [{"role": "system", "content": system}]
    out = []
    for k in range(turns):
        messages.append({"role": "user", "content": QUESTIONS[k % len(QUESTIONS)]})
        got = stream_chat(srv, messages, max_tokens)
        out.append(got)
        messages.append({"role": "assistant", "content": got["text"]})
    return out


def together(srv: ServerProc, system: str, n: int, max_tokens: int) -> list[dict]:
    go = threading.Barrier(n)
    res: list[dict] = [{}] * n

    def one(i: int) -> None:
        msgs = [{"role": "system", "content": system},
                {"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} (user {i})"}]
        res[i] = stream_chat(srv, msgs, max_tokens, go)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--ctx-per-slot", type=int, default=2048)
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--system-words", type=int, default=820, help="~1,100 tokens")
    p.add_argument("--only", choices=["a", "b", "c", "d"], action="append")
    p.add_argument("--baseline-src", type=Path, help="src dir of an earlier version, for (d)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "prefix.json")
    args = p.parse_args(argv)
    parts = set(args.only or ["a", "b", "c"] + (["d"] if args.baseline_src else []))
    model = embedded_model_path()

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    ours = autoglm_server(8, args.ctx_per_slot, args.threads, tmp / f"bench-prefix-{os.getpid()}")
    off = autoglm_server(8, args.ctx_per_slot, args.threads, tmp / f"bench-prefix-off-{os.getpid()}")
    off.name, off.env["AUTOGLM_PREFIX_CACHE"] = "autoglm-off", "false"
    peer = llama_cpp_server(model, args.ctx_per_slot, args.threads, interrupt=False)
    result: dict[str, Any] = {"config": vars(args) | {"out": str(args.out),
                                                      "baseline_src": str(args.baseline_src)}}
    try:
        ours.start()
        peer.start()
        if "a" in parts:
            off.start()
            rows: dict[str, list[list[dict]]] = {OURS: [], OURS_OFF: [], LCS: []}
            for r in range(args.rounds):
                system = system_prompt(f"a{r}", args.system_words)
                for name, srv in ((OURS, ours), (OURS_OFF, off), (LCS, peer)):
                    rows[name].append(conversation(srv, system, 6, args.max_tokens))
                    log(f"(a) round {r + 1} {name}: TTFT ms " + ", ".join(
                        f"{t['ttft_ms']:.0f}" for t in rows[name][-1]))
            a: dict[str, Any] = {}
            for name, convs in rows.items():
                a[name] = {"turn1_ttft_ms": med([c[0]["ttft_ms"] for c in convs]),
                           "turns2to6_ttft_p50_ms": pct([t["ttft_ms"] for c in convs
                                                         for t in c[1:]], 50),
                           "prompt_tokens": [t["prompt_tokens"] for t in convs[-1]],
                           "cached_tokens": [t["cached_tokens"] for t in convs[-1]]}
            a["same_text_with_and_without_cache"] = all(
                [t["text"] for t in x] == [t["text"] for t in y]
                for x, y in zip(rows[OURS], rows[OURS_OFF]))
            a["same_text_as_peer"] = all([t["text"] for t in x] == [t["text"] for t in y]
                                         for x, y in zip(rows[OURS], rows[LCS]))
            a["turns2to6_ours_over_peer"] = (a[OURS]["turns2to6_ttft_p50_ms"]
                                             / a[LCS]["turns2to6_ttft_p50_ms"])
            result["conversation"] = a
        if "b" in parts:
            b: dict[str, Any] = {}
            for name, srv in ((OURS, ours), (LCS, peer)):
                singles, groups = [], []
                for r in range(args.rounds):
                    system = system_prompt(f"b{r}", int(args.system_words * 0.91))
                    msgs = [{"role": "system", "content": system}]
                    stream_chat(srv, msgs + [{"role": "user", "content": "Hello!"}], 4)
                    singles.append(stream_chat(srv, msgs + [
                        {"role": "user", "content": "What are your opening hours?"}], 4))
                    groups += together(srv, system, 8, args.max_tokens)
                    log(f"(b) round {r + 1} {name}: single {singles[-1]['ttft_ms']:.0f} ms, "
                        f"8 together p50 {pct([g['ttft_ms'] for g in groups[-8:]], 50):.0f} ms")
                single = med([s["ttft_ms"] for s in singles])
                p50 = pct([g["ttft_ms"] for g in groups], 50)
                b[name] = {"single_cached_ttft_ms": single, "eight_ttft_p50_ms": p50,
                           "eight_ttft_p95_ms": pct([g["ttft_ms"] for g in groups], 95),
                           "ratio": p50 / single if single else None,
                           "cached_tokens": [g["cached_tokens"] for g in groups[-8:]]}
            result["shared_system_prompt"] = b
        if "c" in parts:  # the same prompt every time: cached (ours) and not (off)
            if off.proc is None:
                off.start()
            direct = DirectBatched(model, 8, args.ctx_per_slot, args.threads, ignore_eos=True)
            ttfts: dict[str, list[float]] = {OURS: [], OURS_OFF: []}
            prefill: list[float] = []
            for srv in (ours, off):
                http_run(srv, srv.name, 8, 8)  # warm-up
            for r in range(args.rounds + 1):
                prefill += direct.run(8, 2).ttfts_ms
                for name, srv in ((OURS, ours), (OURS_OFF, off)):
                    ttfts[name] += http_run(srv, name, 8, 16).ttfts_ms
                log(f"(c) round {r + 1}: TTFT p50 ours {pct(ttfts[OURS][-8:], 50):.0f} ms, "
                    f"off {pct(ttfts[OURS_OFF][-8:], 50):.0f} ms, batched prefill "
                    f"{med(prefill[-8:]):.0f} ms")
            direct.close()
            result["short_streams"] = {"batched_prefill_ms": med(prefill)} | {
                name: {"ttft_p50_ms": pct(t, 50), "ratio": pct(t, 50) / med(prefill)}
                for name, t in ttfts.items()}
        off.stop()
        ours.stop()
        peer.stop()
        if "d" in parts and args.baseline_src:
            base = autoglm_server(8, args.ctx_per_slot, args.threads,
                                  tmp / f"bench-prefix-base-{os.getpid()}")
            base.name = "autoglm-baseline"
            base.env["PYTHONPATH"] = str(args.baseline_src.resolve())
            ours.start()
            base.start()
            tps: dict[str, list[float]] = {"this": [], "baseline": []}
            for srv in (ours, base):
                http_run(srv, srv.name, 8, 16)
            for r in range(args.rounds + 1):
                order = [("this", ours), ("baseline", base)]
                for name, srv in order if r % 2 == 0 else order[::-1]:
                    tps[name].append(http_run(srv, name, 8, 128).tps)
                log(f"(d) round {r + 1}: this {tps['this'][-1]:.1f}, baseline "
                    f"{tps['baseline'][-1]:.1f} tok/s")
            base.stop()
            result["throughput"] = {"this_tok_s": med(tps["this"]),
                                    "baseline_tok_s": med(tps["baseline"]),
                                    "ratio": med([x / y for x, y in zip(tps["this"],
                                                                        tps["baseline"])])}
    finally:
        for srv in (ours, off, peer):
            srv.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
