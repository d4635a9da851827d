"""The stand-in hub (``autoglm.devtools.hub``) as a real process on 127.0.0.1, for tests."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.support import free_port

REPO = "acme/tiny-model"


def make_repo(root: Path, repo: str = REPO, *, big: int = 3 << 20) -> dict[str, bytes]:
    """A repository with an LFS file (``big`` random bytes), a small file and a nested one."""
    files = {
        "config.json": b'{"architectures": ["Tiny"], "hidden_size": 8}\n',
        "tiny.Q4_0.gguf": os.urandom(big),
        "tokenizer/vocab.txt": b"".join(b"tok%d\n" % i for i in range(500)),
    }
    for rel, data in files.items():
        path = root / repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class HubProcess:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.other_port = free_port()  # a second listener: another origin on the same host
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "autoglm.devtools.hub", "--root", str(root),
             "--port", str(self.port), "--also-port", str(self.other_port)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{self.url}/_stats", timeout=2)
                return
            except httpx.TransportError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("the stand-in hub did not start") from None
                time.sleep(0.05)

    def control(self, **conf: Any) -> None:
        httpx.post(f"{self.url}/_control", json=conf, timeout=5).raise_for_status()

    def requests(self, path: str | None = None) -> list[dict[str, Any]]:
        reqs = httpx.get(f"{self.url}/_stats", timeout=5).json()["requests"]
        return [r for r in reqs if path is None or r["path"] == path]

    def seen(self) -> list[dict[str, Any]]:
        """Every request but /_control and /_stats: ``at`` (address reached), ``method``,
        ``path`` and the ``authorization`` header it carried (None when it had none)."""
        return httpx.get(f"{self.url}/_stats", timeout=5).json()["seen"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
