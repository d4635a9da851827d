"""Federated LoRA: the federated adapter against each site alone, at several noise levels.

Run from the repository root (needs the train extra: ``pip install -e '.[train]'``)::

    .venv/bin/python bench/federated.py [--noise 0,0.005,0.01,0.02] [--rounds 4]
        [--local-steps 6] [--server-lr 2] [--clip 2] [--out bench/results/federated.json]

In a temporary directory it makes a federation (CA, server and three site certificates),
writes the non-IID task split (``scripts/make_finetune_task.py --sites``: each site holds
only its own teams' topics), then for each noise multiplier runs ``autoglm federated
server`` and three ``autoglm federated site`` processes on loopback (mutual TLS, torch 1
thread each). Each site alone trains the same number of steps on its own data
(``autoglm finetune``, same batch and learning rate). Every adapter and the base are then
scored on the union of the three held-out sets (mean cross-entropy per answer token,
lower is better). Printed as a table; the rows are saved as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _children import free_port  # noqa: E402
SITES = ("a", "b", "c")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "autoglm", *args]


def _link_base(src: Path, dst: Path) -> None:
    from autoglm.finetune.job import bases_dir

    for conv in bases_dir(src).iterdir():
        target = bases_dir(dst) / conv.name
        target.mkdir(parents=True, exist_ok=True)
        for f in conv.iterdir():
            if not (target / f.name).exists():
                os.link(f, target / f.name)


def _federate(root: Path, name: str, tasks: dict, args: argparse.Namespace,
              noise: float) -> dict:
    pki, port = root / "pki", free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    dp = ["--noise-multiplier", str(noise), "--clip", str(args.clip)] if noise else \
        ["--clip", str(args.clip)]
    t0 = time.monotonic()
    server = subprocess.Popen(_cli(
        "federated", "server", "--name", name, "--ca", str(pki / "ca.pem"), "--cert",
        str(pki / "server.pem"), "--key", str(pki / "server.key"), "--listen",
        f"127.0.0.1:{port}", "--rounds", str(args.rounds), "--local-steps",
        str(args.local_steps), "--lr", str(args.lr), "--server-lr", str(args.server_lr),
        "--json", *dp), env={**env, "AUTOGLM_DATA_DIR": str(root / "server")},
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    sites = []
    for site in SITES:
        _link_base(root / "server", root / site)
        train, held = tasks[site]
        sites.append(subprocess.Popen(_cli(
            "federated", "site", "--server", f"localhost:{port}", "--data", str(train),
            "--heldout", str(held), "--ca", str(pki / "ca.pem"), "--cert",
            str(pki / f"site-{site}.pem"), "--key", str(pki / f"site-{site}.key"),
            "--threads", "1"), env={**env, "AUTOGLM_DATA_DIR": str(root / site)},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    out, _ = server.communicate(timeout=3600)
    for p in sites:
        p.wait(timeout=60)
    if server.returncode != 0:
        raise SystemExit(f"the federated run failed (noise {noise})")
    summary = json.loads(out)["summary"]
    return {"seconds": round(time.monotonic() - t0, 1), "epsilon": summary["dp"]["epsilon"],
            "rounds": summary["rounds"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--noise", default="0,0.005,0.01,0.02")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--local-steps", type=int, default=6)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--server-lr", type=float, default=2.0)
    p.add_argument("--clip", type=float, default=2.0)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "federated.json")
    args = p.parse_args()

    import torch

    from autoglm.federated.evaluate import BASE, heldout_losses
    from autoglm.federated.pki import make_federation
    from autoglm.finetune.base import prepare, resolve_base
    from autoglm.finetune.housestyle import write_site_tasks
    from autoglm.finetune.job import FinetuneRequest, bases_dir, finetune
    from autoglm.finetune.train import TrainConfig
    from autoglm.supply.registry import Registry

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    root = Path(tempfile.mkdtemp(prefix="autoglm-bench-fed-"))
    make_federation(root / "pki", list(SITES))
    tasks = write_site_tasks(root / "task")
    data = root / "server"
    prepare(resolve_base(Registry(data), None), bases_dir(data))
    locals_ = {}
    for site in SITES:
        t0 = time.monotonic()
        res = finetune(data, FinetuneRequest(tasks[site][0], f"local-{site}", config=TrainConfig(
            max_steps=args.rounds * args.local_steps, batch_size=4, lr=args.lr,
            val_fraction=0.0, threads=1)))
        locals_[site] = {"seconds": round(time.monotonic() - t0, 1),
                         "tokens_per_s": res.summary["tokens_per_s"]}
    runs = {}
    for noise in [float(z) for z in args.noise.split(",")]:
        name = f"fed-z{noise:g}".replace(".", "_")
        runs[name] = {"noise_multiplier": noise, **_federate(root, name, tasks, args, noise)}
    union = [tasks[s][1] for s in SITES]
    losses = heldout_losses(data, [BASE, *(f"local-{s}" for s in SITES), *runs], union)
    print(f"union held-out loss (3 sites, {args.rounds} rounds x {args.local_steps} steps, "
          f"clip {args.clip}, server lr {args.server_lr}; lower is better)")
    print(f"{'adapter':<14} {'noise z':>8} {'epsilon (delta 1e-5)':>21} {'loss':>8} {'s':>6}")
    print(f"{'base':<14} {'-':>8} {'-':>21} {losses[BASE]:>8.4f} {'-':>6}")
    for site in SITES:
        print(f"{'local-' + site:<14} {'-':>8} {'-':>21} {losses['local-' + site]:>8.4f} "
              f"{locals_[site]['seconds']:>6.0f}")
    for name, run in runs.items():
        eps = f"{run['epsilon']:.4g}" if run["epsilon"] is not None else "no DP"
        print(f"{name:<14} {run['noise_multiplier']:>8g} {eps:>21} {losses[name]:>8.4f} "
              f"{run['seconds']:>6.0f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "losses": losses, "local": locals_, "federated": runs,
        "when": time.strftime("%Y-%m-%d %H:%M")}, indent=2))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
