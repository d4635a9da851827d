"""Quantize a registered GGUF model with llama.cpp's own ``llama_model_quantize``.

The result is written next to the registry (``data_dir/models/files/<name>/``) under a
temporary name and renamed when complete, then registered with its own manifest, so it
can be served at once (``autoglm serve --model NAME``) under ``model_trust: verified``.
"""

from __future__ import annotations

import ctypes
import os
import shutil
from pathlib import Path
from typing import Any

from autoglm.errors import ConfigError
from autoglm.supply import manifest as mf
from autoglm.supply.registry import Registry


def types() -> dict[str, int]:
    import llama_cpp

    prefix = "LLAMA_FTYPE_MOSTLY_"
    return {n[len(prefix):].lower(): getattr(llama_cpp, n)
            for n in dir(llama_cpp) if n.startswith(prefix)}


def check_type(qtype: str) -> int:
    """llama.cpp's file type for ``qtype`` (q8_0, q4_k_m, ...); ConfigError if unknown."""
    table = types()
    if qtype.lower() not in table:
        raise ConfigError(f"unknown quantization type '{qtype}'; one of: "
                          f"{', '.join(sorted(table))}")
    return table[qtype.lower()]


def source_gguf(entry: dict[str, Any]) -> Path:
    root = Path(entry["path"])
    ggufs = [p for p in mf.model_files(root) if p.suffix == ".gguf"]
    if len(ggufs) != 1:
        raise ConfigError(f"model '{entry['name']}' has {len(ggufs)} GGUF files; quantize needs "
                          "exactly one")
    return ggufs[0]


def quantize(registry: Registry, name: str, qtype: str, out_name: str | None = None,
             threads: int = 0) -> dict[str, Any]:
    check_type(qtype)
    entry = registry.get(name)
    if entry.get("format") != "gguf":
        raise ConfigError(f"model '{name}' is not GGUF; llama.cpp quantizes GGUF models")
    source = source_gguf(entry)
    check = mf.verify(Path(entry["path"]), entry["manifest"], full=False)
    if not check.intact:
        raise ConfigError(f"model '{name}' no longer matches its manifest; run "
                          f"`autoglm model verify {name}`")
    out_name = out_name or f"{name}-{qtype.lower()}"
    registry.ensure_free(out_name)  # before any work
    out_dir = registry.dir / "files" / out_name
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        quantize_file(source, out_dir, qtype, threads, what=f"'{name}'")
    except ConfigError:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise
    return registry.add(out_dir, out_name, source=f"quantized:{name}:{qtype.lower()}",
                        revision=entry.get("revision"))


def quantize_file(source: Path, out_dir: Path, qtype: str, threads: int = 0, *,
                  what: str | None = None) -> Path:
    """``source`` quantized to ``qtype`` as ``out_dir/<stem>.<TYPE>.gguf`` (written under a
    temporary name, renamed when complete); nothing is registered. An already quantized
    source is requantized (llama.cpp's ``allow_requantize``)."""
    import llama_cpp

    from autoglm.engine.llamacpp.model import QUIET_LOG

    ftype = check_type(qtype)
    llama_cpp.llama_log_set(QUIET_LOG, ctypes.c_void_p(0))  # a line per tensor otherwise
    stem = source.name.removesuffix(".gguf").split(".")[0]
    target = out_dir / f"{stem}.{qtype.upper()}.gguf"
    tmp = target.with_name(target.name + ".incomplete")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True
    params.nthread = threads or len(os.sched_getaffinity(0))
    rc = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), params)
    if rc != 0 or not tmp.exists():
        tmp.unlink(missing_ok=True)
        hint = ("; the IQ1/IQ2 types need an importance matrix, which is not computed here"
                if qtype.lower().startswith(("iq1", "iq2")) else "")
        raise ConfigError(f"llama.cpp could not quantize {what or source.name} to {qtype} "
                          f"(status {rc}){hint}")
    os.replace(tmp, target)
    return target
