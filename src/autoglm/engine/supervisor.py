"""Start, watch and restart an engine child process.

The child runs in its own session (a Ctrl-C at the terminal reaches the gateway, which
then stops the child in order). When the child dies unexpectedly it is restarted after
a delay that doubles from ``backoff_min`` up to ``backoff_max``; the delay resets once a
child has stayed up for a minute. ``retry_after`` tells clients how long to wait.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal

from autoglm.errors import AutoGLMError

log = logging.getLogger("autoglm.supervisor")

State = Literal["starting", "ready", "down", "stopped"]
STABLE_AFTER_S = 60.0


class ProcessSupervisor:
    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        probe: Callable[[], Awaitable[bool]],
        *,
        start_timeout_s: float,
        backoff_min_s: float,
        backoff_max_s: float,
        env: dict[str, str] | None = None,
        before_spawn: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``before_spawn``: awaited before every (re)start; raising stops that start
        (e.g. the model's files no longer hash right)."""
        self.name = name
        self.argv = list(argv)
        self.probe = probe
        self.start_timeout_s = start_timeout_s
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.env = env
        self.before_spawn = before_spawn
        self.state: State = "stopped"
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.last_exit: int | None = None
        self.next_start_at: float | None = None
        self._backoff = backoff_min_s
        self._started_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._ready = asyncio.Event()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc and self.proc.returncode is None else None

    def retry_after(self) -> float:
        """Seconds a client should wait before trying again (at least 1)."""
        if self.next_start_at is not None:
            return max(1.0, self.next_start_at - time.monotonic() + 1.0)
        return 1.0

    async def start(self) -> None:
        """Start the child and wait until it is ready; raise if the first start fails."""
        self._stopping = False
        await self._spawn_and_wait()
        self._task = asyncio.create_task(self._watch(), name=f"supervise-{self.name}")

    async def wait_ready(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def _spawn_and_wait(self) -> None:
        self.state = "starting"
        self._ready.clear()
        if self.before_spawn is not None:
            await self.before_spawn()
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True,
            env=self.env,
        )
        self._started_at = time.monotonic()
        deadline = self._started_at + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise RuntimeError(
                    f"engine {self.name} exited with status {self.proc.returncode} while starting"
                )
            if await self.probe():
                self.state = "ready"
                self.next_start_at = None
                self._ready.set()
                log.info("engine ready", extra={"engine": self.name, "pid": self.proc.pid})
                return
            await asyncio.sleep(0.05)
        await self._kill()
        raise RuntimeError(f"engine {self.name} was not ready within {self.start_timeout_s:g} s")

    async def _watch(self) -> None:
        while not self._stopping:
            proc = self.proc
            if proc is None:
                return
            code = await proc.wait()
            if self._stopping:
                return
            self.state = "down"
            self._ready.clear()
            self.last_exit = code
            if time.monotonic() - self._started_at >= STABLE_AFTER_S:
                self._backoff = self.backoff_min_s
            delay = self._backoff
            self._backoff = min(self._backoff * 2, self.backoff_max_s)
            self.next_start_at = time.monotonic() + delay
            log.error(
                "engine process exited; restarting",
                extra={"engine": self.name, "exit_code": code, "restart_in_s": round(delay, 2)},
            )
            await asyncio.sleep(delay)
            if self._stopping:
                return
            self.restarts += 1
            try:
                await self._spawn_and_wait()
            except (RuntimeError, OSError, AutoGLMError) as exc:
                reason = exc.message if isinstance(exc, AutoGLMError) else str(exc)
                log.error("engine restart failed", extra={"engine": self.name, "reason": reason})
                self.state = "down"
                await self._kill()

    async def _kill(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        try:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 10)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
        except ProcessLookupError:
            pass

    async def close(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
        await self._kill()
        self.state = "stopped"


def python_argv(module: str, *args: str) -> list[str]:
    """argv that runs ``module`` with this interpreter, unbuffered."""
    return [sys.executable, "-u", "-m", module, *args, "--parent-pid", str(os.getpid())]
