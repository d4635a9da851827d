"""A stand-in OpenAI upstream as a real process (``autoglm.devtools.standin``), for tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.support import free_port


class Standin:
    def __init__(self, name: str, workdir: Path, port: int | None = None) -> None:
        self.name = name
        self.port = port or free_port()
        self.log = workdir / f"standin-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> Standin:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "autoglm.devtools.standin", "--port", str(self.port),
                 "--name", self.name], stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/_stats", timeout=0.5, trust_env=False)
                return self
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"stand-in {self.name} did not start")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def control(self, **conf: Any) -> None:
        httpx.post(f"http://127.0.0.1:{self.port}/_control", json=conf, timeout=2,
                   trust_env=False).raise_for_status()

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"http://127.0.0.1:{self.port}/_stats", timeout=2,
                         trust_env=False).json()
