"""LoRA adapters on the embedded engine: what mixing adapters in one engine costs.

Run from the repository root (needs the train extra: ``pip install -e '.[train]'``)::

    .venv/bin/python bench/adapters.py [--rounds 3] [--threads 2] [--data-dir DIR]
        [--out bench/results/adapters.json]

It trains the house-format adapter (``acme``, 8 steps) into a temporary data directory,
registers a second adapter (``acme2``: the same weights under another name, which
llama.cpp loads and applies as a separate adapter), and serves both on the one bundled
base (8 slots). Then 8 completions of 48 tokens arrive together, in four mixes:
all base; all ``acme``; 4 ``acme`` + 4 ``acme2``; 4 base + 4 ``acme``. Aggregate
tokens/s and wall time per mix (medians over rounds, mixes interleaved), the adapter
switches the engine made, and the engine process's resident memory with no adapter
and with both loaded (the base is loaded once).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODEL = "smollm2-135m-instruct"
PROMPT = "The history of the Roman Empire began when"  # 48 tokens, no early stop
MIXES = {
    "8 base": [MODEL] * 8,
    "8 acme": [f"{MODEL}:acme"] * 8,
    "4 acme + 4 acme2": [f"{MODEL}:acme", f"{MODEL}:acme2"] * 4,
    "4 base + 4 acme": [MODEL, f"{MODEL}:acme"] * 4,
}


def train(data_dir: Path) -> None:
    from autoglm.finetune.housestyle import write_task
    from autoglm.finetune.job import FinetuneRequest, finetune
    from autoglm.finetune.register import register_adapter
    from autoglm.finetune.train import TrainConfig
    from autoglm.supply.registry import Registry

    train_file, _ = write_task(data_dir / "task")
    result = finetune(data_dir, FinetuneRequest(train_file, "acme", config=TrainConfig(
        max_steps=8, lr=2e-3, warmup_steps=2, max_len=128, eval_every=4,
        checkpoint_every=4)))
    reg = Registry(data_dir)
    staged = data_dir / "acme2-staged"
    shutil.copytree(result.entry["path"], staged)
    (staged / "training.json").unlink()
    register_adapter(reg, "acme2", staged, base=result.entry["base"], lora=result.entry["lora"],
                     training={"copy_of": "acme"})


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def run_mix(client, models: list[str]) -> tuple[float, int]:
    async def one(model: str) -> int:
        r = await client.post("/v1/completions", json={
            "model": model, "prompt": PROMPT, "max_tokens": 48, "temperature": 0})
        r.raise_for_status()
        return r.json()["usage"]["completion_tokens"]

    t0 = time.perf_counter()
    tokens = await asyncio.gather(*(one(m) for m in models))
    return time.perf_counter() - t0, sum(tokens)


async def serve(data_dir: Path, adapters: list[str], threads: int, rounds: int,
                mixes: dict[str, list[str]] | None = None) -> dict:
    import httpx
    from asgi_lifespan import LifespanManager

    from autoglm.api.app import create_app
    from autoglm.settings import Settings

    key = "bench-adapters-admin-key-0123456789abcdef"
    settings = Settings(data_dir=data_dir, admin_key=key, slots=8, ctx_per_slot=512,
                        n_threads=threads, adapters=adapters, prefix_cache=False,
                        max_queue=64)
    app = create_app(settings)
    mixes = mixes or MIXES
    out: dict = {}
    async with LifespanManager(app, startup_timeout=120, shutdown_timeout=30):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=300,
                                     headers={"Authorization": f"Bearer {key}"}) as client:
            engine = app.state.engines[MODEL]
            out["rss_mib"] = round(rss_mib(engine.supervisor.pid), 1)
            if not adapters:
                return out
            await run_mix(client, [MODEL, f"{MODEL}:acme"])  # warm-up
            runs: dict[str, list[tuple[float, int, int]]] = {m: [] for m in mixes}
            for _ in range(rounds):
                for name, models in mixes.items():
                    before = (await engine._hello(5.0))["adapters"]["switches"]
                    wall, tokens = await run_mix(client, models)
                    after = (await engine._hello(5.0))["adapters"]["switches"]
                    runs[name].append((wall, tokens, after - before))
            out["mixes"] = {
                name: {"wall_s": round(statistics.median(w for w, _, _ in r), 2),
                       "tokens": r[0][1],
                       "tokens_per_s": round(statistics.median(t / w for w, t, _ in r), 1),
                       "switches": statistics.median(s for _, _, s in r)}
                for name, r in runs.items()}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--data-dir", type=Path, default=None,
                   help="keep the trained adapters here (reused when already registered)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or Path(tmp) / "data"
        t0 = time.perf_counter()
        if not (data_dir / "models" / "acme2.json").is_file():
            train(data_dir)
        trained_s = time.perf_counter() - t0
        bare = asyncio.run(serve(data_dir, [], args.threads, args.rounds))
        both = asyncio.run(serve(data_dir, ["acme", "acme2"], args.threads, args.rounds))
    result = {"threads": args.threads, "rounds": args.rounds, "train_s": round(trained_s, 1),
              "engine_rss_mib": {"no adapter": bare["rss_mib"], "2 adapters": both["rss_mib"]},
              "mixes": both["mixes"]}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
