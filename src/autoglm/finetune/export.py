"""Trained LoRA weights as files engines load: llama.cpp's GGUF adapter and a PEFT directory.

llama.cpp's adapter file is a GGUF whose ``general.type`` is ``adapter``, with
``adapter.type = lora`` and ``adapter.lora.alpha``; each adapted weight ``W`` of the
base (by its GGUF name, e.g. ``blk.3.attn_q.weight``) gets two tensors, ``<name>.lora_a``
(rank x in) and ``<name>.lora_b`` (out x rank), and llama.cpp adds
``alpha / rank * B (A x)`` to ``W x``, the same scaling as peft. Names are mapped with
the ``gguf`` package's own table of transformers names. For the llama architecture the
GGUF stores the query and key rows of each head interleaved (llama.cpp's rope layout);
transformers undid that when it loaded the GGUF, so the B matrices of ``q_proj`` and
``k_proj`` get the same row permutation back here.

The adapter also records the SHA-256 of its base (``autoglm.adapter.base_sha256``), so
the engine can refuse it on any other base. The PEFT directory (``adapter_config.json``,
``adapter_model.safetensors``) is what vLLM's LoRA support loads.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from autoglm.errors import ConfigError

GGUF_FILE = "adapter.gguf"
PEFT_DIR = "peft"
BASE_KEY = "autoglm.adapter.base_sha256"
_PERMUTED_ARCHS = {"llama"}  # llama.cpp's converter interleaves q/k rows for these
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")


def _interleave(rows: Any, n_head: int) -> Any:
    """transformers' q/k row order -> llama.cpp's (per head: halves -> pairs)."""
    out_dim = rows.shape[0]
    return (rows.reshape(n_head, 2, out_dim // n_head // 2, *rows.shape[1:])
            .swapaxes(1, 2).reshape(rows.shape))


def _pairs(weights: dict[str, Any]) -> dict[str, dict[str, Any]]:
    pairs: dict[str, dict[str, Any]] = {}
    for key, tensor in weights.items():
        m = _KEY.match(key)
        if m is None:
            raise ConfigError(f"unexpected tensor '{key}' in the adapter: only LoRA A/B "
                              "matrices of linear layers are exported")
        pairs.setdefault(m["module"], {})[m["ab"]] = tensor
    return pairs


def write_gguf(weights: dict[str, Any], out: Path, *, arch: str, config: Any, alpha: float,
               name: str, base_sha256: str) -> Path:
    """Write llama.cpp's LoRA adapter for ``weights`` (peft's state dict) to ``out``."""
    import gguf
    import numpy as np

    arch_enum = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}.get(arch)
    if arch_enum is None:
        raise ConfigError(f"llama.cpp has no architecture '{arch}'; cannot export the adapter")
    n_blocks = int(config.num_hidden_layers)
    names = gguf.get_tensor_name_map(arch_enum, n_blocks)
    n_head = int(config.num_attention_heads)
    n_head_kv = int(getattr(config, "num_key_value_heads", None) or n_head)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    writer.add_name(name)
    writer.add_string(BASE_KEY, base_sha256)
    for module, ab in sorted(_pairs(weights).items()):
        if set(ab) != {"A", "B"}:
            raise ConfigError(f"the adapter has only half of the LoRA pair of {module}")
        target = names.get_name(module)
        if target is None:
            raise ConfigError(f"no llama.cpp tensor corresponds to {module}")
        a = ab["A"].detach().float().cpu().numpy()
        b = ab["B"].detach().float().cpu().numpy()
        if arch in _PERMUTED_ARCHS and module.endswith("q_proj"):
            b = _interleave(b, n_head)
        elif arch in _PERMUTED_ARCHS and module.endswith("k_proj"):
            b = _interleave(b, n_head_kv)
        writer.add_tensor(f"{target}.weight.lora_a", np.ascontiguousarray(a, dtype=np.float32))
        writer.add_tensor(f"{target}.weight.lora_b", np.ascontiguousarray(b, dtype=np.float32))
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(tmp, out)
    return out


def write_peft(model: Any, out_dir: Path, base: dict[str, Any]) -> Path:
    """peft's own adapter directory (what ``PeftModel.from_pretrained`` and vLLM load),
    naming the registered base instead of the local conversion it was trained on."""
    model.save_pretrained(str(out_dir))
    (out_dir / "README.md").unlink(missing_ok=True)  # peft's blank model card, local paths in it
    config_path = out_dir / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = base["name"]
    config_path.write_text(json.dumps(config, indent=2))
    return out_dir


def gguf_architecture(path: Path) -> str:
    """``general.architecture`` of a GGUF file."""
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get("general.architecture")
    if field is None:
        raise ConfigError(f"{path.name} has no general.architecture")
    return str(field.contents())


def adapter_base_digest(path: Path) -> str | None:
    """The base digest recorded in an adapter file (None if it records none)."""
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get(BASE_KEY)
    return str(field.contents()) if field is not None else None
