"""Managed vLLM: ``autoglm serve --engine vllm --model-path DIR``.

Starts one ``vllm serve`` child per GPU (or per group of ``vllm_tensor_parallel`` GPUs),
placed on the GPUs with the most free memory through ``CUDA_VISIBLE_DEVICES``; waits
until each answers ``/health`` on a socket that it is proven to own (a port that another
process took between pick and start is detected, logged with its holder's pid, and the
child moved to a new port: ``ports.py``); restarts a crashed one with backoff (the same
supervisor as the embedded engine); stops them all on shutdown. In front of them is the
ordinary upstream router, so requests only go to children that are up.

vLLM is an optional extra (``pip install 'autoglm[vllm]'``). Without it, or without a
GPU, ``plan`` says so; the app factory then falls back to llama.cpp for a GGUF model
unless ``vllm_fallback`` is off.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

from autoglm.engine.base import EngineHealth
from autoglm.engine.supervisor import ProcessSupervisor
from autoglm.engine.upstream.client import UpstreamEngine
from autoglm.engine.vllm.gpus import Gpu, discover, place
from autoglm.engine.vllm.ports import (
    ListenerCheck,
    PortTakenError,
    free_port,
    health,
    key_proof,
)
from autoglm.errors import ConfigError, IntegrityError
from autoglm.settings import InstanceSpec, ModelSpec, Settings
from autoglm.supply.integrity import VerifiedTree

log = logging.getLogger("autoglm.vllm")


@dataclass
class Child:
    name: str
    port: int  # moves when another process holds it (engine/vllm/ports.py)
    gpus: list[Gpu]
    api_key: str  # random, per child: other local processes cannot use it


def child_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/v1"


PORT_ATTEMPTS = 3  # first start: ports tried per child before giving up


def child_env(child: Child) -> dict[str, str]:
    """The child's environment: the platform's secrets stay out (admin key, pepper, database
    URL, hub tokens: every AUTOGLM_* variable and anything named like a token or secret); its
    own API key goes in (not on the command line, where every local user could read it)."""
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith("AUTOGLM_") and not _SECRET_NAME.search(k)}
    return {**keep, "CUDA_VISIBLE_DEVICES": ",".join(str(g.index) for g in child.gpus),
            "VLLM_API_KEY": child.api_key}


_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|CREDENTIAL|PEPPER", re.I)


def running(sup: ProcessSupervisor) -> bool:
    """The child has not exited, as the kernel sees it now. The supervisor learns of an exit
    a moment later, and the port that the exit freed may be taken by then: no request may
    go there meanwhile. One system call (the exit is looked at, not collected)."""
    pid = sup.pid
    if pid is None:
        return False
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    except ChildProcessError:  # collected already: exited
        return False
    except (AttributeError, OSError):  # no waitid here: the supervisor's word is all there is
        return True


def plan(settings: Settings) -> list[list[Gpu]]:
    """GPU groups for the children, or ConfigError saying what is missing."""
    if shutil.which(settings.vllm_executable) is None:
        raise ConfigError(
            f"vLLM is not installed ('{settings.vllm_executable}' not found): "
            "pip install 'autoglm[vllm]' on a machine with an NVIDIA GPU"
        )
    gpus = discover()
    if not gpus:
        raise ConfigError("no NVIDIA GPU found (NVML and nvidia-smi see none); vLLM needs one")
    groups = place(gpus, settings.vllm_tensor_parallel, settings.vllm_instances)
    if not groups:
        raise ConfigError(
            f"tensor parallelism {settings.vllm_tensor_parallel} needs that many GPUs; "
            f"this machine has {len(gpus)}"
        )
    return groups


class ManagedVllmEngine(UpstreamEngine):
    def __init__(self, settings: Settings, model_path: Path, model_id: str,
                 groups: list[list[Gpu]], *, pick_port: Callable[[], int] = free_port,
                 files: VerifiedTree | None = None, lora_modules: dict[str, Path] | None = None,
                 max_lora_rank: int = 0) -> None:
        """``files``: the registered model directory, checked before every child start
        and again once the child has loaded it (model_trust verified or signed).
        ``lora_modules``: PEFT adapter directories by the model id that asks for them
        (vLLM's LoRA support; several adapters share a batch)."""
        self.lora_modules = dict(lora_modules or {})
        self.max_lora_rank = max_lora_rank
        self._pick_port = pick_port
        self.files = files
        self._files_lock = asyncio.Lock()  # children start together: one check for all
        self._model_path = model_path
        self._model_id = model_id
        self.children: list[Child] = []
        for i, g in enumerate(groups):
            port = self._new_port({c.port for c in self.children})
            self.children.append(Child(f"vllm-{i}", port, g, secrets.token_urlsafe(32)))
        super().__init__(settings, self._spec())
        self.supervisors = {c.name: self._supervisor(c) for c in self.children}
        for inst in self.router.instances:  # no traffic to a child that is not up
            sup = self.supervisors[inst.name]
            inst.gate = lambda sup=sup: sup.state == "ready" and running(sup)

    def _spec(self) -> ModelSpec:
        return ModelSpec(
            id=self._model_id, engine="vllm",
            instances=[InstanceSpec(url=child_url(c.port), name=c.name,
                                    api_key=c.api_key)  # a child answers only us
                       for c in self.children],
            max_fails=1, fail_timeout_s=2.0,
        )

    def _new_port(self, exclude: set[int]) -> int:
        for _ in range(100):
            port = self._pick_port()
            if port not in exclude:
                return port
        raise ConfigError("no free TCP port on 127.0.0.1 for a vLLM child; "
                          "free some ports (ss -ltn shows who holds them)")

    def _argv(self, child: Child) -> list[str]:
        s = self.settings
        return [
            s.vllm_executable, "serve", str(self._model_path),
            "--host", "127.0.0.1", "--port", str(child.port),
            "--served-model-name", self._model_id,
            "--tensor-parallel-size", str(len(child.gpus)),
            *self._lora_args(),
            *s.vllm_extra_args,
        ]

    def _lora_args(self) -> list[str]:
        if not self.lora_modules:
            return []
        rank = 1 << max(3, (self.max_lora_rank - 1).bit_length())  # vLLM takes 8, 16, 32...
        return ["--enable-lora", "--max-loras", str(len(self.lora_modules)),
                "--max-lora-rank", str(rank), "--lora-modules",
                *(f"{model_id}={path}" for model_id, path in self.lora_modules.items())]

    def _supervisor(self, child: Child) -> ProcessSupervisor:
        s = self.settings
        return ProcessSupervisor(
            f"vllm:{self._model_id}:{child.name}", self._argv(child), self._probe(child),
            start_timeout_s=s.vllm_start_timeout_s,
            backoff_min_s=s.engine_restart_backoff_min_s,
            backoff_max_s=s.engine_restart_backoff_max_s,
            env=child_env(child),
            before_spawn=self._check_files if self.files is not None else None,
        )

    async def _check_files(self) -> None:
        """Before a child loads the model: every file hashes right, nothing is unlisted
        (hashed again only when a file changed since the last full check)."""
        if self.files is None:
            return
        async with self._files_lock:
            record = await asyncio.to_thread(self.files.ensure)
        state = self.model.verification
        if state is not None and state.get("load") != {**state.get("load", {}), **record}:
            self.model = replace(self.model, verification={
                **state, "load": {**state.get("load", {}), **record}})

    async def _loaded_unchanged(self) -> bool:
        """After the child loaded the model: no file changed since it was checked."""
        if self.files is None:
            return True
        if await asyncio.to_thread(self.files.unchanged):
            return True
        raise IntegrityError(f"model '{self._model_id}': a file of {self.files.root} changed "
                             "while vLLM loaded it; the child is stopped")

    def _probe(self, child: Child) -> Callable[[], Awaitable[bool]]:
        """Ready once the child answers /health and is proven to be the one listening
        (engine/vllm/ports.py); a port held by anyone else raises PortTakenError."""
        check = ListenerCheck()

        async def probe() -> bool:
            pid = self.supervisors[child.name].pid
            if pid is None:
                return False
            port = child.port
            found = await asyncio.to_thread(check, port, pid)
            if found.state == "foreign":
                raise self._port_taken(child, found.pid)
            if found.state == "unknown":  # no /proc: the key proves it (ports.py)
                proof = await key_proof(port, child.api_key)
                if proof == "foreign":
                    raise self._port_taken(child, None)
                return (proof == "ours" and await health(port)
                        and await self._loaded_unchanged())
            if found.state == "none" or not await health(port):
                return False
            again = await asyncio.to_thread(check, port, pid)  # nobody joined meanwhile
            if again.state == "foreign":
                raise self._port_taken(child, again.pid)
            return again.state == "ours" and await self._loaded_unchanged()

        return probe

    def _port_taken(self, child: Child, pid: int | None) -> PortTakenError:
        """Log it, mark the instance, and move the child to a new port for its next start."""
        err = PortTakenError(child.name, child.port, pid)
        old = child.port
        child.port = self._new_port({c.port for c in self.children})
        self.supervisors[child.name].argv = self._argv(child)
        self.spec = self._spec()  # what gateway workers are given
        inst = self.router.find(child.name)
        if inst is not None:
            inst.url = child_url(child.port)
            inst.last_error = f"port {old} was held by process {pid or 'unknown'}"
        log.error(f"{err.message}; its next start uses port {child.port}",
                  extra={"engine": self._model_id, "instance": child.name, "port": old,
                         "foreign_pid": pid, "new_port": child.port})
        return err

    async def start(self) -> None:
        log.info("starting vLLM", extra={"model": self.model.id, "children": [
            {"name": c.name, "port": c.port, "gpus": [g.index for g in c.gpus]}
            for c in self.children]})
        try:
            await asyncio.gather(*(self._start_child(c) for c in self.children))
        except BaseException:
            await asyncio.gather(*(s.close() for s in self.supervisors.values()),
                                 return_exceptions=True)
            raise
        await super().start()

    async def _start_child(self, child: Child) -> None:
        sup = self.supervisors[child.name]
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                await sup.start()
                return
            except PortTakenError:
                await sup.close()  # stop the child that could not have the port
                if attempt == PORT_ATTEMPTS:
                    raise

    async def close(self) -> None:
        await super().close()
        await asyncio.gather(*(s.close() for s in self.supervisors.values()),
                             return_exceptions=True)

    def stats(self) -> dict[str, int]:
        out = super().stats()
        out["restarts"] = sum(s.restarts for s in self.supervisors.values())
        return out

    def describe(self, *, with_url: bool) -> list[dict]:
        views = super().describe(with_url=with_url)
        for view in views:
            sup = self.supervisors.get(view["name"])
            if sup is not None:
                view.update(pid=sup.pid, restarts=sup.restarts, process=sup.state)
                if with_url:
                    child = next(c for c in self.children if c.name == view["name"])
                    view["gpus"] = [g.index for g in child.gpus]
        return views

    async def health(self) -> EngineHealth:
        h = await super().health()
        up = [v for v in h.detail["instances"] if v["state"] == "up"]
        h.detail["healthy_instances"] = len(up)
        h.status = "ready" if up else ("starting" if any(
            s.state == "starting" for s in self.supervisors.values()) else "down")
        return h

