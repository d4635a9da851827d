"""The internal mirror's download throughput against nginx serving the same file.

    .venv/bin/python bench/mirror.py [--size-mib 512] [--rounds 5] [--streams 4]
                                     [--out bench/results/mirror.json]

One registered model (one file of random bytes) is published by ``autoglm serve --mirror``
(the real server: uvicorn, the gateway middleware, a key with ``model.pull``, an audit record
per download) and by Debian's nginx (``apt-get install nginx``; run here with a temporary
config: one worker, ``sendfile on``, no access log) from the same directory on 127.0.0.1.
The same client, curl, downloads the file to /dev/null from each, in alternating rounds:

1. one stream: MiB/s of one download;
2. ``--streams`` downloads at once: their total MiB/s;
3. a ranged download of the second half (``Range: bytes=N-``, what a resume sends).

Medians over the rounds, and the mirror's speed as a fraction of nginx's; and the CPU time
each server spent per GiB it sent (from /proc: robust to a busy machine, where the client
and the neighbours bound the MiB/s). A last figure is
end to end: ``autoglm model pull`` from the mirror (listing, download, SHA-256 of every byte,
fsync, registration) as MiB/s of the file, its time including the CLI's start
(``autoglm_cli_start_s``, measured apart). The file stays in the page cache throughout, so
this compares the servers, not the disk.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autoglm.supply.registry import Registry
from tests.e2e.support import ServerProcess, base_env, free_port

NAME = "bench-model"
FILE = "model.bin"
AUTOGLM = Path(sys.executable).with_name("autoglm")

NGINX_CONF = """\
{user}worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx.error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


class Nginx:
    def __init__(self, root: Path, tmp: Path) -> None:
        exe = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(exe).exists():
            raise SystemExit("error: nginx not found (apt-get install -y nginx)")
        self.port = free_port()
        conf = tmp / "nginx.conf"
        user = "user root;\n" if os.geteuid() == 0 else ""  # workers read what we wrote
        conf.write_text(NGINX_CONF.format(user=user, tmp=tmp, port=self.port, root=root))
        self.proc = subprocess.Popen([exe, "-c", str(conf), "-p", str(tmp)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}/{FILE}"
        deadline = time.monotonic() + 20
        while subprocess.run(["curl", "-sf", "-o", "/dev/null", "-r", "0-0", self.url],
                             check=False).returncode != 0:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise SystemExit(f"error: nginx did not start; see {tmp}/nginx.error.log")
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds these processes have used so far."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def curl(url: str, key: str | None, n: int, start: int = 0) -> float:
    """``n`` downloads of ``url`` at once, to /dev/null; their wall time in seconds."""
    cmd = ["curl", "-sf", "-o", "/dev/null"]
    if key:
        cmd += ["-H", f"Authorization: Bearer {key}"]
    if start:
        cmd += ["-H", f"Range: bytes={start}-"]
    t0 = time.perf_counter()
    procs = [subprocess.Popen([*cmd, url]) for _ in range(n)]
    codes = [p.wait() for p in procs]
    elapsed = time.perf_counter() - t0
    if any(codes):
        raise SystemExit(f"error: curl failed ({codes}) on {url}")
    return elapsed


def measure(urls: dict[str, tuple[str, str | None]], pids: dict[str, list[int]], size: int,
            rounds: int, streams: int) -> dict[str, dict[str, float]]:
    cases = {"one_stream": (1, 0), f"{streams}_streams": (streams, 0),
             "range_second_half": (1, size // 2)}
    times: dict[str, dict[str, list[float]]] = {c: {s: [] for s in urls} for c in cases}
    cpu: dict[str, float] = {s: 0.0 for s in urls}
    moved_all = 0.0
    for i in range(rounds):
        order = list(urls) if i % 2 == 0 else list(reversed(urls))
        for case, (n, start) in cases.items():
            for system in order:
                url, key = urls[system]
                before = cpu_s(pids[system])
                times[case][system].append(curl(url, key, n, start))
                cpu[system] += cpu_s(pids[system]) - before
            moved_all += n * (size - start) / 2**30
    out: dict[str, dict[str, float]] = {}
    for case, (n, start) in cases.items():
        moved = n * (size - start) / 2**20
        row = {s: round(moved / statistics.median(t), 1) for s, t in times[case].items()}
        row["mirror_vs_nginx"] = round(row["mirror"] / row["nginx"], 3)
        out[case] = row
    # what the server itself spent, whatever the client and the neighbours did
    out["server_cpu_s_per_gib"] = {s: round(c / moved_all, 3) for s, c in cpu.items()}
    return out


def pull_end_to_end(server: ServerProcess, key: str, size: int, tmp: Path,
                    rounds: int) -> float:
    times = []
    for _ in range(rounds):
        data = Path(tempfile.mkdtemp(dir=tmp))
        env = base_env(AUTOGLM_DATA_DIR=str(data), HF_TOKEN=key)
        t0 = time.perf_counter()
        r = subprocess.run([str(AUTOGLM), "model", "pull", f"autoglm/{NAME}", "--endpoint",
                            server.base_url], env=env, capture_output=True, text=True,
                           check=False)
        times.append(time.perf_counter() - t0)
        if r.returncode != 0:
            raise SystemExit(f"error: model pull failed: {r.stderr[-800:]}")
        shutil.rmtree(data)
    return round(size / statistics.median(times) / 2**20, 1)


def cli_start() -> float:
    """Seconds `autoglm --help` takes: the part of a pull's time that is not the pull."""
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([str(AUTOGLM), "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times), 2)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size-mib", type=int, default=512)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "mirror.json")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.chmod(tmp, 0o755)
        model = tmp / "model"
        model.mkdir(mode=0o755)
        with (model / FILE).open("wb") as fh:
            for _ in range(max(1, args.size_mib // 16)):
                fh.write(os.urandom(16 << 20))
        size = (model / FILE).stat().st_size
        node = tmp / "node"
        node.mkdir()
        Registry(node / "data").add(model, NAME)
        server = ServerProcess(node, args=["--mirror"], name="mirror").start()
        nginx = Nginx(model, tmp)
        try:
            with server.client(auth=True) as http:
                r = http.post("/admin/v1/principals/prn_platform_admin/keys",
                              json={"name": "bench", "actions": ["model.pull"]})
                r.raise_for_status()
                key = r.json()["key"]
            urls = {"mirror": (f"{server.base_url}/autoglm/{NAME}/resolve/main/{FILE}", key),
                    "nginx": (nginx.url, None)}
            curl(urls["mirror"][0], key, 1)  # warm: page cache, connections, imports
            if server.proc is None:
                raise RuntimeError("the mirror server is not running")
            pids = {"mirror": [server.proc.pid], "nginx": children(nginx.proc.pid)}
            result = {
                "size_mib": round(size / 2**20), "rounds": args.rounds,
                "client": "curl to /dev/null", "cpus": os.cpu_count(),
                "nginx": subprocess.run(["nginx", "-v"], capture_output=True, text=True,
                                        check=False).stderr.strip(),
                "throughput_mib_s": measure(urls, pids, size, args.rounds, args.streams),
                "autoglm_model_pull_mib_s": pull_end_to_end(server, key, size, tmp,
                                                            max(1, args.rounds // 2)),
                "autoglm_cli_start_s": cli_start(),
            }
        finally:
            nginx.stop()
            server.stop(check=False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
