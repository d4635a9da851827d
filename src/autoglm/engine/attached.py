"""An engine process started by another process, watched from a gateway worker.

With ``--workers N`` the main process starts and supervises every engine child once;
each gateway worker reaches the same children over their Unix sockets. In a worker this
object stands where a ``ProcessSupervisor`` stands in a single-process server (same
``state``, ``pid``, ``restarts``, ``retry_after``), but it only watches: it probes the
engine every ``interval_s`` and counts a new process id as a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Literal

from autoglm.errors import ConfigError

State = Literal["starting", "ready", "down", "stopped"]


class AttachedProcess:
    def __init__(self, name: str, probe: Callable[[], Awaitable[int | None]], *,
                 start_timeout_s: float, interval_s: float = 1.0) -> None:
        self.name = name
        self.probe = probe  # the engine's pid if it answers, else None
        self.start_timeout_s = start_timeout_s
        self.interval_s = interval_s
        self.state: State = "stopped"
        self.restarts = 0
        self.last_exit: int | None = None  # known to the main process only
        self._pid: int | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self._pid if self.state == "ready" else None

    def retry_after(self) -> float:
        return 1.0

    async def start(self) -> None:
        self.state = "starting"
        deadline = time.monotonic() + self.start_timeout_s
        while not await self._check():
            if time.monotonic() > deadline:
                raise ConfigError(f"engine {self.name} did not answer within "
                                  f"{self.start_timeout_s:g} s")
            await asyncio.sleep(0.1)
        self._task = asyncio.create_task(self._watch(), name=f"watch-{self.name}")

    async def _check(self) -> bool:
        pid = await self.probe()
        if pid is None:
            if self.state == "ready":
                self.state = "down"
            return False
        if self._pid is not None and pid != self._pid:
            self.restarts += 1
        self._pid = pid
        self.state = "ready"
        return True

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self._check()

    async def close(self) -> None:
        self.state = "stopped"
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
