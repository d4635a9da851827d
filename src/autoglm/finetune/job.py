"""One fine-tuning job, end to end: check, prepare the base, train, export, register.

Everything that can be refused cheaply (the name, the settings, every line of the data,
the base) is checked before the base is loaded or a step is taken.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoglm.finetune.base import (
    PRECISION,
    BaseRef,
    load,
    prepare,
    require_train_extra,
    resolve_base,
)
from autoglm.finetune.checkpoint import RunDir
from autoglm.finetune.data import ChatEncoder, file_digest, load_examples, split
from autoglm.finetune.train import Reporter, TrainConfig, Trainer, device
from autoglm.supply.registry import Registry


@dataclass(frozen=True)
class FinetuneRequest:
    data: Path
    name: str
    base: str | None = None  # a registered model; None: the bundled one
    config: TrainConfig = field(default_factory=TrainConfig)
    restart: bool = False  # discard a run of this name that does not match


@dataclass
class FinetuneResult:
    entry: dict[str, Any]
    summary: dict[str, Any]


def run_dir(data_dir: Path, name: str) -> RunDir:
    return RunDir(data_dir / "finetune" / "runs" / name)


def bases_dir(data_dir: Path) -> Path:
    return data_dir / "finetune" / "bases"


def _arch(base: BaseRef, model: Any) -> str:
    from autoglm.finetune.export import gguf_architecture

    return gguf_architecture(base.path) if base.gguf else str(model.config.model_type)


def finetune(data_dir: Path, req: FinetuneRequest,
             reporter: Reporter | None = None) -> FinetuneResult:
    from autoglm.finetune.export import GGUF_FILE, PEFT_DIR, write_gguf, write_peft
    from autoglm.finetune.register import register_adapter

    require_train_extra()
    reporter = reporter or Reporter()
    cfg = req.config
    registry = Registry(data_dir)
    registry.ensure_free(req.name)
    cfg.check()
    examples = load_examples(req.data)
    base = resolve_base(registry, req.base)
    reporter.note(f"base {base.name} (sha256 {base.sha256[:12]}...), {len(examples)} examples")
    if base.gguf and not (bases_dir(data_dir) / base.sha256[:16]).is_dir():
        reporter.note("converting the base from GGUF to float32 (once per base)...")
    hf_dir = prepare(base, bases_dir(data_dir))
    model, tokenizer = load(hf_dir, device())
    encoder = ChatEncoder(tokenizer, cfg.max_len)
    train_ex, val_ex = split(examples, cfg.val_fraction, cfg.seed)
    train_enc, val_enc = encoder.encode_all(train_ex), [encoder.encode(e) for e in val_ex]
    run = run_dir(data_dir, req.name)
    identity = {"base_sha256": base.sha256, "data_sha256": file_digest(req.data),
                **cfg.identity()}
    run.begin(identity, restart=req.restart)
    trainer = Trainer(model, tokenizer, train_enc, val_enc, cfg, run, reporter)
    trainer.train()
    weights = trainer.final_adapter()
    staged = run.root / "package"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir()
    write_gguf(weights, staged / GGUF_FILE, arch=_arch(base, model), config=model.config,
               alpha=cfg.alpha, name=req.name, base_sha256=base.sha256)
    write_peft(trainer.model, staged / PEFT_DIR, base.describe())
    summary = {**trainer.summary(), "precision": PRECISION, "device": str(trainer.device),
               "examples": {"train": len(train_ex), "validation": len(val_ex)},
               "data": {"path": str(req.data), "sha256": identity["data_sha256"]}}
    lora = {"rank": cfg.rank, "alpha": cfg.alpha,
            "targets": sorted(trainer.lora_config.target_modules)}
    entry = register_adapter(registry, req.name, staged, base=base.describe(), lora=lora,
                             training=summary)
    run.finish(summary)
    return FinetuneResult(entry, summary)
