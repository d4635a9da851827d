"""Which NVIDIA GPUs this machine has, and how much memory each has free.

NVML (the ``nvidia-ml-py`` package) when it is installed, else ``nvidia-smi``; neither
means no GPU. Placement puts each vLLM instance on the GPUs with the most free memory.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import dataclass

log = logging.getLogger("autoglm.gpus")


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_free_mib: int
    memory_total_mib: int


def _from_nvml() -> list[Gpu] | None:
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - NVML present but no driver: treat as no GPU
        return None
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            name = pynvml.nvmlDeviceGetName(h)
            gpus.append(Gpu(i, name.decode() if isinstance(name, bytes) else str(name),
                            int(mem.free) // (1 << 20), int(mem.total) // (1 << 20)))
        return gpus
    finally:
        pynvml.nvmlShutdown()


def _from_nvidia_smi() -> list[Gpu] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=index,name,memory.free,memory.total",
             "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError) as exc:
        log.warning("nvidia-smi failed; assuming no GPU", extra={"reason": str(exc)})
        return None
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4:
            continue
        try:
            gpus.append(Gpu(int(parts[0]), parts[1], int(float(parts[2])), int(float(parts[3]))))
        except ValueError:
            continue
    return gpus


def discover() -> list[Gpu]:
    found = _from_nvml()
    if found is None:
        found = _from_nvidia_smi()
    return found or []


def place(gpus: list[Gpu], tensor_parallel: int, instances: int | None) -> list[list[Gpu]]:
    """Groups of ``tensor_parallel`` GPUs, most free memory first; one group per instance."""
    ordered = sorted(gpus, key=lambda g: (-g.memory_free_mib, g.index))
    groups = [ordered[i:i + tensor_parallel]
              for i in range(0, len(ordered) - tensor_parallel + 1, tensor_parallel)]
    return groups[:instances] if instances else groups
