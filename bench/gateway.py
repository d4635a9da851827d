"""Gateway overhead: what ``autoglm serve`` adds in front of an instant upstream.

Run from the repository root::

    .venv/bin/python bench/gateway.py [--rounds 3] [--duration 5] [--chunks 8] \\
        [--workers 1] [--targets direct,bare,gateway] [--out bench/results/gateway.json]

Up to three child processes, each in its own process group and always torn down:

- the stand-in upstream, ``python -m autoglm.devtools.standin`` (plain asyncio; answers
  a chat completion at once with a fixed JSON body, or ``--chunks`` SSE chunks plus
  ``[DONE]`` when the body says ``"stream": true``);
- a bare proxy, ``bench/_bare_proxy.py`` (Starlette + uvicorn + one pooled aiohttp
  session, nothing else: no auth, no logging) in front of the stand-in: the floor for a
  Python gateway on the same stack;
- our gateway, ``autoglm serve`` with one ``engine: openai`` model pointing at the
  stand-in (so no llama.cpp engine starts) and every default stage on: API key auth,
  body size limit, request id, JSON access log (stderr, to a file), metrics. With
  ``--workers N`` (N > 1) it runs ``autoglm serve --workers N``.

``wrk -t1 -cN -dDs --latency`` POSTs the same small chat completion (a Lua script sets
method, body and headers) straight to the stand-in ("direct"), through the bare proxy
("bare") and through the gateway ("gateway"), JSON and streaming, at 1 and 16
connections. Every measured run follows a 1 s warm-up run on the same target. Each round
runs every configuration once, the targets back to back with their order rotated every
round; medians over rounds are reported. Added latency is the median over rounds of
(target - direct), for p50 and p99, and gateway/bare is the median over rounds of the
ratio of their requests/s, so that each comparison pairs runs that saw the same load.

Targets (JSON): the gateway sustains >= 0.75 of the bare proxy's requests/s at 16
connections, and adds <= 0.35 ms p50 latency over direct at 1 connection.

A/B: ``--env-b NAME=VALUE`` (repeatable) starts a second gateway, ``gateway_b``, with those
settings on top of ``--env``, measured in the same rounds as the others; the report adds
gateway_b / bare and gateway_b / gateway. Rate limits on against off, for instance::

    .venv/bin/python bench/gateway.py --targets bare,gateway \
        --env-b 'AUTOGLM_RATE_LIMITS={"key": {"requests_per_minute": 100000000}}' \
        --env-b AUTOGLM_REDIS_URL=redis://127.0.0.1:6379/0

(goal: gateway_b / bare >= 0.7 at 16 connections, JSON).
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
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _children import Child, free_port, host_cpu, host_delta, http, http_ok, listening
from _gateway_report import judge, print_report, summarize

ROOT = Path(__file__).resolve().parent.parent
BARE_PROXY = ROOT / "bench" / "_bare_proxy.py"
MODEL_ID = "standin-model"
MESSAGES = [{"role": "user", "content": "Say hello."}]
MODES = ("json", "stream")
CONNECTIONS = (1, 16)
TARGETS = ("direct", "bare", "gateway", "gateway_b")  # canonical order; rotated every round
WARMUP_S = 1
WRK_MISSING = "install wrk (Debian: apt-get install wrk)"


# --------------------------------------------------------------------------------------
# the servers under test
# --------------------------------------------------------------------------------------
@dataclass
class Servers:
    """The running children by target name ("direct" is the stand-in) and their URLs."""

    children: dict[str, Child] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)
    standin_stats_url: str = ""

    def stop(self) -> None:
        for child in reversed(list(self.children.values())):
            child.stop()

    def print_tails(self) -> None:
        for c in self.children.values():
            print(f"--- {c.name} log tail ---\n{c.tail(1500)}", file=sys.stderr)


def serve_argv(py: str) -> list[str]:
    autoglm_bin = Path(py).parent / "autoglm"
    return [str(autoglm_bin)] if autoglm_bin.exists() else [py, "-m", "autoglm"]


def standin_child(py: str, tmp: Path, port: int, chunks: int) -> Child:
    return Child("standin", [py, "-m", "autoglm.devtools.standin", "--port", str(port),
                             "--name", "s1", "--chunks", str(chunks)], tmp)


def bare_child(py: str, tmp: Path, port: int, upstream_port: int) -> Child:
    return Child("bare", [py, str(BARE_PROXY), "--port", str(port),
                          "--upstream", f"http://127.0.0.1:{upstream_port}"], tmp)


def gateway_child(py: str, tmp: Path, port: int, upstream_port: int, key: str,
                  workers: int, env: dict[str, str] | None = None) -> Child:
    config = tmp / "config.yaml"
    config.write_text(
        "models:\n"
        f"  - id: {MODEL_ID}\n"
        "    engine: openai\n"
        "    instances:\n"
        f"      - url: http://127.0.0.1:{upstream_port}/v1\n"
    )
    argv = [*serve_argv(py), "serve", "--config", str(config), "--port", str(port),
            "--data-dir", str(tmp / "data")]
    if workers != 1:  # today's ``autoglm serve`` may not know the flag yet
        argv += ["--workers", str(workers)]
    # stderr (gateway.err) gets the JSON access log
    return Child("gateway", argv, tmp, env={"AUTOGLM_ADMIN_KEY": key, **(env or {})})


def start_servers(servers: Servers, args: argparse.Namespace, tmp: Path, key: str) -> None:
    """Start the stand-in (always: every target ends there) and the chosen proxies."""
    py = sys.executable
    up_port = free_port()
    standin = standin_child(py, tmp, up_port, args.chunks)
    servers.children["direct"] = standin
    standin.start()
    servers.standin_stats_url = f"http://127.0.0.1:{up_port}/_stats"
    standin.wait_ready(http_ok(servers.standin_stats_url))
    servers.urls["direct"] = f"http://127.0.0.1:{up_port}/v1/chat/completions"
    if "bare" in args.targets:
        port = free_port()
        bare = bare_child(py, tmp, port, up_port)
        servers.children["bare"] = bare
        bare.start()
        bare.wait_ready(listening(port))
        servers.urls["bare"] = f"http://127.0.0.1:{port}/v1/chat/completions"
    if "gateway" in args.targets:
        port = free_port()
        gateway = gateway_child(py, tmp, port, up_port, key, args.workers, dict(args.env))
        servers.children["gateway"] = gateway
        gateway.start()
        gateway.wait_ready(http_ok(f"http://127.0.0.1:{port}/readyz"), timeout_s=90)
        servers.urls["gateway"] = f"http://127.0.0.1:{port}/v1/chat/completions"
    if "gateway_b" in args.targets:  # a second gateway: the same plus the --env-b settings
        port = free_port()
        tmp_b = tmp / "b"
        tmp_b.mkdir(exist_ok=True)
        gw_b = gateway_child(py, tmp_b, port, up_port, key, args.workers,
                             {**dict(args.env), **dict(args.env_b)})
        gw_b.name = "gateway_b"
        servers.children["gateway_b"] = gw_b
        gw_b.start()
        gw_b.wait_ready(http_ok(f"http://127.0.0.1:{port}/readyz"), timeout_s=90)
        servers.urls["gateway_b"] = f"http://127.0.0.1:{port}/v1/chat/completions"


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
# measuring
# --------------------------------------------------------------------------------------
def check_answer(name: str, stream: bool, data: bytes, chunks: int) -> Any:
    """The JSON answer's content, or the number of events of a complete stream."""
    if not stream:
        return json.loads(data)["choices"][0]["message"]["content"]
    events = [ln for ln in data.split(b"\n") if ln.startswith(b"data:")]
    if not events or events[-1].strip() != b"data: [DONE]":
        raise RuntimeError(f"{name} stream did not end with [DONE]: {data[-300:]!r}")
    # content chunks + final chunk + [DONE]; through the gateway the PII guard may release
    # text it held back (a value could have continued) in one more chunk before the last
    if not chunks + 2 <= len(events) <= chunks + 3:
        raise RuntimeError(f"{name} stream had {len(events)} events, expected {chunks + 2}")
    return len(events)


def sanity_check(urls: dict[str, str], key: str, chunks: int) -> dict[str, Any]:
    """One JSON and one streamed request to every target: 200 each, streams complete."""
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    out: dict[str, Any] = {}
    for name, url in urls.items():
        for stream in (False, True):
            body = {"model": MODEL_ID, "messages": MESSAGES, "max_tokens": 16, "stream": stream}
            status, data = http("POST", url, json.dumps(body).encode(), auth, timeout=10)
            if status != 200:
                raise RuntimeError(f"{name} {'stream' if stream else 'json'}: HTTP {status} "
                                   f"{data[:300]!r}")
            label = f"{name}_stream_events" if stream else f"{name}_json_content"
            out[label] = check_answer(name, stream, data, chunks)
    return out


def round_order(targets: tuple[str, ...], rnd: int) -> list[str]:
    """``targets`` rotated by the round number, so each leads in turn."""
    k = rnd % len(targets)
    return [*targets[k:], *targets[:k]]


def measure(wrk: Wrk, servers: Servers, who: str, script: Path, conns: int,
            duration_s: int) -> dict[str, Any]:
    """One warm-up and one measured wrk run against ``who``, with CPU figures."""
    url, target, standin = servers.urls[who], servers.children[who], servers.children["direct"]
    wrk.run(url, script, conns, WARMUP_S)  # discarded
    cpu0, up0, host0 = target.cpu_s(), standin.cpu_s(), host_cpu()
    r = wrk.run(url, script, conns, duration_s)
    cpu = target.cpu_s() - cpu0  # the server wrk talks to (the stand-in for direct)
    elapsed = max(r["elapsed_s"], 1e-9)
    r["standin_cpu_share"] = (standin.cpu_s() - up0) / elapsed
    r["host"] = host_delta(host0, host_cpu())
    r["cpu_s"] = cpu
    r["cpu_us_per_req"] = cpu / max(r["requests"], 1) * 1e6
    r["cpu_share"] = cpu / elapsed
    return r


def round_line(rnd: int, rounds: int, mode: str, conns: int, res: dict[str, Any]) -> str:
    parts = [f"{who} {res[who]['rps']:7.0f} rps p50 {res[who]['p50_ms']:.3f} "
             f"p99 {res[who]['p99_ms']:.3f}" for who in TARGETS if who in res]
    return f"round {rnd + 1}/{rounds} {mode:6s} c={conns:<2d}  " + "  |  ".join(parts)


def run_round(rnd: int, args: argparse.Namespace, wrk: Wrk, servers: Servers,
              scripts: dict[str, Path]) -> dict[tuple[str, int], dict[str, Any]]:
    """Every (mode, connections) once, all targets back to back in this round's order."""
    order = round_order(args.targets, rnd)
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for mode in MODES:
        for conns in CONNECTIONS:
            res: dict[str, Any] = {"round": rnd + 1, "order": order}
            for who in order:
                res[who] = measure(wrk, servers, who, scripts[mode], conns, args.duration)
            out[(mode, conns)] = res
            print(round_line(rnd, args.rounds, mode, conns, res), flush=True)
    return out


# --------------------------------------------------------------------------------------
# summaries
# --------------------------------------------------------------------------------------
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


def collect_checks(servers: Servers, sanity: dict[str, Any],
                   per_config: dict[tuple[str, int], list[dict[str, Any]]]) -> dict[str, Any]:
    _, upstream_stats = http("GET", servers.standin_stats_url)
    checks: dict[str, Any] = {"sanity": sanity, "standin_stats": json.loads(upstream_stats)}
    for who, child in servers.children.items():
        checks[f"{who}_alive_at_end"] = child.alive()
    gateway = servers.children.get("gateway")
    if gateway is not None:
        checks["gateway_access_log"] = count_access_log(gateway.stderr)
        checks["wrk_counted_gateway_requests"] = sum(
            res["gateway"]["requests"] for rs in per_config.values() for res in rs)
    return checks


def run(args: argparse.Namespace, wrk_exe: str) -> dict[str, Any]:
    key = "bench-gw-" + secrets.token_urlsafe(24)
    tmp = Path(tempfile.mkdtemp(prefix="autoglm-bench-gw-"))
    servers = Servers()
    wrk = Wrk(wrk_exe, tmp / "wrk.log")
    try:
        start_servers(servers, args, tmp, key)
        sanity = sanity_check(servers.urls, key, args.chunks)
        scripts = {mode: tmp / f"{mode}.lua" for mode in MODES}
        for mode, path in scripts.items():
            lua_script(path, key, stream=(mode == "stream"))
        per_config: dict[tuple[str, int], list[dict[str, Any]]] = {
            (m, c): [] for m in MODES for c in CONNECTIONS}
        for rnd in range(args.rounds):
            for cfg, res in run_round(rnd, args, wrk, servers, scripts).items():
                per_config[cfg].append(res)
        results = [summarize(m, c, args.targets, per_config[(m, c)])
                   for m in MODES for c in CONNECTIONS]
        return {"results": results, "checks": collect_checks(servers, sanity, per_config)}
    except Exception:  # not on Ctrl-C / SIGTERM: just clean up
        servers.print_tails()
        raise
    finally:
        wrk.kill()
        servers.stop()
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------
# targets and report
# --------------------------------------------------------------------------------------
def parse_targets(text: str) -> tuple[str, ...]:
    """``direct,bare,gateway`` (any subset, any order) -> the chosen names, canonical order."""
    names = {t.strip() for t in text.split(",") if t.strip()}
    unknown = sorted(names - set(TARGETS))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(TARGETS)}")
    if not names:
        raise argparse.ArgumentTypeError("no target given")
    return tuple(t for t in TARGETS if t in names)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported")
    p.add_argument("--duration", type=int, default=5, help="seconds per measured wrk run")
    p.add_argument("--chunks", type=int, default=8, help="content chunks per streamed answer")
    p.add_argument("--workers", type=int, default=1,
                   help="gateway worker processes (autoglm serve --workers N; "
                        "not passed when 1)")
    p.add_argument("--targets", type=parse_targets, default=TARGETS[:3],
                   help=f"comma-separated subset of {','.join(TARGETS)} (default: all)")
    p.add_argument("--env", action="append", default=[], type=_env_pair, metavar="NAME=VALUE",
                   help="an AUTOGLM_* setting for the gateway, e.g. AUTOGLM_RATE_LIMITS=... "
                   "(limits on) or AUTOGLM_REDIS_URL=...; repeatable")
    p.add_argument("--env-b", action="append", default=[], type=_env_pair,
                   metavar="NAME=VALUE",
                   help="adds the target gateway_b: a second gateway with these settings on "
                   "top of --env, measured in the same rounds (A/B, e.g. limits off/on)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gateway.json")
    args = p.parse_args(argv)
    if args.env_b:
        args.targets = tuple(t for t in TARGETS if t in (*args.targets, "gateway_b"))
    elif "gateway_b" in args.targets:
        p.error("the target gateway_b needs --env-b")
    if min(args.rounds, args.duration, args.chunks, args.workers) < 1:
        p.error("--rounds, --duration, --chunks and --workers must be >= 1")
    return args


def write_json(args: argparse.Namespace, out: dict[str, Any], goals: list[dict[str, Any]],
               wrk_exe: str, started: float, wall_s: float) -> None:
    version = subprocess.run([wrk_exe, "-v"], capture_output=True, text=True).stdout.splitlines()
    doc = {
        "benchmark": "gateway",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "wall_s": round(wall_s, 1),
        "argv": sys.argv,
        "settings": {"rounds": args.rounds, "duration_s": args.duration, "warmup_s": WARMUP_S,
                     "chunks": args.chunks, "connections": list(CONNECTIONS),
                     "targets": list(args.targets), "gateway_workers": args.workers,
                     "env": [n for n, _ in args.env], "env_b": [n for n, _ in args.env_b],
                     "wrk": version[0] if version else None, "wrk_threads": 1},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "targets": goals,
        "checks": out["checks"],
        "results": out["results"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")


def _env_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.startswith("AUTOGLM_"):
        raise argparse.ArgumentTypeError(f"expected AUTOGLM_NAME=VALUE, not {text!r}")
    return name, value


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
    goals = judge(out["results"], args.targets)
    print_report(out["results"], args.targets, goals, out["checks"], wall_s)
    write_json(args, out, goals, wrk_exe, started, wall_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
