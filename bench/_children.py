"""Child processes for the benchmarks: each leads its own process group (so ``stop`` kills
all it started, uvicorn workers included), with readiness probes, log tails and the CPU
time of the whole group; the host's busy and stolen CPU between two readings."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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


def http_ok(url: str, headers: dict[str, str] | None = None) -> Callable[[], bool]:
    """A readiness probe: GET ``url`` answers 200."""
    return lambda: http("GET", url, headers=headers, timeout=2.0)[0] == 200


def listening(port: int) -> Callable[[], bool]:
    """A readiness probe: something accepts TCP connections on 127.0.0.1:``port``."""
    def probe() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=2.0):
            return True
    return probe


def group_cpu_s(pgid: int) -> float:
    """User + system CPU seconds of the live processes in group ``pgid`` (from /proc)."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                ticks += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile, or unreadable
    return ticks / os.sysconf("SC_CLK_TCK")


class Child:
    """A child process leading its own process group; ``stop`` kills the whole group."""

    def __init__(self, name: str, argv: list[str], logs: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name, self.argv = name, argv
        self.stdout, self.stderr = logs / f"{name}.out", logs / f"{name}.err"
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

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, probe: Callable[[], bool], timeout_s: float = 60.0) -> None:
        """Wait until ``probe()`` is true; fail early when the process exits."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                code = self.proc.returncode if self.proc is not None else None
                raise RuntimeError(f"{self.name} exited with {code}:\n{self.tail()}")
            with contextlib.suppress(OSError):
                if probe():
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
        """CPU seconds of the whole process group (so uvicorn workers count too)."""
        return group_cpu_s(self.pid)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
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
