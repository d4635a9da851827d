"""Managed vLLM: ``autoglm serve --engine vllm --model-path DIR``.

Starts one ``vllm serve`` child per GPU (or per group of ``vllm_tensor_parallel`` GPUs),
placed on the GPUs with the most free memory through ``CUDA_VISIBLE_DEVICES``; waits
until each answers ``/health``; restarts a crashed one with backoff (the same supervisor
as the embedded engine); stops them all on shutdown. In front of them is the ordinary
upstream router, so requests only go to children that are up.

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
import socket
from dataclasses import dataclass
from pathlib import Path

from autoglm.engine.base import EngineHealth
from autoglm.engine.supervisor import ProcessSupervisor
from autoglm.engine.upstream.client import UpstreamEngine
from autoglm.engine.vllm.gpus import Gpu, discover, place
from autoglm.errors import ConfigError
from autoglm.settings import InstanceSpec, ModelSpec, Settings

log = logging.getLogger("autoglm.vllm")


@dataclass(frozen=True)
class Child:
    name: str
    port: int
    gpus: list[Gpu]
    api_key: str  # random, per child: other local processes cannot use it


def child_env(child: Child) -> dict[str, str]:
    """The child's environment: the platform's secrets stay out (admin key, pepper, database
    URL, hub tokens: every AUTOGLM_* variable and anything named like a token or secret); its
    own API key goes in (not on the command line, where every local user could read it)."""
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith("AUTOGLM_") and not _SECRET_NAME.search(k)}
    return {**keep, "CUDA_VISIBLE_DEVICES": ",".join(str(g.index) for g in child.gpus),
            "VLLM_API_KEY": child.api_key}


_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|CREDENTIAL|PEPPER", re.I)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
                 groups: list[list[Gpu]]) -> None:
        self.children = [Child(f"vllm-{i}", _free_port(), g, secrets.token_urlsafe(32))
                         for i, g in enumerate(groups)]
        spec = ModelSpec(
            id=model_id, engine="vllm",
            instances=[InstanceSpec(url=f"http://127.0.0.1:{c.port}/v1", name=c.name,
                                    api_key=c.api_key)  # a child answers only us
                       for c in self.children],
            max_fails=1, fail_timeout_s=2.0,
        )
        super().__init__(settings, spec)
        self.supervisors = {c.name: self._supervisor(settings, model_path, model_id, c)
                            for c in self.children}
        for inst in self.router.instances:  # no traffic to a child that is not up
            sup = self.supervisors[inst.name]
            inst.gate = lambda sup=sup: sup.state == "ready"

    def _supervisor(self, settings: Settings, model_path: Path, model_id: str,
                    child: Child) -> ProcessSupervisor:
        argv = [
            settings.vllm_executable, "serve", str(model_path),
            "--host", "127.0.0.1", "--port", str(child.port),
            "--served-model-name", model_id,
            "--tensor-parallel-size", str(len(child.gpus)),
            *settings.vllm_extra_args,
        ]
        env = child_env(child)

        async def probe() -> bool:
            return await _health(child.port)

        return ProcessSupervisor(
            f"vllm:{model_id}:{child.name}", argv, probe,
            start_timeout_s=settings.vllm_start_timeout_s,
            backoff_min_s=settings.engine_restart_backoff_min_s,
            backoff_max_s=settings.engine_restart_backoff_max_s,
            env=env,
        )

    async def start(self) -> None:
        log.info("starting vLLM", extra={"model": self.model.id, "children": [
            {"name": c.name, "port": c.port, "gpus": [g.index for g in c.gpus]}
            for c in self.children]})
        try:
            await asyncio.gather(*(s.start() for s in self.supervisors.values()))
        except BaseException:
            await asyncio.gather(*(s.close() for s in self.supervisors.values()),
                                 return_exceptions=True)
            raise
        await super().start()

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


async def _health(port: int) -> bool:
    """GET /health on a child; True on 200."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
    except (OSError, asyncio.TimeoutError):
        return False
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 2)
        return line.split(b" ")[1:2] == [b"200"]
    except (OSError, asyncio.TimeoutError, IndexError):
        return False
    finally:
        writer.close()
