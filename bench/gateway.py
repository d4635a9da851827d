"""Gateway overhead: what ``autoglm serve`` adds in front of an instant upstream.

Run from the repository root::

    .venv/bin/python bench/gateway.py [--rounds 3] [--duration 5] [--chunks 8] [--out bench/results/gateway.json]

Two child processes, each in its own process group and always torn down:

- the stand-in upstream, ``python -m autoglm.devtools.standin`` (plain asyncio; answers
  a chat completion at once with a fixed JSON body, or ``--chunks`` SSE chunks plus
  ``[DONE]`` when the body says ``"stream": true``);
- our gateway, ``autoglm serve`` with one ``engine: openai`` model pointing at the
  stand-in (so no llama.cpp engine starts) and every default stage on: API key auth,
  body size limit, request id, JSON access log (stderr, to a file), metrics.

``wrk -t1 -cN -dDs --latency`` POSTs the same small chat completion (a Lua script sets
method, body and headers) straight to the stand-in ("direct") and through the gateway
("gateway"), JSON and streaming, at 1 and 16 connections. Every measured run follows a
1 s warm-up run on the same target. Each round runs every configuration once, direct
and gateway back to back with their order swapped every round; medians over rounds are
reported. Added latency is the median over rounds of (gateway - direct), for p50 and
p99, so that each difference pairs two runs that saw the same machine load.

Targets: p50 added latency <= 0.5 ms at 1 connection (JSON), and >= 3000 requests/s
through the gateway at 16 connections (JSON, full stack).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODEL_ID = "standin-model"
MESSAGES = [{"role": "user", "content": "Say hello."}]
MODES = ("json", "stream")
CONNECTIONS = (1, 16)
WARMUP_S = 1
TARGET_ADDED_P50_MS = 0.5  # at 1 connection, JSON
TARGET_RPS = 3000.0  # through the gateway at 16 connections, JSON
WRK_MISSING = "install wrk (Debian: apt-get install wrk)"


# --------------------------------------------------------------------------------------
# child processes
# --------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Child:
    """A child process leading its own process group; ``stop`` kills the whole group."""

    def __init__(self, name: str, argv: list[str], stdout: Path, stderr: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name, self.argv, self.stdout, self.stderr = name, argv, stdout, stderr
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.stdout.open("ab") as out, self.stderr.open("ab") as err:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=err, env=self.env,
                                         cwd=ROOT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.name} was not started")
        return self.proc.pid

    def wait_ready(self, url: str, headers: dict[str, str] | None = None,
                   timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        if self.proc is None:
            raise RuntimeError(f"{self.name} was not started")
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n"
                                   f"{self.tail()}")
            with contextlib.suppress(OSError):
                if http("GET", url, headers=headers, timeout=2.0)[0] == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout_s:.0f}s:\n{self.tail()}")

    def tail(self, n: int = 3000) -> str:
        parts = []
        for p in (self.stdout, self.stderr):
            with contextlib.suppress(OSError):
                parts.append(p.read_text(errors="replace")[-n:])
        return "\n".join(parts)

    def cpu_s(self) -> float:
        """User + system CPU seconds of the process (from /proc; 0 where unavailable)."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return 0.0

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left of the group (the leader included) is killed.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def host_cpu() -> tuple[int, int, int]:
    """(total, busy, steal) jiffies over all CPUs, from /proc/stat (zeros where unavailable)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0, 0
    total = sum(v[:8])  # user nice system idle iowait irq softirq steal (guest is in user)
    return total, total - v[3] - v[4], v[7] if len(v) > 7 else 0


def host_delta(a: tuple[int, int, int], b: tuple[int, int, int]) -> dict[str, float]:
    """Busy and stolen CPU between two ``host_cpu`` readings, in cores."""
    total = b[0] - a[0]
    n = os.cpu_count() or 1
    if total <= 0:
        return {"busy_cores": 0.0, "steal_cores": 0.0}
    return {"busy_cores": (b[1] - a[1]) / total * n, "steal_cores": (b[2] - a[2]) / total * n}


# --------------------------------------------------------------------------------------
# wrk
# --------------------------------------------------------------------------------------
_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_PCT = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_TOTAL = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", re.M)
_NON2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCK = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def parse_wrk(text: str) -> dict[str, Any]:
    """requests/s, latency percentiles (ms), request and error counts from wrk's output."""
    rps = _RPS.search(text)
    total = _TOTAL.search(text)
    if rps is None or total is None:
        raise RuntimeError(f"could not parse wrk output:\n{text}")
    pcts = {f"p{float(q):g}": float(v) * _UNIT_MS[u] for q, v, u in _PCT.findall(text)}
    if "p50" not in pcts or "p99" not in pcts:
        raise RuntimeError(f"wrk printed no latency distribution (--latency?):\n{text}")
    non2xx = _NON2XX.search(text)
    sock = _SOCK.search(text)
    return {
        "rps": float(rps.group(1)),
        "p50_ms": pcts["p50"], "p75_ms": pcts.get("p75"), "p90_ms": pcts.get("p90"),
        "p99_ms": pcts["p99"],
        "requests": int(total.group(1)),
        "elapsed_s": float(total.group(2)) * _UNIT_MS[total.group(3)] / 1e3,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(int(x) for x in sock.groups()) if sock else 0,
    }


def lua_script(path: Path, key: str, stream: bool) -> None:
    body: dict[str, Any] = {"model": MODEL_ID, "messages": MESSAGES, "max_tokens": 16}
    if stream:
        body["stream"] = True
    # A Lua long string holds the JSON verbatim (no escaping needed).
    path.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = [==[{json.dumps(body, separators=(',', ':'))}]==]\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {key}"\n'
    )


class Wrk:
    def __init__(self, exe: str, log: Path) -> None:
        self.exe = exe
        self.log = log
        self.proc: subprocess.Popen[str] | None = None

    def run(self, url: str, script: Path, conns: int, duration_s: int) -> dict[str, Any]:
        argv = [self.exe, "-t1", f"-c{conns}", f"-d{duration_s}s", "--latency",
                "-s", str(script), url]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        try:
            out, _ = self.proc.communicate(timeout=duration_s + 30)
        finally:
            self.kill()
        with self.log.open("a") as f:
            f.write(f"$ {' '.join(argv)}\n{out}\n")
        return parse_wrk(out)

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


# --------------------------------------------------------------------------------------
# the benchmark
# --------------------------------------------------------------------------------------
def sanity_check(direct: str, gateway: str, key: str, chunks: int) -> dict[str, Any]:
    """One JSON and one streamed request each way: both must answer 200, streams complete."""
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    out: dict[str, Any] = {}
    for name, url in (("direct", direct), ("gateway", gateway)):
        for stream in (False, True):
            body = {"model": MODEL_ID, "messages": MESSAGES, "max_tokens": 16, "stream": stream}
            status, data = http("POST", url, json.dumps(body).encode(), auth, timeout=10)
            if status != 200:
                raise RuntimeError(f"{name} {'stream' if stream else 'json'}: HTTP {status} "
                                   f"{data[:300]!r}")
            if stream:
                events = [ln for ln in data.split(b"\n") if ln.startswith(b"data:")]
                if not events or events[-1].strip() != b"data: [DONE]":
                    raise RuntimeError(f"{name} stream did not end with [DONE]: {data[-300:]!r}")
                out[f"{name}_stream_events"] = len(events)
                if len(events) != chunks + 2:  # content chunks + final chunk + [DONE]
                    raise RuntimeError(f"{name} stream had {len(events)} events, "
                                       f"expected {chunks + 2}")
            else:
                answer = json.loads(data)
                out[f"{name}_json_content"] = answer["choices"][0]["message"]["content"]
    return out


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def summarize(mode: str, conns: int, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    side: dict[str, dict[str, float]] = {}
    for who in ("direct", "gateway"):
        runs = [r[who] for r in rounds]
        side[who] = {
            "rps": med([x["rps"] for x in runs]),
            "p50_ms": med([x["p50_ms"] for x in runs]),
            "p99_ms": med([x["p99_ms"] for x in runs]),
            "errors": sum(x["non_2xx"] + x["socket_errors"] for x in runs),
        }
    gw = [r["gateway"] for r in rounds]
    side["gateway"]["cpu_us_per_req"] = med([x["cpu_us_per_req"] for x in gw])
    side["gateway"]["cpu_share"] = med([x["cpu_share"] for x in gw])
    side["gateway"]["host_busy_cores"] = med([x["host"]["busy_cores"] for x in gw])
    side["gateway"]["host_steal_cores"] = med([x["host"]["steal_cores"] for x in gw])
    return {
        "mode": mode, "connections": conns,
        "direct": side["direct"], "gateway": side["gateway"],
        "added": {  # median of per-round paired differences
            "p50_ms": med([r["gateway"]["p50_ms"] - r["direct"]["p50_ms"] for r in rounds]),
            "p99_ms": med([r["gateway"]["p99_ms"] - r["direct"]["p99_ms"] for r in rounds]),
        },
        "added_of_medians": {
            "p50_ms": side["gateway"]["p50_ms"] - side["direct"]["p50_ms"],
            "p99_ms": side["gateway"]["p99_ms"] - side["direct"]["p99_ms"],
        },
        "gateway_rps_ratio": med([r["gateway"]["rps"] / r["direct"]["rps"] for r in rounds]),
        "rounds": rounds,
    }


_STATUS = re.compile(rb'"status":(\d+)')


def count_access_log(path: Path) -> dict[str, Any]:
    """Chat completion lines in the gateway's JSON access log, by status."""
    lines = 0
    by_status: dict[str, int] = {}
    with path.open("rb") as f:
        for line in f:
            if b'"path":"/v1/chat/completions"' in line:
                lines += 1
                m = _STATUS.search(line)
                st = m.group(1).decode() if m else "?"
                by_status[st] = by_status.get(st, 0) + 1
    return {"chat_lines": lines, "by_status": by_status}


def run(args: argparse.Namespace, wrk_exe: str) -> dict[str, Any]:
    py = sys.executable
    autoglm_bin = Path(py).parent / "autoglm"
    serve = [str(autoglm_bin)] if autoglm_bin.exists() else [py, "-m", "autoglm"]
    key = "bench-gw-" + secrets.token_urlsafe(24)
    tmp = Path(tempfile.mkdtemp(prefix="autoglm-bench-gw-"))
    children: list[Child] = []
    wrk = Wrk(wrk_exe, tmp / "wrk.log")
    try:
        up_port, gw_port = free_port(), free_port()
        (tmp / "config.yaml").write_text(
            "models:\n"
            f"  - id: {MODEL_ID}\n"
            "    engine: openai\n"
            "    instances:\n"
            f"      - url: http://127.0.0.1:{up_port}/v1\n"
        )
        standin = Child("standin", [py, "-m", "autoglm.devtools.standin", "--port", str(up_port),
                                    "--name", "s1", "--chunks", str(args.chunks)],
                        tmp / "standin.out", tmp / "standin.err")
        gateway = Child("gateway", [*serve, "serve", "--config", str(tmp / "config.yaml"),
                                    "--port", str(gw_port), "--data-dir", str(tmp / "data")],
                        tmp / "gateway.out", tmp / "gateway.err",  # stderr: JSON access log
                        env={"AUTOGLM_ADMIN_KEY": key})
        children += [standin, gateway]
        standin.start()
        standin.wait_ready(f"http://127.0.0.1:{up_port}/_stats")
        gateway.start()
        gateway.wait_ready(f"http://127.0.0.1:{gw_port}/readyz", timeout_s=90)

        urls = {"direct": f"http://127.0.0.1:{up_port}/v1/chat/completions",
                "gateway": f"http://127.0.0.1:{gw_port}/v1/chat/completions"}
        sanity = sanity_check(urls["direct"], urls["gateway"], key, args.chunks)
        scripts = {}
        for mode in MODES:
            scripts[mode] = tmp / f"{mode}.lua"
            lua_script(scripts[mode], key, stream=(mode == "stream"))

        per_config: dict[tuple[str, int], list[dict[str, Any]]] = {
            (m, c): [] for m in MODES for c in CONNECTIONS}
        for rnd in range(args.rounds):
            for mode in MODES:
                for conns in CONNECTIONS:
                    order = ("direct", "gateway") if rnd % 2 == 0 else ("gateway", "direct")
                    res: dict[str, Any] = {"round": rnd + 1, "order": list(order)}
                    for who in order:
                        wrk.run(urls[who], scripts[mode], conns, WARMUP_S)  # warm-up, discarded
                        cpu0, up0, host0 = gateway.cpu_s(), standin.cpu_s(), host_cpu()
                        r = wrk.run(urls[who], scripts[mode], conns, args.duration)
                        cpu = gateway.cpu_s() - cpu0
                        r["standin_cpu_share"] = (standin.cpu_s() - up0) / max(r["elapsed_s"], 1e-9)
                        r["host"] = host_delta(host0, host_cpu())
                        if who == "gateway":
                            r["cpu_s"] = cpu
                            r["cpu_us_per_req"] = cpu / max(r["requests"], 1) * 1e6
                            r["cpu_share"] = cpu / max(r["elapsed_s"], 1e-9)
                        res[who] = r
                    per_config[(mode, conns)].append(res)
                    d, g = res["direct"], res["gateway"]
                    print(f"round {rnd + 1}/{args.rounds} {mode:6s} c={conns:<2d}  "
                          f"direct {d['rps']:8.0f} rps p50 {d['p50_ms']:.3f} ms  |  "
                          f"gateway {g['rps']:7.0f} rps p50 {g['p50_ms']:.3f} ms "
                          f"p99 {g['p99_ms']:.3f} ms  cpu {g['cpu_us_per_req']:.0f} us/req",
                          flush=True)
        results = [summarize(m, c, per_config[(m, c)]) for m in MODES for c in CONNECTIONS]
        _, upstream_stats = http("GET", f"http://127.0.0.1:{up_port}/_stats")
        checks = {
            "sanity": sanity,
            "gateway_access_log": count_access_log(tmp / "gateway.err"),
            "wrk_counted_gateway_requests": sum(
                res["gateway"]["requests"] for rs in per_config.values() for res in rs),
            "standin_stats": json.loads(upstream_stats),
            "gateway_alive_at_end": gateway.proc is not None and gateway.proc.poll() is None,
        }
        return {"results": results, "checks": checks}
    except Exception:  # not on Ctrl-C / SIGTERM: just clean up
        for c in children:
            print(f"--- {c.name} log tail ---\n{c.tail(1500)}", file=sys.stderr)
        raise
    finally:
        wrk.kill()
        for c in reversed(children):
            c.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def judge(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by = {(r["mode"], r["connections"]): r for r in results}
    c1, c16 = by[("json", 1)], by[("json", 16)]
    added = c1["added"]["p50_ms"]
    rps = c16["gateway"]["rps"]
    return [
        {"target": "p50 added latency, 1 connection, JSON", "limit": f"<= {TARGET_ADDED_P50_MS} ms",
         "value": round(added, 4), "unit": "ms",
         "met": added <= TARGET_ADDED_P50_MS and c1["gateway"]["errors"] == 0},
        {"target": "gateway throughput, 16 connections, JSON",
         "limit": f">= {TARGET_RPS:.0f} req/s",
         "value": round(rps, 1), "unit": "req/s",
         "met": rps >= TARGET_RPS and c16["gateway"]["errors"] == 0},
    ]


def print_report(results: list[dict[str, Any]], targets: list[dict[str, Any]],
                 checks: dict[str, Any], wall_s: float) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=max(Console().width, 150))
    t = Table(title="Gateway overhead (medians over rounds; latency in ms)")
    for col in ("mode", "conns", "direct rps", "direct p50", "direct p99",
                "gw rps", "gw p50", "gw p99", "added p50", "added p99",
                "gw/direct", "gw CPU us/req", "gw CPU", "host busy", "errors"):
        t.add_column(col, justify="left" if col == "mode" else "right")
    for r in results:
        d, g, a = r["direct"], r["gateway"], r["added"]
        t.add_row(r["mode"], str(r["connections"]),
                  f"{d['rps']:.0f}", f"{d['p50_ms']:.3f}", f"{d['p99_ms']:.3f}",
                  f"{g['rps']:.0f}", f"{g['p50_ms']:.3f}", f"{g['p99_ms']:.3f}",
                  f"{a['p50_ms']:+.3f}", f"{a['p99_ms']:+.3f}",
                  f"{r['gateway_rps_ratio']:.1%}",
                  f"{g['cpu_us_per_req']:.0f}", f"{g['cpu_share']:.0%}",
                  f"{g['host_busy_cores']:.2f}/{os.cpu_count()}",
                  str(d["errors"] + g["errors"]))
    con.print(t)
    con.print("added = median over rounds of (gateway - direct); gw CPU = gateway process CPU "
              "time during the run / wall time (100% = one core); host busy = "
              "cores busy machine-wide during the gateway runs (wrk + stand-in + gateway + "
              "anything else)")
    log = checks["gateway_access_log"]
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(log["by_status"].items()))
    con.print(f"checks: gateway access log has {log['chat_lines']} chat lines "
              f"(by status {statuses}; 499 = wrk closed a connection with a request in "
              f"flight at the end of a run); wrk counted "
              f"{checks['wrk_counted_gateway_requests']} measured gateway requests "
              f"(plus warm-ups); "
              f"stand-in served {checks['standin_stats'].get('requests')} completions")
    for tg in targets:
        verdict = "[bold green]MET[/]" if tg["met"] else "[bold red]MISSED[/]"
        con.print(f"target: {tg['target']} {tg['limit']}: {tg['value']} {tg['unit']} -> {verdict}")
    con.print(f"total runtime {wall_s:.0f} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported")
    p.add_argument("--duration", type=int, default=5, help="seconds per measured wrk run")
    p.add_argument("--chunks", type=int, default=8, help="content chunks per streamed answer")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gateway.json")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.duration < 1 or args.chunks < 1:
        p.error("--rounds, --duration and --chunks must be >= 1")
    wrk_exe = shutil.which("wrk")
    if wrk_exe is None:
        print(f"error: wrk not found; {WRK_MISSING}", file=sys.stderr)
        return 2

    def _term(signum: int, frame: Any) -> None:  # let the finally blocks clean up
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _term)
    started = time.time()
    t0 = time.perf_counter()
    out = run(args, wrk_exe)
    wall_s = time.perf_counter() - t0
    targets = judge(out["results"])
    print_report(out["results"], targets, out["checks"], wall_s)
    version = subprocess.run([wrk_exe, "-v"], capture_output=True, text=True).stdout.splitlines()
    doc = {
        "benchmark": "gateway",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "wall_s": round(wall_s, 1),
        "argv": sys.argv,
        "settings": {"rounds": args.rounds, "duration_s": args.duration, "warmup_s": WARMUP_S,
                     "chunks": args.chunks, "connections": list(CONNECTIONS),
                     "wrk": version[0] if version else None, "wrk_threads": 1},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "targets": targets,
        "checks": out["checks"],
        "results": out["results"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
