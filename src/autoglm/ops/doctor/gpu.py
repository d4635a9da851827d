"""NVIDIA GPUs: the driver and the CUDA it runs, and the installed vLLM and torch against
the compatibility matrix shipped in ``compat.yaml``, with the fix named for each mismatch.

``nvidia-smi`` is asked (as managed vLLM does when NVML is absent); none on the PATH means
no GPU, and the GPU checks do not apply unless the settings ask for managed vLLM. Versions
are read from the installed distributions' metadata, never by importing torch or vLLM.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from autoglm.ops.doctor.result import Result, failed, passed, skipped, warned
from autoglm.ops.doctor.runner import Context

MATRIX = Path(__file__).with_name("compat.yaml")
SMI_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Driver:
    version: str | None
    cuda: str | None  # the newest CUDA the driver runs (nvidia-smi's "CUDA Version")
    gpus: list[dict[str, Any]] = field(default_factory=list)


@cache
def matrix() -> dict[str, Any]:
    return yaml.safe_load(MATRIX.read_text(encoding="utf-8"))


def ver(text: str | None) -> tuple[int, ...]:
    """"570.86.15" -> (570, 86, 15); the numeric release part only."""
    out = []
    for part in re.split(r"[.+-]", text or ""):
        if not part.isdigit():
            break
        out.append(int(part))
    return tuple(out)


def release(version: str) -> str:
    """"2.7.1+cu126" -> "2.7.1" (the local build tag dropped)."""
    return version.split("+", 1)[0]


def nvidia_smi() -> Driver | None:
    """What nvidia-smi reports; None when it is not on the PATH; RuntimeError when it
    fails (a driver not loaded)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    fields = ["index", "name", "driver_version", "memory.total", "compute_cap"]
    rows: list[list[str]] = []
    try:
        for want in (fields, fields[:-1]):  # older drivers know no compute_cap
            done = subprocess.run([exe, f"--query-gpu={','.join(want)}",
                                   "--format=csv,noheader,nounits"], check=False,
                                  capture_output=True,
                                  text=True, timeout=SMI_TIMEOUT_S)
            if done.returncode == 0:
                rows = [[p.strip() for p in line.split(",")]
                        for line in done.stdout.strip().splitlines() if line.strip()]
                break
        else:
            raise RuntimeError((done.stdout + done.stderr).strip()[:200] or
                               f"exit status {done.returncode}")
        header = subprocess.run([exe], check=False, capture_output=True, text=True,
                                timeout=SMI_TIMEOUT_S).stdout
    except (subprocess.SubprocessError, OSError) as exc:
        raise RuntimeError(str(exc)) from None
    gpus = []
    for r in rows:
        if len(r) < 4:
            continue
        gpus.append({"index": r[0], "name": r[1], "memory_total_mib": r[3],
                     "compute_capability": r[4] if len(r) > 4 else None})
    driver = rows[0][2] if rows and len(rows[0]) > 2 else None
    m = re.search(r"Driver Version:\s*([\d.]+)", header)
    driver = driver or (m.group(1) if m else None)
    c = re.search(r"CUDA Version:\s*([\d.]+)", header)
    return Driver(driver, c.group(1) if c else None, gpus)


def installed(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def torch_cuda() -> str | None:
    """The CUDA torch was built for (torch/version.py's ``cuda``), None for a CPU build;
    read from the file of the distribution ``installed`` reports (not of a torch that this
    process may have imported already), torch is not imported."""
    try:
        dist = importlib.metadata.distribution("torch")
    except importlib.metadata.PackageNotFoundError:
        return None
    try:
        text = Path(str(dist.locate_file("torch/version.py"))).read_text()
    except OSError:
        return None
    m = re.search(r"^cuda\b[^=\n]*=\s*['\"]([\d.]+)['\"]", text, re.MULTILINE)
    return m.group(1) if m else None


def vllm_row(version: str) -> dict[str, str] | None:
    """The matrix row of a vLLM release: the longest version prefix that matches."""
    parts = release(version).split(".")
    best = None
    for row in matrix()["vllm"]:
        want = str(row["version"]).split(".")
        if parts[:len(want)] == want and (best is None or len(want) > len(best[0])):
            best = (want, row)
    return best[1] if best else None


def _declared_torch(vllm_version: str) -> str | None:
    """The torch that the installed vLLM itself pins (its requirement ``torch==X``)."""
    for req in importlib.metadata.requires("vllm") or []:
        m = re.match(r"torch\s*==\s*([\w.]+)", req)
        if m:
            return m.group(1)
    return None


def _major(cuda: str) -> str:
    return cuda.split(".")[0]


def _driver_row(drv: Driver, wanted: bool) -> Result:
    shown = "; ".join(f"{g['name']} ({g['memory_total_mib']} MiB"
                      + (f", cc {g['compute_capability']}" if g["compute_capability"] else "")
                      + ")" for g in drv.gpus)
    data = {"driver": drv.version, "cuda": drv.cuda, "gpus": drv.gpus}
    detail = f"driver {drv.version} (CUDA {drv.cuda or '?'}); {len(drv.gpus)} GPU(s): {shown}"
    floor = ver(str(matrix()["min_compute_capability"]))
    old = [g for g in drv.gpus if g["compute_capability"] and
           ver(g["compute_capability"]) < floor]
    if old and wanted:
        return failed("gpu.driver", f"{detail}: vLLM needs compute capability "
                      f"{matrix()['min_compute_capability']} or newer", "serve on newer GPUs "
                      "(Volta or later), or set engine: llamacpp", **data)
    if not drv.gpus:
        return warned("gpu.driver", f"driver {drv.version} sees no GPU", "check that the GPUs "
                      "are visible (CUDA_VISIBLE_DEVICES, the container's --gpus)", **data)
    return passed("gpu.driver", detail, **data)


def _versions(wanted: bool, fallback: bool) -> tuple[Result, str | None, str]:
    """The vLLM/torch row, the CUDA the stack is built for, and what needs it."""
    vllm, torch = installed("vllm"), installed("torch")
    if vllm is None:
        rec = vllm_row(str(matrix()["recommended"]))
        need = rec["cuda"] if rec else None
        what = f"vLLM {matrix()['recommended']} (recommended)"
        if not wanted:
            return (skipped("gpu.vllm", "vLLM not installed (engine: llamacpp)"), need, what)
        fix = "pip install 'autoglm[vllm]' (or set engine: llamacpp)"
        if fallback:
            return (warned("gpu.vllm", "engine: vllm, but vLLM is not installed: GGUF models "
                           "fall back to llama.cpp", fix), need, what)
        return failed("gpu.vllm", "engine: vllm, but vLLM is not installed", fix), need, what
    row = vllm_row(vllm)
    data = {"vllm": vllm, "torch": torch, "matrix_row": row}
    pin = row["torch"] if row else _declared_torch(vllm)
    note = "" if row else f" (not in {MATRIX.name}; checked against vLLM's own requirement)"
    reinstall = f"pip install --force-reinstall 'vllm=={release(vllm)}'"
    cuda = torch_cuda() if torch else None
    if torch is None:
        fix = f"pip install 'torch=={pin}'" if pin else reinstall
        return (failed("gpu.vllm", f"vLLM {vllm} is installed without torch", fix, **data),
                None, "vLLM")
    what = f"torch {torch}"
    if cuda is None:
        want_cuda = row["cuda"] if row else None
        idx = (f" --index-url https://download.pytorch.org/whl/cu{want_cuda.replace('.', '')}"
               if want_cuda else "")
        return (failed("gpu.vllm", f"torch {torch} is a CPU-only build; vLLM {vllm} needs "
                       "CUDA", f"pip install --force-reinstall 'torch=={release(torch)}'{idx}",
                       **data), None, what)
    if pin and release(torch) != pin:
        return (failed("gpu.vllm", f"vLLM {vllm} is built against torch {pin}; torch {torch} "
                       f"is installed{note}", f"pip install 'torch=={pin}' (or {reinstall})",
                       **data), cuda, what)
    if row and _major(row["cuda"]) != _major(cuda):
        return (failed("gpu.vllm", f"vLLM {vllm}'s kernels are built for CUDA {row['cuda']}; "
                       f"torch {torch} for CUDA {cuda}", f"install torch {pin} for CUDA "
                       f"{row['cuda']}: pip install --force-reinstall 'torch=={pin}' "
                       f"--index-url https://download.pytorch.org/whl/cu"
                       f"{row['cuda'].replace('.', '')}", **data), cuda, what)
    if row is None:
        return (warned("gpu.vllm", f"vLLM {vllm} with torch {torch} (CUDA {cuda}){note}",
                       f"use a vLLM release listed in {MATRIX} (or add it there once "
                       "qualified)", **data), cuda, what)
    return (passed("gpu.vllm", f"vLLM {vllm} with torch {torch} (CUDA {cuda}), as the "
                   "matrix says", **data), cuda, what)


def _cuda_row(drv: Driver, need: str | None, what: str, strict: bool) -> Result:
    """Whether the driver runs the CUDA ``need`` (what the stack is built for)."""
    if need is None:
        return skipped("gpu.cuda", "no CUDA build to check the driver against")
    m = matrix()
    min_full = m["cuda_driver"].get(need) or m["cuda_driver"].get(".".join(need.split(".")[:2]))
    floor = m["cuda_major_driver"].get(_major(need))
    data = {"driver": drv.version, "driver_cuda": drv.cuda, "needed_cuda": need,
            "min_driver": min_full}
    upgrade = (f"upgrade the NVIDIA driver to {min_full} or newer (CUDA {need})" if min_full
               else f"upgrade the NVIDIA driver to one that runs CUDA {need}")
    fix = f"{upgrade}, or install a {what.split()[0]} build for CUDA {drv.cuda or 'your driver'}"
    bad = failed if strict else warned
    have = ver(drv.cuda) if drv.cuda else None
    if have is None:  # no CUDA version shown: judge by the driver version alone
        if min_full and ver(drv.version) < ver(min_full):
            return bad("gpu.cuda", f"driver {drv.version} is older than {min_full}, which "
                       f"{what} (CUDA {need}) needs", fix, **data)
        return passed("gpu.cuda", f"driver {drv.version} runs CUDA {need} ({what})", **data)
    if have[:1] < ver(need)[:1] or (floor and ver(drv.version) < ver(floor)):
        return bad("gpu.cuda", f"driver {drv.version} runs CUDA up to {drv.cuda}; {what} is "
                   f"built for CUDA {need}", fix, **data)
    if have < ver(need)[:len(have)]:
        return warned("gpu.cuda", f"driver {drv.version} runs CUDA up to {drv.cuda}; {what} "
                      f"is built for CUDA {need}: it runs through minor-version compatibility, "
                      "but PTX JIT and some kernels fail", fix, **data)
    return passed("gpu.cuda", f"driver CUDA {drv.cuda} runs {what} (CUDA {need})", **data)


def gpu(ctx: Context) -> list[Result]:
    s = ctx.settings
    wanted = s.engine == "vllm"
    try:
        drv = nvidia_smi()
    except RuntimeError as exc:
        bad = failed if wanted else warned
        return [bad("gpu.driver", f"nvidia-smi fails: {exc}", "load or reinstall the NVIDIA "
                    "driver until `nvidia-smi` lists the GPUs (see `dmesg` for NVRM errors)")]
    if drv is None:
        if not wanted:
            return [skipped("gpu.driver", "no NVIDIA GPU (nvidia-smi not on PATH): GPU checks "
                            "do not apply; the embedded engine runs on the CPU")]
        fix = "install the NVIDIA driver (nvidia-smi must be on PATH), or set engine: llamacpp"
        if s.vllm_fallback:
            return [warned("gpu.driver", "engine: vllm, but no NVIDIA GPU (nvidia-smi not on "
                           "PATH): GGUF models fall back to llama.cpp", fix)]
        return [failed("gpu.driver", "engine: vllm, but no NVIDIA GPU (nvidia-smi not on "
                       "PATH)", fix)]
    versions, need, what = _versions(wanted, s.vllm_fallback)
    strict = wanted or installed("vllm") is not None
    return [_driver_row(drv, wanted), _cuda_row(drv, need, what, strict), versions]
