"""``autoglm serve --workers N``: N gateway processes on one port, one set of engines.

The main process applies the migrations and creates the admin key (once), starts and
supervises every engine child (one llama.cpp engine per model, however many workers),
binds the port, and starts N workers (``worker.py``) that inherit the listening socket;
the kernel spreads connections across them. A worker that dies is started again; a
SIGTERM or SIGINT stops the workers gracefully, then the engines.

What each worker keeps to itself: the key cache (2 s, as across replicas), the fair
queue in front of each engine (the engine itself queues what several workers admit
together), counters on ``/metrics``, and run-time instance changes through the admin
API, which apply to the worker that received them (put lasting changes in the settings
file).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import orjson

from autoglm.engine.factory import build_engines
from autoglm.errors import AutoGLMError, ConfigError
from autoglm.security.auth import bootstrap
from autoglm.serving.server import Announce, listening_socket
from autoglm.settings import Settings, revealed
from autoglm.store.db import Database, database_url

log = logging.getLogger("autoglm.workers")

RESTART_DELAY_S = 1.0
STOP_TIMEOUT_S = 15.0


class WorkerPool:
    def __init__(self, count: int, fd: int, payload: bytes) -> None:
        self.count = count
        self.fd = fd
        self.payload = payload
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.stopping = False

    async def spawn(self, index: int) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "autoglm.serving.worker", "--fd", str(self.fd),
            "--index", str(index), stdin=subprocess.PIPE, pass_fds=(self.fd,))
        if proc.stdin is None:
            raise RuntimeError("worker stdin missing")
        proc.stdin.write(self.payload)
        await proc.stdin.drain()
        proc.stdin.close()
        self.procs[index] = proc

    async def supervise(self, index: int) -> None:
        """Keep worker ``index`` running until the pool stops."""
        while not self.stopping:
            proc = self.procs[index]
            rc = await proc.wait()
            if self.stopping:
                return
            log.error("gateway worker exited; starting it again",
                      extra={"worker": index, "returncode": rc})
            await asyncio.sleep(RESTART_DELAY_S)
            if not self.stopping:
                await self.spawn(index)

    async def stop(self) -> None:
        self.stopping = True
        for proc in self.procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs.values()]


def run_workers(settings: Settings, announce: Announce, ready: Callable[[], None]) -> bool:
    return asyncio.run(_serve(settings, announce, ready))


async def _serve(settings: Settings, announce: Announce, ready: Callable[[], None]) -> bool:
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    db = Database(database_url(settings))
    try:
        db.upgrade()
        bootstrap(settings, announce, db)  # the admin key is made (and shown) once, here
    finally:
        db.close()
    run_dir = Path(tempfile.mkdtemp(prefix="autoglm-"))
    engines = build_engines(settings, run_dir)
    pool: WorkerPool | None = None
    try:
        try:
            await asyncio.gather(*(e.start() for e in engines.values()))
        except (AutoGLMError, RuntimeError, OSError) as exc:
            raise ConfigError(f"engine failed to start: {exc}") from exc
        try:
            sock = listening_socket(settings.host, settings.port)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {settings.host}:{settings.port}: "
                              f"{exc.strerror}") from None
        payload = orjson.dumps({"settings": revealed(settings),
                                "engines": [e.attach_spec() for e in engines.values()]})
        pool = WorkerPool(settings.workers, sock.fileno(), payload)
        for i in range(settings.workers):
            await pool.spawn(i)
        log.info("gateway workers started", extra={"workers": pool.pids,
                                                    "models": list(engines)})
        ready()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        watchers = [asyncio.create_task(pool.supervise(i)) for i in range(settings.workers)]
        await stop.wait()
        log.info("stopping gateway workers")
        await pool.stop()
        for w in watchers:
            w.cancel()
        sock.close()
        return True
    finally:
        if pool is not None and not pool.stopping:
            await pool.stop()
        await asyncio.gather(*(e.close() for e in engines.values()), return_exceptions=True)
        shutil.rmtree(run_dir, ignore_errors=True)
