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

Rounds are interleaved (every system once per round, order rotated) and medians are
reported, because a shared machine is noisy; targets use the median of per-round
ratios. Tokens are counted from ``usage`` where the API reports it (ours), else as
streamed content chunks (llama.cpp yields one chunk per token), and tokens/s always uses
the tokens actually received.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import llama_cpp
import orjson
from jinja2.sandbox import ImmutableSandboxedEnvironment

from autoglm.engine.catalog import embedded_model_path
from autoglm.settings import EMBEDDED_MODEL_ID

ROOT = Path(__file__).resolve().parent.parent
PROMPT = (
    "Write a long, detailed essay about the history of the Roman Empire, "
    "from its founding to its fall."
)
MESSAGES = [{"role": "user", "content": PROMPT}]
ADMIN_KEY = "bench-serving-admin-key"
N_BATCH = 512
REQUEST_TIMEOUT_S = 180.0

# Targets (see bench/README.md).
T_ONE_STREAM_TPS = 0.95  # our tokens/s >= 95% of raw in-process
T_ONE_STREAM_TTFT_MS = 15.0  # our TTFT <= raw TTFT + 15 ms
T_BATCH_VS_DIRECT = 0.90  # 8 streams aggregate >= 90% of direct batched decode
T_BATCH_VS_LLAMA_SERVER = 1.5  # 8 streams aggregate >= 1.5x llama_cpp.server


# --------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------
@dataclass
class Stream:
    """One generation as a client saw it."""

    ttft_s: float | None = None  # request sent -> first non-empty content
    total_s: float = 0.0  # request sent -> end of stream
    tokens: int = 0  # completion tokens (usage when reported, else content chunks)
    chunks: int = 0  # content chunks received
    usage_tokens: int | None = None
    prompt_tokens: int | None = None  # from usage, where reported
    finish_reason: str | None = None  # None: the stream ended without one (cut short)
    error: str | None = None
    text: str = ""


@dataclass
class Run:
    """N concurrent streams against one system."""

    system: str
    n: int
    wall_s: float
    streams: list[Stream] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.streams)

    @property
    def tps(self) -> float:
        return self.tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def ttfts_ms(self) -> list[float]:
        return [s.ttft_s * 1e3 for s in self.streams if s.ttft_s is not None]

    def summary(self) -> dict[str, Any]:
        return {
            "system": self.system, "n": self.n, "wall_s": round(self.wall_s, 4),
            "tokens": self.tokens, "tokens_per_s": round(self.tps, 2),
            "ttft_ms": [round(x, 2) for x in self.ttfts_ms],
            "streams": [
                {k: v for k, v in asdict(s).items() if k != "text"} | {"text_head": s.text[:60]}
                for s in self.streams
            ],
        }


def pct(values: list[float], q: float) -> float | None:
    """Percentile with linear interpolation (q in 0..100)."""
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


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
        self.proc: subprocess.Popen | None = None
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
    assert srv.proc is not None
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
# in-process baselines
# --------------------------------------------------------------------------------------
@llama_cpp.llama_log_callback
def _quiet_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    pass


class RawLlama:
    """High-level ``llama_cpp.Llama``: the single-stream reference."""

    def __init__(self, model_path: Path, ctx: int, threads: int) -> None:
        self.llm = llama_cpp.Llama(
            str(model_path), n_ctx=ctx, n_batch=N_BATCH, n_ubatch=N_BATCH, n_threads=threads,
            n_threads_batch=threads, flash_attn=True, n_gpu_layers=0, verbose=False,
        )

    def run(self, max_tokens: int) -> Run:
        # Forget the previous prompt, or Llama would reuse its KV prefix and skip prefill.
        self.llm.reset()
        st = Stream()
        parts: list[str] = []
        t0 = time.perf_counter()
        for chunk in self.llm.create_chat_completion(
            messages=MESSAGES, max_tokens=max_tokens, temperature=0, stream=True
        ):
            ch = chunk["choices"][0]
            text = ch["delta"].get("content")
            if text:
                if st.ttft_s is None:
                    st.ttft_s = time.perf_counter() - t0
                st.chunks += 1
                parts.append(text)
            if ch.get("finish_reason"):
                st.finish_reason = ch["finish_reason"]
        st.total_s = time.perf_counter() - t0
        st.tokens = st.chunks
        st.text = "".join(parts)
        return Run("raw llama_cpp.Llama", 1, st.total_s, [st])

    def close(self) -> None:
        self.llm.close()


class DirectBatched:
    """llama.cpp batched decode through the low-level API, context set up like the engine.

    N sequences with the same prompt: prompts are prefilled together, then each step
    puts one token per sequence into a single ``llama_decode``; greedy sampling.
    """

    def __init__(self, model_path: Path, slots: int, ctx_per_slot: int, threads: int,
                 ignore_eos: bool) -> None:
        llama_cpp.llama_log_set(_quiet_log, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = 0
        self.model = llama_cpp.llama_model_load_from_file(str(model_path).encode(), mparams)
        if not self.model:
            raise RuntimeError(f"cannot load {model_path}")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = slots * ctx_per_slot
        cparams.n_batch = N_BATCH
        cparams.n_ubatch = N_BATCH
        cparams.n_seq_max = slots
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise RuntimeError("cannot create a llama.cpp context")
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self.slots = slots
        self.capacity = max(N_BATCH, slots)
        self.batch = llama_cpp.llama_batch_init(self.capacity, 0, 1)
        self.ignore_eos = ignore_eos
        self.prompt = self._chat_prompt()

    def _token_text(self, tok: int) -> str:
        buf = ctypes.create_string_buffer(256)
        n = llama_cpp.llama_token_to_piece(self.vocab, tok, buf, len(buf), 0, True)
        return buf.raw[: max(n, 0)].decode("utf-8", errors="replace")

    def _chat_prompt(self) -> list[int]:
        """The chat template from the GGUF, rendered as the engine renders it."""
        tmpl = llama_cpp.llama_model_chat_template(self.model, None)
        if not tmpl:
            raise RuntimeError("the model has no chat template")
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        text = env.from_string(tmpl.decode()).render(
            messages=MESSAGES, add_generation_prompt=True,
            bos_token=self._token_text(llama_cpp.llama_vocab_bos(self.vocab)),
            eos_token=self._token_text(llama_cpp.llama_vocab_eos(self.vocab)),
        )
        data = text.encode()
        buf = (llama_cpp.llama_token * (len(data) + 8))()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, len(buf), False, True)
        return list(buf[:n])

    def _add(self, tok: int, pos: int, seq: int, logits: bool) -> int:
        b, i = self.batch, self.batch.n_tokens
        b.token[i], b.pos[i], b.n_seq_id[i] = tok, pos, 1
        b.seq_id[i][0], b.logits[i] = seq, logits
        b.n_tokens = i + 1
        return i

    def run(self, n: int, max_tokens: int) -> Run:
        assert n <= self.slots
        llama_cpp.llama_memory_clear(self.mem, True)
        samplers = []
        for _ in range(n):
            chain = llama_cpp.llama_sampler_chain_init(
                llama_cpp.llama_sampler_chain_default_params())
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
            samplers.append(chain)
        prompt = self.prompt
        streams = [Stream() for _ in range(n)]
        fed = [0] * n
        pos = [0] * n
        last = [0] * n
        out_idx = [-1] * n
        active = [True] * n
        pieces: list[list[int]] = [[] for _ in range(n)]
        t0 = time.perf_counter()
        try:
            while any(active):
                self.batch.n_tokens = 0
                for s in range(n):  # one token per generating sequence
                    out_idx[s] = -1
                    if active[s] and fed[s] == len(prompt):
                        out_idx[s] = self._add(last[s], pos[s], s, True)
                        pos[s] += 1
                for s in range(n):  # then prompt chunks, as room allows
                    if not active[s] or fed[s] == len(prompt):
                        continue
                    take = min(len(prompt) - fed[s], self.capacity - self.batch.n_tokens)
                    for k in range(take):
                        is_last = fed[s] + k == len(prompt) - 1
                        i = self._add(prompt[fed[s] + k], pos[s], s, is_last)
                        pos[s] += 1
                        if is_last:
                            out_idx[s] = i
                    fed[s] += take
                rc = llama_cpp.llama_decode(self.ctx, self.batch)
                if rc != 0:
                    raise RuntimeError(f"llama_decode failed ({rc})")
                now = time.perf_counter()
                for s in range(n):
                    if out_idx[s] < 0:
                        continue
                    tok = llama_cpp.llama_sampler_sample(samplers[s], self.ctx, out_idx[s])
                    st = streams[s]
                    if st.ttft_s is None:
                        st.ttft_s = now - t0
                    if not self.ignore_eos and llama_cpp.llama_vocab_is_eog(self.vocab, tok):
                        st.finish_reason, st.total_s, active[s] = "stop", now - t0, False
                        continue
                    st.tokens += 1
                    pieces[s].append(tok)
                    last[s] = tok
                    if st.tokens >= max_tokens:
                        st.finish_reason, st.total_s, active[s] = "length", now - t0, False
            wall = time.perf_counter() - t0
        finally:
            for chain in samplers:
                llama_cpp.llama_sampler_free(chain)
            llama_cpp.llama_memory_clear(self.mem, True)
        for s, st in enumerate(streams):
            st.chunks = st.tokens
            st.text = "".join(self._token_text(t) for t in pieces[s][:20])
        return Run("direct batched decode", n, wall, streams)

    def close(self) -> None:
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)
        llama_cpp.llama_model_free(self.model)


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


# --------------------------------------------------------------------------------------
# the benchmark
# --------------------------------------------------------------------------------------
OURS = "autoglm (HTTP)"
ENGINE = "autoglm engine (IPC)"  # diagnostic: our engine process without the HTTP gateway
RAW = "raw llama_cpp.Llama"
LCS = "llama_cpp.server (HTTP)"
DIRECT = "direct batched decode"


def part_a(args: argparse.Namespace, model_path: Path, tmp: Path, log) -> dict[str, Any]:
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
        assert srv.proc is not None
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


def part_b(args: argparse.Namespace, model_path: Path, tmp: Path, log) -> dict[str, Any]:
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
            assert srv is not None
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


def targets(a: dict[str, Any] | None, b: dict[str, Any] | None, n_max: int) -> list[dict]:
    """Each target judged on the median of per-round ratios (runs adjacent in time)."""
    out = []

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
    p.add_argument("--only", choices=["a", "b"], help="run one part only")
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
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    result["targets"] = targets(result.get("one_stream"), result.get("concurrent"),
                                max(args.concurrency))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    render(result)
    print(f"\nwrote {args.out} ({result['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
