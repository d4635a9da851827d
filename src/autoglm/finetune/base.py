"""The base model a LoRA adapter is trained on, made trainable by torch.

A base is the bundled model or a registered one: a GGUF file (what llama.cpp serves) or a
transformers directory (safetensors). A GGUF base is read once by transformers' GGUF
loader, which dequantizes every tensor (Q4_1, Q8_0, ...) to float32, and the result is
kept as a transformers model in ``data_dir/finetune/bases/<digest>/`` (about 540 MB for
the bundled 135M model), so later runs start in a fraction of a second. Training runs in
float32 on that copy; the adapter it produces is applied to the quantized GGUF at serving
time, exactly as llama.cpp applies any LoRA adapter to a quantized base.

The digest an adapter is bound to is the SHA-256 of the base's GGUF file (of a
directory base: of its manifest), the same digest the registry's manifest records.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoglm.engine.catalog import embedded_model_path
from autoglm.errors import ConfigError, NotFoundError
from autoglm.settings import EMBEDDED_MODEL_ID
from autoglm.supply import manifest as mf
from autoglm.supply.encryption import is_encrypted
from autoglm.supply.registry import Registry

TRAIN_EXTRA = "pip install 'autoglm[train]'"
PRECISION = "float32"


def require_train_extra() -> None:
    """ConfigError naming the install command when torch, transformers or peft is missing."""
    for module in ("torch", "transformers", "peft"):  # found, not imported: that takes seconds
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"fine-tuning needs {module}, which comes with the train extra: "
                              f"{TRAIN_EXTRA}")


@dataclass(frozen=True)
class BaseRef:
    name: str  # the registry name, or the bundled model's id
    path: Path  # its GGUF file, or its transformers directory
    sha256: str  # what adapters are bound to
    gguf: bool

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "path": str(self.path),
                "format": "gguf" if self.gguf else "safetensors"}


def directory_digest(manifest: dict[str, Any]) -> str:
    lines = "".join(f"{f['path']} {f['sha256']}\n" for f in manifest["files"])
    return hashlib.sha256(lines.encode()).hexdigest()


def _cannot(name: str, why: str) -> ConfigError:
    return ConfigError(f"base model '{name}' cannot be trained: {why}")


def resolve_base(registry: Registry, name: str | None) -> BaseRef:
    """The base named (registry name), or the bundled model when ``name`` is None or its id."""
    if name is None or name == EMBEDDED_MODEL_ID:
        try:
            entry = registry.get(EMBEDDED_MODEL_ID) if name else None
        except NotFoundError:
            entry = None
        if entry is None:
            path = embedded_model_path()
            return BaseRef(EMBEDDED_MODEL_ID, path, mf.sha256_file(path), True)
        name = EMBEDDED_MODEL_ID
    entry = registry.get(name)
    if entry.get("kind") == "adapter":
        raise _cannot(name, f"it is a LoRA adapter; train on its base "
                      f"'{entry['base']['name']}' instead")
    if entry.get("encryption"):
        raise _cannot(name, "it is an encrypted package (training needs the plain weights)")
    root = Path(entry["path"])
    files = entry["manifest"]["files"]
    ggufs = [f for f in files if f["path"].endswith(".gguf")]
    if len(ggufs) == 1:
        path = root if root.is_file() else root / ggufs[0]["path"]
        if is_encrypted(path):
            raise _cannot(name, "it is an encrypted package (training needs the plain weights)")
        return BaseRef(name, path, ggufs[0]["sha256"], True)
    if len(ggufs) > 1:
        raise _cannot(name, f"it has {len(ggufs)} GGUF files; register the one to train on")
    if root.is_dir() and (root / "config.json").is_file() and any(
            f["path"].endswith(".safetensors") for f in files):
        return BaseRef(name, root, directory_digest(entry["manifest"]), False)
    raise _cannot(name, "it holds neither a GGUF file nor a transformers model "
                  "(config.json and safetensors)")


def _convert(base: BaseRef, out: Path) -> None:
    """transformers' GGUF loader (dequantizing to float32), saved as a transformers model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder, file = str(base.path.parent), base.path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file,
                                                     dtype=torch.float32)
    except (ValueError, KeyError, NotImplementedError, RuntimeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _cannot(base.name, f"transformers cannot load its GGUF ({first[:300]})") from None
    # The weights are plain float32 now; the GGUF marker would make transformers refuse to
    # save them (it takes them for still-quantized weights).
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "autoglm-base.json").write_text(json.dumps(
        {**base.describe(), "precision": PRECISION, "converted_by": "transformers GGUF loader"},
        indent=2))


def prepare(base: BaseRef, cache_root: Path) -> Path:
    """A transformers directory holding the base (converted once, then reused)."""
    if not base.gguf:
        return base.path
    out = cache_root / base.sha256[:16]
    if (out / "autoglm-base.json").is_file():
        return out
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = cache_root / f".{out.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _convert(base, tmp)
        try:
            os.replace(tmp, out)
        except OSError:  # another run converted it meanwhile
            if not (out / "autoglm-base.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load(hf_dir: Path, device: str = "cpu") -> tuple[Any, Any]:
    """(model in float32 on ``device``, tokenizer with a padding token)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(hf_dir)
        model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    except (ValueError, KeyError, OSError) as exc:
        raise ConfigError(f"transformers cannot load the base at {hf_dir}: {exc}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device), tokenizer
