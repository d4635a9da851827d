"""A managed vLLM child's port taken by another process is detected, never routed to.

The child is the stand-in vLLM (``autoglm.devtools.standin``, which checks
``VLLM_API_KEY`` on ``/v1`` as ``vllm serve`` does) started by the real managed engine;
the "foreign" process is a plain HTTP server that answers 200 to everything and records
what it was sent. The port picker is the engine's seam to put the child on the foreign
server's port, as a race between pick and start would.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from autoglm.engine.base import Delta
from autoglm.engine.vllm.gpus import Gpu
from autoglm.engine.vllm.managed import PORT_ATTEMPTS, ManagedVllmEngine
from autoglm.engine.vllm.ports import (
    ListenerCheck,
    PortTakenError,
    free_port,
    key_proof,
)
from autoglm.errors import AutoGLMError
from autoglm.pipeline.request import InferenceRequest
from autoglm.settings import Settings

GPU = [[Gpu(0, "NVIDIA H100 80GB HBM3", 70000, 81559)]]
CHAT = {"model": "qwen", "messages": [{"role": "user", "content": "hi"}]}


class Foreign:
    """Someone else's OpenAI-ish server: 200 to every request, each one recorded."""

    def __init__(self, port: int = 0) -> None:
        seen: list[tuple[str, str, str | None]] = []
        self.seen = seen

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                if n:
                    self.rfile.read(n)
                seen.append((self.command, self.path, self.headers.get("authorization")))
                body = (b'{"object":"list","data":[{"id":"qwen","object":"model"}],'
                        b'"choices":[{"index":0,"message":{"role":"assistant",'
                        b'"content":"foreign"},"finish_reason":"stop"}]}')
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args: object) -> None:
                pass

        deadline = time.monotonic() + 5
        while True:  # a port a killed child held is free again within moments
            try:
                self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.005)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def vllm(tmp_path: Path) -> Path:
    exe = tmp_path / "vllm"
    exe.write_text(f"#!/bin/sh\nexec {sys.executable} -m autoglm.devtools.standin "
                   "--name vllm \"$@\"\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe


@pytest.fixture
def foreign() -> Iterator[Foreign]:
    f = Foreign()
    yield f
    f.stop()


def engine_for(tmp_path: Path, vllm: Path, pick_port: Callable[[], int]) -> ManagedVllmEngine:
    model_dir = tmp_path / "Qwen2.5-7B-Instruct"
    model_dir.mkdir(exist_ok=True)
    settings = Settings(data_dir=tmp_path / "data", engine="vllm", vllm_executable=str(vllm),
                        vllm_start_timeout_s=20, engine_restart_backoff_min_s=0.3)
    return ManagedVllmEngine(settings, model_dir, "qwen", GPU, pick_port=pick_port)


def picks(*first: int) -> Callable[[], int]:
    queue = list(first)
    return lambda: queue.pop(0) if queue else free_port()


async def chat(engine: ManagedVllmEngine) -> str:
    text = ""
    async for ev in engine.generate(InferenceRequest("chat", body=dict(CHAT))):
        if isinstance(ev, Delta):
            text += ev.text
    return text


def exited(pid: int) -> bool:
    """A zombie (exited, not yet collected) or gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2:].split()[0] == "Z"


def child_stats(port: int) -> dict:
    return httpx.get(f"http://127.0.0.1:{port}/_stats", timeout=2, trust_env=False).json()


async def test_a_port_taken_before_the_child_starts_is_never_routed_to(
        tmp_path: Path, vllm: Path, foreign: Foreign, caplog: pytest.LogCaptureFixture) -> None:
    engine = engine_for(tmp_path, vllm, picks(foreign.port))
    child = engine.children[0]
    assert child.port == foreign.port  # the race, as it would happen
    with caplog.at_level(logging.ERROR, logger="autoglm.vllm"):
        await engine.start()
    try:
        inst = engine.router.instances[0]
        assert child.port != foreign.port
        assert inst.url == f"http://127.0.0.1:{child.port}/v1"
        assert engine.spec.instances[0].url == inst.url  # what gateway workers are given
        assert await chat(engine) == "Hello!"  # the stand-in child's answer
        stats = child_stats(child.port)
        assert stats["pid"] == engine.supervisors[child.name].pid
        assert stats["requests"] == 1 and stats["last_authorization"] == f"Bearer {child.api_key}"
        assert foreign.seen == []  # not a probe, not a request, not the key
        taken = [r.getMessage() for r in caplog.records if "is held by" in r.getMessage()]
        assert len(taken) == 1
        assert f"port {foreign.port}" in taken[0] and f"process {os.getpid()}" in taken[0]
        assert f"port {foreign.port}" in engine.describe(with_url=True)[0]["last_error"]
    finally:
        await engine.close()


async def test_a_port_taken_while_the_child_restarts_is_never_routed_to(
        tmp_path: Path, vllm: Path) -> None:
    engine = engine_for(tmp_path, vllm, free_port)
    await engine.start()
    foreign: Foreign | None = None
    try:
        child, sup = engine.children[0], engine.supervisors["vllm-0"]
        old_port, old_pid = child.port, sup.pid
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)
        foreign = Foreign(old_port)  # takes the port before the restart (0.3 s later) does
        while not exited(old_pid):
            time.sleep(0.001)  # the kernel finishes the exit (the event loop has not seen it)
        answers = []
        deadline = time.monotonic() + 20
        while not (sup.state == "ready" and sup.pid != old_pid) and time.monotonic() < deadline:
            try:  # clients keep asking meanwhile: refused, never sent to the foreign server
                answers.append(await chat(engine))
            except AutoGLMError:
                pass
            await asyncio.sleep(0.02)
        assert sup.state == "ready" and sup.pid != old_pid, "the child did not come back"
        assert child.port != old_port
        assert await chat(engine) == "Hello!"
        assert set(answers) <= {"Hello!"}
        assert foreign.seen == []
    finally:
        await engine.close()
        if foreign is not None:
            foreign.stop()


async def test_a_port_taken_at_every_attempt_fails_the_start_naming_it(
        tmp_path: Path, vllm: Path) -> None:
    squatters = [Foreign() for _ in range(PORT_ATTEMPTS)]
    try:
        engine = engine_for(tmp_path, vllm, picks(*(f.port for f in squatters)))
        with pytest.raises(PortTakenError, match=f"port {squatters[-1].port} .* process "
                                                 f"{os.getpid()}"):
            await engine.start()
        assert engine.supervisors["vllm-0"].pid is None  # no child left behind
        assert all(f.seen == [] for f in squatters)
    finally:
        for f in squatters:
            f.stop()


LISTENER = """import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # as vllm serve binds its port
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
time.sleep(60)
"""


def test_only_the_child_and_its_own_processes_may_listen_on_its_port() -> None:
    port = free_port()
    # sh stays the parent (no exec): the listener is the child's child, as vLLM's may be
    proc = subprocess.Popen(["/bin/sh", "-c", f'{sys.executable} -c "$0" {port}; :', LISTENER],
                            start_new_session=True)
    check = ListenerCheck()
    try:
        deadline = time.monotonic() + 10
        while (verdict := check(port, proc.pid)).state == "none" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert verdict.state == "ours"
        with socket.socket() as other:  # someone joins the port (same user, SO_REUSEPORT)
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            other.bind(("127.0.0.1", port))
            other.listen()
            verdict = check(port, proc.pid)
        assert (verdict.state, verdict.pid) == ("foreign", os.getpid())
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


async def test_without_proc_the_childs_key_is_the_proof(tmp_path: Path, foreign: Foreign) -> None:
    key = "k-" + "x" * 40
    assert await key_proof(foreign.port, key) == "foreign"
    assert foreign.seen == [("GET", "/v1/models", None)]  # asked without the key only
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "autoglm.devtools.standin", "--port", str(port)],
        env={**os.environ, "VLLM_API_KEY": key}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while (proof := await key_proof(port, key)) == "not_yet" and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert proof == "ours"
        assert await key_proof(port, "another-key") == "foreign"  # checks keys, not ours
    finally:
        proc.kill()
        proc.wait(5)
