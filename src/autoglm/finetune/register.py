"""Adapters in the model registry: a model like any other, bound to its base's digest.

An adapter's files live in ``data_dir/models/files/<name>/`` (``adapter.gguf`` for
llama.cpp, ``peft/`` for vLLM, ``training.json``); its registry entry has the usual
manifest (so ``model verify`` and ``model sign`` work unchanged) plus ``kind: adapter``
and ``base: {name, sha256}``. ``check_base`` is the one place that compares an adapter
with the base it is about to be applied to.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from autoglm.errors import ConfigError
from autoglm.finetune.export import GGUF_FILE, PEFT_DIR
from autoglm.supply import manifest as mf
from autoglm.supply.registry import Registry

KIND = "adapter"


def package_dir(registry: Registry, name: str) -> Path:
    return registry.dir / "files" / name


def register_adapter(registry: Registry, name: str, staged: Path, *, base: dict[str, Any],
                     lora: dict[str, Any], training: dict[str, Any],
                     source: str = "finetune") -> dict[str, Any]:
    """Move the staged files (adapter.gguf, peft/) into the registry's files and register
    them. ``base``: the base's name and SHA-256."""
    registry.ensure_free(name)
    (staged / "training.json").write_text(json.dumps(training, indent=2, default=str))
    target = package_dir(registry, name)
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(staged), str(target))
    entry = registry.add(target, name, source=f"{source}:{base['name']}")
    entry.update({"kind": KIND, "format": "lora", "quantization": None,
                  "base": {"name": base["name"], "sha256": base["sha256"]}, "lora": lora})
    registry.save(entry)
    return entry


def is_adapter(entry: dict[str, Any]) -> bool:
    return entry.get("kind") == KIND


def adapter_gguf(entry: dict[str, Any]) -> Path:
    """The llama.cpp adapter file of a registered adapter, checked against its manifest
    (sizes; the trust policy hashes it when it asks for that)."""
    if not is_adapter(entry):
        raise ConfigError(f"model '{entry['name']}' is not a LoRA adapter")
    root = Path(entry["path"])
    check = mf.verify(root, entry["manifest"], full=False)
    if not check.intact:
        raise ConfigError(f"adapter '{entry['name']}' no longer matches its manifest; run "
                          f"`autoglm model verify {entry['name']}`")
    return root / GGUF_FILE


def peft_dir(entry: dict[str, Any]) -> Path:
    return Path(entry["path"]) / PEFT_DIR


def check_base(entry: dict[str, Any], base_sha256: str, base_name: str) -> None:
    """ConfigError unless the adapter was trained on the base whose digest is given."""
    want = entry.get("base", {}).get("sha256")
    if want != base_sha256:
        raise ConfigError(
            f"adapter '{entry['name']}' was trained on base '{entry['base']['name']}' "
            f"(sha256 {str(want)[:12]}...), but the model loaded is '{base_name}' (sha256 "
            f"{base_sha256[:12]}...); an adapter only works on the exact base it was "
            "trained on")
