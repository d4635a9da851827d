"""`autoglm model pull` against the official huggingface_hub client, on the same stand-in hub.

    .venv/bin/python bench/pull.py [--size-mib 256] [--rounds 3] [--out bench/results/pull.json]

The stand-in hub (``autoglm.devtools.hub``) serves one repository with one LFS file of
random bytes on 127.0.0.1 (LFS bytes come from a second loopback address, as from a CDN).
Three measurements, each for ours and for ``huggingface_hub.snapshot_download``:

1. throughput: a clean download, alternating rounds, median MiB/s (ours also hashes every
   byte as it arrives and checks it against the hub's SHA-256; theirs does not);
2. a connection cut at half the file: bytes the hub had to send in all;
3. SIGKILL at about half the file, then the same command again: bytes the second run
   fetched (0.5 of the file means nothing on disk was fetched again).

Both run as child processes with the same Python. Needs the test extra (huggingface_hub).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.supply.hub import HubProcess  # noqa: E402

REPO = "bench/model"
FILE = "model.Q4_0.gguf"
AUTOGLM = Path(sys.executable).with_name("autoglm")
HF = ("import sys, huggingface_hub as h; h.snapshot_download(sys.argv[1], endpoint=sys.argv[2], "
      "local_dir=sys.argv[3], token=False)")


def command(system: str, hub: HubProcess, work: Path) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "HF_HUB_DISABLE_TELEMETRY": "1", "AUTOGLM_DATA_DIR": str(work),
           "AUTOGLM_PULL_BACKOFF_S": "0.05", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    if system == "autoglm":
        return [str(AUTOGLM), "model", "pull", REPO, "--endpoint", hub.url], env
    return [sys.executable, "-c", HF, REPO, hub.url, str(work / "dl")], env


def partial_size(system: str, work: Path) -> int:
    if system == "autoglm":
        paths = [work / "models" / ".incoming" / "model" / f"{FILE}.part"]
    else:
        paths = list((work / "dl").rglob("*.incomplete"))
    return sum(p.stat().st_size for p in paths if p.exists())


def sent(hub: HubProcess) -> int:
    return sum(r["bytes_sent"] for r in hub.requests(FILE) if r["method"] == "GET")


def run(system: str, hub: HubProcess, work: Path) -> float:
    cmd, env = command(system, hub, work)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{system} failed: {r.stderr[-800:]}")
    return elapsed


def throughput(hub: HubProcess, size: int, rounds: int, tmp: Path) -> dict[str, float]:
    times: dict[str, list[float]] = {"autoglm": [], "huggingface_hub": []}
    for i in range(rounds):
        for system in (times if i % 2 == 0 else reversed(list(times))):
            work = Path(tempfile.mkdtemp(dir=tmp))
            times[system].append(run(system, hub, work))
            subprocess.run(["rm", "-rf", str(work)], check=True)
    return {s: round(size / statistics.median(t) / 2**20, 1) for s, t in times.items()}


def after_cut(hub: HubProcess, size: int, tmp: Path) -> dict[str, float]:
    out = {}
    for system in ("autoglm", "huggingface_hub"):
        hub.control(reset_stats=True, faults=[{"kind": "cut", "after_bytes": size // 2,
                                               "times": 1, "path": FILE}])
        run(system, hub, Path(tempfile.mkdtemp(dir=tmp)))
        out[system] = round(sent(hub) / size, 3)
    hub.control(faults=[])
    return out


def after_kill(hub: HubProcess, size: int, tmp: Path) -> dict[str, float]:
    out = {}
    for system in ("autoglm", "huggingface_hub"):
        work = Path(tempfile.mkdtemp(dir=tmp))
        hub.control(reset_stats=True, rate=size / 4)  # about 4 s for the file
        cmd, env = command(system, hub, work)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while partial_size(system, work) < size // 2:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"{system}: no partial file appeared")
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        hub.control(reset_stats=True, rate=None)
        run(system, hub, work)
        out[system] = round(sent(hub) / size, 3)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size-mib", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "pull.json")
    args = p.parse_args()
    try:
        import huggingface_hub
    except ImportError:
        raise SystemExit("error: needs huggingface_hub (pip install -e '.[test]')") from None
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        repo = tmp / "hub" / REPO
        repo.mkdir(parents=True)
        with (repo / FILE).open("wb") as fh:
            for _ in range(args.size_mib // 16):
                fh.write(os.urandom(16 << 20))
        size = (repo / FILE).stat().st_size
        hub = HubProcess(tmp / "hub")
        try:
            result = {
                "size_mib": args.size_mib, "rounds": args.rounds,
                "huggingface_hub_version": huggingface_hub.__version__,
                "throughput_mib_s": throughput(hub, size, args.rounds, tmp),
                "sent_after_cut_at_half": after_cut(hub, size, tmp),
                "fetched_after_sigkill_at_half": after_kill(hub, size, tmp),
            }
        finally:
            hub.stop()
    t = result["throughput_mib_s"]
    result["throughput_ratio"] = round(t["autoglm"] / t["huggingface_hub"], 3)
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
