"""Held-out loss of registered adapters (and the base) on a union of chat files.

How a federated adapter is compared with the sites' local-only ones: the mean
cross-entropy over every answer token of every held-out chat of every site (token-
weighted, so a site with longer answers counts by its tokens), each adapter applied to
the same float32 base it was trained on, through peft (its ``peft/`` directory).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autoglm.errors import ConfigError

BASE = "base"


def heldout_losses(data_dir: Path, adapters: list[str], files: list[Path], *,
                   max_len: int = 512, batch_size: int = 8) -> dict[str, float]:
    """{adapter name (or ``base``): loss} on the chats of ``files`` together."""
    import torch
    from peft import PeftModel

    from autoglm.finetune.base import load, prepare, resolve_base
    from autoglm.finetune.data import ChatEncoder, load_examples
    from autoglm.finetune.job import bases_dir
    from autoglm.finetune.register import check_base, peft_dir
    from autoglm.finetune.train import loss_sum
    from autoglm.supply.registry import Registry

    registry = Registry(data_dir)
    examples = [e for f in files for e in load_examples(f)]
    entries = {name: registry.get(name) for name in adapters if name != BASE}
    base_names = {e["base"]["name"] for e in entries.values()} or {None}
    if len(base_names) > 1:
        raise ConfigError("the adapters compared must share one base")
    base = resolve_base(registry, base_names.pop())
    hf_dir = prepare(base, bases_dir(data_dir))
    model, tok = load(hf_dir)
    encoded = [ChatEncoder(tok, max_len).encode(e) for e in examples]
    out: dict[str, float] = {}
    for name in adapters:
        lm: Any = model
        peft_model = None
        if name != BASE:
            check_base(entries[name], base.sha256, base.name)
            peft_model = PeftModel.from_pretrained(model, str(peft_dir(entries[name])))
            lm = peft_model.get_base_model()
        lm.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(encoded), batch_size):
                s, n = loss_sum(lm, encoded[i:i + batch_size], tok.pad_token_id)
                total, count = total + float(s), count + n
        out[name] = total / count
        if peft_model is not None:
            model = peft_model.unload()  # the base again, without this adapter's layers
    return out
