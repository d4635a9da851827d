"""Systems measured over a wire: child servers, the HTTP stream client, the engine IPC client.

- ``ServerProc``: a server run as a child process in its own process group, always torn
  down; ``autoglm_server`` (our ``autoglm serve``) and ``llama_cpp_server``
  (``python -m llama_cpp.server``) build one.
- ``http_stream`` / ``http_run``: streamed chat completions timed in the client.
- ``engine_socket`` / ``ipc_run``: our engine process driven straight through its Unix
  socket, without the HTTP gateway (a diagnostic).
- ``child_pid`` / ``cpu_s`` / ``ttft_metric``: the server-side view (CPU time, /metrics).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson

from autoglm.settings import EMBEDDED_MODEL_ID

from _common import ADMIN_KEY, MESSAGES, N_BATCH, REQUEST_TIMEOUT_S, ROOT, Run, Stream


# --------------------------------------------------------------------------------------
# child servers
# --------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProc:
    """A server started as a child process (own process group), always torn down."""

    def __init__(self, name: str, argv: list[str], port: int, ready_path: str,
                 env: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> None:
        self.name, self.argv, self.port, self.ready_path = name, argv, port, ready_path
        self.env = {**os.environ, **(env or {})}
        self.headers = headers or {}
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = Path(tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None
        self.client: httpx.Client | None = None  # the benchmark's keep-alive client

    def start(self, timeout_s: float = 180.0) -> None:
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
            cwd=ROOT, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; "
                                   f"log:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                r = httpx.get(self.base + self.ready_path, headers=self.headers, timeout=2.0)
                if r.status_code == 200:
                    return
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} not ready after {timeout_s:.0f}s; log:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            # The server leads its own session: signal its group (gateway + engine child).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        # Anything of the group still alive (an engine slow to notice) is killed too.
        if proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            self.log_path.unlink()


def autoglm_server(slots: int, ctx_per_slot: int, threads: int, data_dir: Path) -> ServerProc:
    port = free_port()
    argv = [sys.executable, "-m", "autoglm", "serve", "--port", str(port),
            "--slots", str(slots), "--ctx-per-slot", str(ctx_per_slot),
            "--n-threads", str(threads), "--max-queue", "64",
            "--data-dir", str(data_dir), "--log-level", "warning"]
    return ServerProc(f"autoglm-s{slots}", argv, port, "/readyz",
                      env={"AUTOGLM_ADMIN_KEY": ADMIN_KEY},
                      headers={"Authorization": f"Bearer {ADMIN_KEY}"})


def llama_cpp_server(model_path: Path, ctx: int, threads: int, interrupt: bool) -> ServerProc:
    port = free_port()
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path),
            "--model_alias", EMBEDDED_MODEL_ID, "--host", "127.0.0.1", "--port", str(port),
            "--n_ctx", str(ctx), "--n_batch", str(N_BATCH), "--n_ubatch", str(N_BATCH),
            "--n_threads", str(threads), "--n_threads_batch", str(threads),
            "--flash_attn", "True", "--interrupt_requests", str(interrupt)]
    return ServerProc("llama_cpp.server", argv, port, "/v1/models")


# --------------------------------------------------------------------------------------
# HTTP client side
# --------------------------------------------------------------------------------------
def _sse_data(st: Stream, obj: dict[str, Any], parts: list[str]) -> bool:
    """Account one SSE ``data:`` object; True when it carried answer text."""
    if "error" in obj:
        st.error = str(obj["error"])[:200]
        return False
    if obj.get("usage"):
        st.usage_tokens = int(obj["usage"]["completion_tokens"])
        st.prompt_tokens = int(obj["usage"]["prompt_tokens"])
    got = False
    for ch in obj.get("choices") or []:
        text = (ch.get("delta") or {}).get("content")
        if text:
            got = True
            st.chunks += 1
            parts.append(text)
        if ch.get("finish_reason"):
            st.finish_reason = ch["finish_reason"]
    return got


def http_stream(client: httpx.Client, srv: ServerProc, max_tokens: int,
                go: threading.Barrier | None = None) -> tuple[float, Stream]:
    """One streamed chat completion; returns (send time, stream).

    A blocking httpx client on its own thread: httpx's async client (and its line
    iterator) cost ~0.5 ms of CPU per token here, the blocking one ~0.15 ms, and on a
    two-core machine every client cycle is taken from the server being measured.
    """
    body = {"model": EMBEDDED_MODEL_ID, "messages": MESSAGES, "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    st = Stream()
    parts: list[str] = []
    if go is not None:
        go.wait()
    t0 = time.perf_counter()
    try:
        with client.stream("POST", srv.base + "/v1/chat/completions", json=body,
                           headers=srv.headers) as resp:
            if resp.status_code != 200:
                st.error = f"HTTP {resp.status_code}: {resp.read()[:200]!r}"
            else:
                buf = b""  # SSE framing by hand on the raw bytes
                done = False
                for raw in resp.iter_raw():
                    buf += raw
                    *events, buf = buf.replace(b"\r\n", b"\n").split(b"\n\n")
                    for event in events:
                        for line in event.split(b"\n"):
                            if not line.startswith(b"data:"):
                                continue
                            data = line[5:].strip()
                            if data == b"[DONE]":
                                done = True
                                break
                            got = _sse_data(st, orjson.loads(data), parts)
                            if got and st.ttft_s is None:
                                st.ttft_s = time.perf_counter() - t0
                    if done:
                        break
    except (httpx.HTTPError, OSError) as exc:
        st.error = f"{type(exc).__name__}: {exc}"[:200]
    st.total_s = time.perf_counter() - t0
    st.tokens = st.usage_tokens if st.usage_tokens is not None else st.chunks
    st.text = "".join(parts)
    return t0, st


def http_run(srv: ServerProc, system: str, n: int, max_tokens: int) -> Run:
    """N streams at once, one thread each; wall time from the first send to the last end."""
    if srv.client is None:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        srv.client = httpx.Client(timeout=REQUEST_TIMEOUT_S, limits=limits)
    if n == 1:
        t0, st = http_stream(srv.client, srv, max_tokens)
        return Run(system, 1, st.total_s, [st])
    go = threading.Barrier(n)
    with ThreadPoolExecutor(max_workers=n) as pool:
        futs = [pool.submit(http_stream, srv.client, srv, max_tokens, go) for _ in range(n)]
        got = [f.result() for f in futs]
    start = min(t for t, _ in got)
    end = max(t + st.total_s for t, st in got)
    return Run(system, n, end - start, [st for _, st in got])


def child_pid(parent: int) -> int | None:
    for pid in Path("/proc").iterdir():
        if pid.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if int((pid / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                    return int(pid.name)
    return None


def cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of a process so far (0 when it cannot be read)."""
    if pid is None:
        return 0.0
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def engine_socket(srv: ServerProc, timeout_s: float = 10.0) -> str:
    """The Unix socket of the engine process that ``autoglm serve`` started (its child)."""
    if srv.proc is None:
        raise RuntimeError(f"{srv.name} is not running: start it before looking for its engine")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for pid in Path("/proc").iterdir():
            if not pid.name.isdigit():
                continue
            try:
                stat = (pid / "stat").read_text()
                argv = (pid / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == srv.proc.pid and b"--socket" in argv:
                return argv[argv.index(b"--socket") + 1].decode()
        time.sleep(0.2)
    raise RuntimeError(f"cannot find the engine process of {srv.name}")


async def ipc_stream(sock: str, max_tokens: int, t0: float) -> Stream:
    """One generation straight through the engine's socket protocol, no HTTP gateway."""
    req = {"op": "generate", "kind": "chat", "max_tokens": max_tokens,
           "sampling": {"temperature": 0.0}, "stop": [], "messages": MESSAGES}
    st = Stream()
    parts: list[str] = []
    reader, writer = await asyncio.open_unix_connection(sock, limit=16 * 1024 * 1024)
    try:
        writer.write(orjson.dumps(req) + b"\n")
        await writer.drain()
        while True:
            line = await reader.readline()
            if not line:
                st.error = "engine closed the connection"
                break
            ev = orjson.loads(line)
            if ev["ev"] == "delta" and ev["text"]:
                if st.ttft_s is None:
                    st.ttft_s = time.perf_counter() - t0
                st.chunks += 1
                parts.append(ev["text"])
            elif ev["ev"] == "done":
                st.finish_reason = ev["finish_reason"]
                st.usage_tokens = int(ev["completion_tokens"])
                st.prompt_tokens = int(ev["prompt_tokens"])
                break
            elif ev["ev"] == "error":
                st.error = str(ev.get("message"))[:200]
                break
    finally:
        writer.close()
    st.total_s = time.perf_counter() - t0
    st.tokens = st.usage_tokens if st.usage_tokens is not None else st.chunks
    st.text = "".join(parts)
    return st


async def ipc_run(sock: str, system: str, n: int, max_tokens: int) -> Run:
    t0 = time.perf_counter()
    streams = await asyncio.gather(*(ipc_stream(sock, max_tokens, t0) for _ in range(n)))
    return Run(system, n, time.perf_counter() - t0, list(streams))


# --------------------------------------------------------------------------------------
# server-side view (our /metrics): where the TTFT goes
# --------------------------------------------------------------------------------------
def ttft_metric(srv: ServerProc) -> tuple[float, float]:
    """(sum seconds, count) of the gateway's own TTFT histogram."""
    text = httpx.get(srv.base + "/metrics", headers=srv.headers, timeout=5).text
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("autoglm_time_to_first_token_seconds_sum"):
            total = float(line.rsplit(" ", 1)[1])
        elif line.startswith("autoglm_time_to_first_token_seconds_count"):
            count = float(line.rsplit(" ", 1)[1])
    return total, count
