"""Structured outputs: what a JSON-schema constraint costs the embedded engine.

Run from the repository root::

    .venv/bin/python bench/structured.py [--rounds 5] [--max-tokens 160] \\
        [--out bench/results/structured.json]

Three figures, each against its reference in the same run:

1. **Decode tokens/s, constrained / free.** One ``autoglm serve`` (the bundled model, one
   slot); each round streams the same request twice, once free and once with a
   ``response_format`` JSON schema, in alternating order. Decode rate = (completion
   tokens - 1) / (last token - first token), so prefill is left out; medians over rounds.
   Goal: >= 0.85.
2. **Cost per decode step of the grammar**, in process: the bundled model decodes one
   token at a time and only ``Sampler.sample`` is timed, with and without the grammar
   (same temperature and seed): median microseconds per step, and how often the grammar
   refused the chain's pick (each refusal resamples over the whole vocabulary).
3. **Compile time of a 50-field schema**: our schema-to-grammar converter, then
   llama.cpp's parse of the grammar (both paid once per distinct schema: cached).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT  # noqa: E402
from _systems import autoglm_server  # noqa: E402

from autoglm.engine.catalog import embedded_model_path  # noqa: E402
from autoglm.engine.llamacpp.model import Batch, ContextConfig, LlamaModel  # noqa: E402
from autoglm.engine.llamacpp.sampling import Sampler, SamplingParams, parse_grammar  # noqa: E402
from autoglm.settings import EMBEDDED_MODEL_ID  # noqa: E402
from autoglm.structured.constraints import ConstraintCache  # noqa: E402
from autoglm.structured.schema import schema_grammar  # noqa: E402

STORY = {"type": "object", "properties": {
    "title": {"type": "string", "maxLength": 80}, "story": {"type": "string"},
    "moral": {"type": "string"}}, "required": ["title", "story", "moral"],
    "additionalProperties": False}
PROMPT = ("Write a long story about a lighthouse keeper and a storm, as JSON with a title, "
          "the story and its moral.")


def stream(client: httpx.Client, base: str, headers: dict[str, str], body: dict[str, Any]
           ) -> dict[str, Any]:
    t0 = time.perf_counter()
    times: list[float] = []
    usage = None
    with client.stream("POST", base + "/v1/chat/completions", json=body,
                       headers=headers) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code}: {resp.read()[:300]!r}")
        for line in resp.iter_lines():
            if not line.startswith("data: {"):
                continue
            obj = orjson.loads(line[6:])
            if obj.get("usage"):
                usage = obj["usage"]
            for ch in obj.get("choices") or []:
                if (ch.get("delta") or {}).get("content"):
                    times.append(time.perf_counter())
    tokens = usage["completion_tokens"] if usage else len(times)
    decode_s = times[-1] - times[0] if len(times) > 1 else float("nan")
    return {"tokens": tokens, "ttft_s": times[0] - t0 if times else None,
            "decode_tps": (tokens - 1) / decode_s if decode_s > 0 else None}


def decode_rates(rounds: int, max_tokens: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as data:
        srv = autoglm_server(1, 1024, 0, Path(data))
        srv.start()
        try:
            base, headers = srv.base, srv.headers
            runs: dict[str, list[dict[str, Any]]] = {"free": [], "schema": []}
            with httpx.Client(timeout=300) as client:
                body = {"model": EMBEDDED_MODEL_ID, "stream": True, "max_tokens": max_tokens,
                        "stream_options": {"include_usage": True}, "temperature": 0.8,
                        "messages": [{"role": "user", "content": PROMPT}]}
                constrained = {**body, "response_format": {"type": "json_schema", "json_schema":
                                                           {"name": "story", "schema": STORY}}}
                stream(client, base, headers, {**body, "max_tokens": 8})  # warm-up
                for r in range(rounds):
                    order = [("free", body), ("schema", constrained)]
                    for name, b in order if r % 2 == 0 else order[::-1]:
                        got = stream(client, base, headers, {**b, "seed": r})
                        runs[name].append(got)
                        print(f"round {r + 1}/{rounds} {name:6} {got['tokens']:4} tokens "
                              f"decode {got['decode_tps'] or 0:6.1f} tok/s", flush=True)
        finally:
            srv.stop()
    ratios = [s["decode_tps"] / f["decode_tps"] for f, s in zip(runs["free"], runs["schema"])
              if f["decode_tps"] and s["decode_tps"]]
    return {"runs": runs, "ratio_median": statistics.median(ratios) if ratios else None,
            "free_tps_median": statistics.median(x["decode_tps"] for x in runs["free"]),
            "schema_tps_median": statistics.median(x["decode_tps"] for x in runs["schema"])}


def step_costs(steps: int) -> dict[str, Any]:
    model = LlamaModel(embedded_model_path(), ContextConfig(1, 1024, 512, 0))
    grammar = schema_grammar(STORY)
    out: dict[str, Any] = {}
    try:
        prompt = model.tokenize(f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n",
                                add_special=False, parse_special=True)
        for name, params in (("free", SamplingParams(temperature=0.8, seed=1)),
                             ("grammar", SamplingParams(temperature=0.8, seed=1,
                                                        grammar=grammar))):
            sampler = Sampler(model, params)
            refused = 0
            if name == "grammar":  # count the slow path: wrap the check
                allowed = sampler._allowed  # noqa: SLF001 - a benchmark looks inside

                def counting(token: int, _a=allowed) -> bool:
                    nonlocal refused
                    ok = _a(token)
                    refused += not ok
                    return ok
                sampler._allowed = counting  # type: ignore[method-assign]  # noqa: SLF001
            batch = Batch(len(prompt))
            times: list[float] = []
            try:
                for i, tok in enumerate(prompt):
                    batch.add(tok, i, 0, i == len(prompt) - 1)
                batch.decode(model)
                pos, index = len(prompt), len(prompt) - 1
                for _ in range(steps):
                    t0 = time.perf_counter()
                    token = sampler.sample(model, index)
                    times.append(time.perf_counter() - t0)
                    if model.is_eog(token):
                        break
                    batch.clear()
                    index = batch.add(token, pos, 0, True)
                    pos += 1
                    batch.decode(model)
            finally:
                batch.free()
                sampler.free()
                model.clear_sequence(0)
            out[name] = {"steps": len(times), "median_us": statistics.median(times) * 1e6,
                         "mean_us": statistics.mean(times) * 1e6, "refused": refused}
            print(f"sample() {name:7}: {out[name]['median_us']:7.1f} us median, "
                  f"{out[name]['mean_us']:7.1f} us mean over {len(times)} steps"
                  + (f", {refused} picks refused" if name == "grammar" else ""), flush=True)
        t0 = time.perf_counter()
        for _ in range(20):
            batch = Batch(1)
            batch.add(prompt[0], 0, 0, True)
            batch.decode(model)
            batch.free()
            model.clear_sequence(0)
        out["decode_step_us"] = (time.perf_counter() - t0) / 20 * 1e6
        print(f"one llama_decode of one token: {out['decode_step_us']:.0f} us", flush=True)
    finally:
        model.close()
    return out


def compile_times(model_path: Path) -> dict[str, Any]:
    kinds = [{"type": "string", "maxLength": 40}, {"type": "integer", "minimum": 0},
             {"enum": ["low", "mid", "high"]}, {"type": "boolean"}, {"type": ["number", "null"]},
             {"type": "array", "items": {"type": "string"}, "maxItems": 5},
             {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
              "required": ["a"], "additionalProperties": False},
             {"type": "string", "format": "date"}]
    schema = {"type": "object", "additionalProperties": False,
              "properties": {f"field_{i:02}": kinds[i % len(kinds)] for i in range(50)},
              "required": [f"field_{i:02}" for i in range(0, 50, 2)]}
    ours, parse = [], []
    model = LlamaModel(model_path, ContextConfig(1, 256, 64, 0))
    try:
        import llama_cpp
        for _ in range(10):
            built = ConstraintCache().get(schema, False, None)
            ours.append(built.compile_ms)
            t0 = time.perf_counter()
            g = parse_grammar(model, built.grammar, None)
            parse.append((time.perf_counter() - t0) * 1e3)
            llama_cpp.llama_sampler_free(g)
    finally:
        model.close()
    out = {"fields": 50, "grammar_rules": built.grammar.count("::="),
           "convert_ms_median": statistics.median(ours),
           "llama_parse_ms_median": statistics.median(parse)}
    print(f"50-field schema: convert {out['convert_ms_median']:.2f} ms, llama.cpp parse "
          f"{out['llama_parse_ms_median']:.2f} ms ({out['grammar_rules']} rules)", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--max-tokens", type=int, default=160)
    p.add_argument("--steps", type=int, default=200, help="decode steps timed in process")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "structured.json")
    args = p.parse_args()
    result = {"machine": {"platform": platform.platform(), "python": platform.python_version()},
              "compile": compile_times(embedded_model_path()),
              "step": step_costs(args.steps),
              "http": decode_rates(args.rounds, args.max_tokens)}
    http = result["http"]
    print(f"\ndecode tok/s: free {http['free_tps_median']:.1f}, json_schema "
          f"{http['schema_tps_median']:.1f}; constrained/free (median of per-round ratios) "
          f"{http['ratio_median']:.3f} (goal >= 0.85)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
