"""Run `autoglm serve` as a real subprocess and talk to it over real sockets.

Everything here is bounded in time: starting waits for ``/readyz`` with a deadline,
stopping sends SIGTERM and waits with a deadline (then SIGKILL and a failure), and
every HTTP client has a timeout.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

MODEL = "smollm2-135m-instruct"
ADMIN_KEY = "e2e-admin-key-7f3a9c-0123456789abcdef-0123"
# The venv's console script; the engine child runs with the same interpreter.
AUTOGLM = Path(sys.executable).with_name("autoglm")

START_DEADLINE_S = 120.0  # loading the model can be slow on a busy, shared machine
STOP_DEADLINE_S = 30.0
HTTP_TIMEOUT_S = 30.0

_METRIC_LINE = re.compile(
    r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)$'
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(**extra: str) -> dict[str, str]:
    """An explicit environment: nothing AUTOGLM_* leaks in from the caller."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "AUTOGLM_ADMIN_KEY": ADMIN_KEY,
        # One decode thread: on a small shared machine, llama.cpp threads that spin on a
        # barrier while another process holds a core make decoding several times slower.
        "AUTOGLM_N_THREADS": "1",
        "AUTOGLM_LOG_LEVEL": "info",
    }
    env.update(extra)
    return env


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    m = re.search(r"^State:\s+(\S)", state, re.M)
    return bool(m) and m.group(1) not in ("Z", "X")


class ServerProcess:
    """One `autoglm serve` subprocess on a free port, with its stderr in a file."""

    def __init__(
        self,
        workdir: Path,
        *,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        tls: tuple[Path, Path] | None = None,
        verify: ssl.SSLContext | bool = True,
        name: str = "server",
        executable: Path = AUTOGLM,
        grpc: bool = False,
    ) -> None:
        self.workdir = workdir
        self.grpc = grpc  # also serve gRPC, on a free port of its own (grpc_target)
        self.grpc_port = 0
        self.executable = executable
        self.name = name
        self.extra_args = list(args or [])
        self.env = base_env(**(env or {}))
        self.tls = tls
        self.verify = verify
        self.key = self.env["AUTOGLM_ADMIN_KEY"]
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr_path = workdir / f"{name}.stderr.log"
        self.stdout_path = workdir / f"{name}.stdout.log"
        self.engine_pids: set[int] = set()
        self.returncode: int | None = None

    # --- addresses -------------------------------------------------------------------
    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def host(self) -> str:
        return "localhost" if self.tls else "127.0.0.1"

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def api_base(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def grpc_target(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    # --- lifecycle -------------------------------------------------------------------
    def start(self) -> ServerProcess:
        last_error = ""
        for _attempt in range(3):  # a free port can be taken between probe and bind
            self.port = free_port()
            self._spawn()
            try:
                self._wait_ready()
                return self
            except _PortTaken as exc:
                last_error = str(exc)
                continue
        raise RuntimeError(f"could not bind a free port three times: {last_error}")

    def _spawn(self) -> None:
        argv = [str(self.executable), "serve", "--host", "127.0.0.1", "--port", str(self.port),
                "--data-dir", str(self.workdir / "data"), *self.extra_args]
        if self.grpc:
            self.grpc_port = free_port()
            argv += ["--grpc-port", str(self.grpc_port)]
        if self.tls:
            argv += ["--ssl-certfile", str(self.tls[0]), "--ssl-keyfile", str(self.tls[1])]
        with self.stderr_path.open("ab") as err, self.stdout_path.open("ab") as out:
            err.write(f"\n===== start: {' '.join(argv)}\n".encode())
            err.flush()
            self.proc = subprocess.Popen(
                argv, env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                cwd=self.workdir, start_new_session=True,
            )

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_DEADLINE_S
        with self.client(auth=True, timeout=2.0) as http:
            while time.monotonic() < deadline:
                code = self.proc.poll()
                if code is not None:
                    tail = self.stderr_tail()
                    low = tail.lower()
                    if "address already in use" in low or "errno 98" in low or (
                            "cannot serve grpc" in low):
                        raise _PortTaken(tail[-500:])
                    raise RuntimeError(
                        f"`autoglm serve` ({self.name}) exited with status {code} while "
                        f"starting; stderr:\n{tail}"
                    )
                try:
                    r = http.get("/readyz")
                    if r.status_code == 200:
                        self._remember_pid(r.json())
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        tail = self.stderr_tail()
        self.stop(check=False)
        raise RuntimeError(
            f"`autoglm serve` ({self.name}) not ready within {START_DEADLINE_S:g} s; "
            f"stderr:\n{tail}"
        )

    def stop(self, check: bool = True) -> None:
        """SIGTERM, wait; the gateway must exit on its own and take its engine with it."""
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        killed = False
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
                killed = True
        self.returncode = proc.returncode
        # The engine is its own session; it must be gone once the gateway is.
        leftover: list[int] = []
        deadline = time.monotonic() + 10.0
        for pid in self.engine_pids:
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                leftover.append(pid)
                os.kill(pid, signal.SIGKILL)  # an engine this fixture started
        if not check:
            return
        assert not killed, (
            f"`autoglm serve` ({self.name}) did not exit within {STOP_DEADLINE_S:g} s of "
            f"SIGTERM; stderr:\n{self.stderr_tail()}"
        )
        assert not leftover, f"engine process(es) {leftover} outlived the gateway"
        # uvicorn re-raises the signal it handled once shutdown is complete, so a clean
        # exit after SIGTERM reads as -SIGTERM (or 0 with older uvicorn versions).
        assert self.returncode in (0, -signal.SIGTERM), (
            f"`autoglm serve` ({self.name}) exited with status {self.returncode}; "
            f"stderr:\n{self.stderr_tail()}"
        )

    def stderr_tail(self, chars: int = 8000) -> str:
        try:
            data = self.stderr_path.read_bytes()
        except FileNotFoundError:
            return "<no stderr file>"
        return data[-chars:].decode("utf-8", "replace")

    # --- clients -----------------------------------------------------------------------
    def client(self, *, auth: bool = False, timeout: float = HTTP_TIMEOUT_S,
               **kw: Any) -> httpx.Client:
        headers = dict(self.auth) if auth else {}
        headers.update(kw.pop("headers", {}))
        kw.setdefault("trust_env", False)  # no proxy from the environment for localhost
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout,
                            verify=kw.pop("verify", self.verify), **kw)

    def async_client(self, *, auth: bool = False, timeout: float = HTTP_TIMEOUT_S,
                     **kw: Any) -> httpx.AsyncClient:
        headers = dict(self.auth) if auth else {}
        headers.update(kw.pop("headers", {}))
        kw.setdefault("trust_env", False)
        return httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout,
                                 verify=kw.pop("verify", self.verify), **kw)

    def openai(self, **kw: Any):  # -> openai.OpenAI
        import openai

        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", HTTP_TIMEOUT_S)
        kw.setdefault("api_key", self.key)
        if "http_client" not in kw:
            kw["http_client"] = openai.DefaultHttpxClient(trust_env=False, verify=self.verify)
        return openai.OpenAI(base_url=self.api_base, **kw)

    def async_openai(self, **kw: Any):  # -> openai.AsyncOpenAI
        import openai

        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", HTTP_TIMEOUT_S)
        kw.setdefault("api_key", self.key)
        if "http_client" not in kw:
            kw["http_client"] = openai.DefaultAsyncHttpxClient(trust_env=False,
                                                               verify=self.verify)
        return openai.AsyncOpenAI(base_url=self.api_base, **kw)

    # --- probes ------------------------------------------------------------------------
    def readyz(self) -> tuple[int, dict[str, Any]]:
        with self.client(auth=True, timeout=5.0) as http:  # the details need a key
            r = http.get("/readyz")
        body = r.json()
        self._remember_pid(body)
        return r.status_code, body

    def engine_check(self) -> dict[str, Any]:
        return self.readyz()[1]["checks"][MODEL]

    def _remember_pid(self, body: dict[str, Any]) -> None:
        pid = body.get("checks", {}).get(MODEL, {}).get("pid")
        if isinstance(pid, int):
            self.engine_pids.add(pid)

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        with self.client(auth=True, timeout=5.0) as http:
            r = http.get("/metrics")
        assert r.status_code == 200, r.text
        return parse_metrics(r.text)

    def metric(self, name: str, **labels: str) -> float | None:
        want = frozenset(labels.items())
        for (n, ls), value in self.metrics().items():
            if n == name and want <= ls:
                return value
        return None


class _PortTaken(RuntimeError):
    pass


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _METRIC_LINE.match(line.strip())
        if not m:
            continue
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group("labels") or ""))
        out[(m.group("name"), labels)] = float(m.group("value"))
    return out


def assert_openai_error(
    response: httpx.Response, status: int, code: str | None = None, type_: str | None = None
) -> dict[str, Any]:
    """The response is ``status`` with exactly the OpenAI error shape; returns ``error``."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers.get("content-type", "").startswith("application/json"), (
        response.headers
    )
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    assert isinstance(err, dict), body
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"].strip(), err
    assert isinstance(err["type"], str) and err["type"], err
    assert err["param"] is None or isinstance(err["param"], str), err
    assert err["code"] is None or isinstance(err["code"], str), err
    # Nothing internal leaks into what a client sees.
    assert "Traceback" not in err["message"], err
    if code is not None:
        assert err["code"] == code, err
    if type_ is not None:
        assert err["type"] == type_, err
    return err


def sse_events(lines) -> list[Any]:
    """Parse `data:` lines of an SSE body into JSON objects (and the string '[DONE]')."""
    import json

    out: list[Any] = []
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[len("data:"):].strip()
        out.append(data if data == "[DONE]" else json.loads(data))
    return out
