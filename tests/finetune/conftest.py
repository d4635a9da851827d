"""Fine-tuning tests need the train extra (torch, transformers, peft). The bundled base is
converted from GGUF once per session and linked into each test's data directory, so a
test pays a fraction of a second for its base instead of the conversion."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from autoglm.finetune.base import BaseRef, prepare, resolve_base
from autoglm.finetune.job import bases_dir
from autoglm.supply.registry import Registry

needs_train = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("torch", "transformers", "peft")),
    reason="needs the train extra: pip install -e '.[test,train]'")

THREADS = 1  # torch's spinning threads collapse when CI shares the cores (as llama.cpp's)


@pytest.fixture(scope="session")
def bundled_base(tmp_path_factory: pytest.TempPathFactory) -> tuple[BaseRef, Path]:
    """(the bundled base, its converted transformers directory), made once."""
    base = resolve_base(Registry(tmp_path_factory.mktemp("unused")), None)
    return base, prepare(base, tmp_path_factory.mktemp("bases"))


def link_base(bundled: tuple[BaseRef, Path], data_dir: Path) -> None:
    """Put the converted base where a run in ``data_dir`` looks for it (hard links)."""
    _, converted = bundled
    target = bases_dir(data_dir) / converted.name
    target.mkdir(parents=True, exist_ok=True)
    for f in converted.iterdir():
        if not (target / f.name).exists():
            os.link(f, target / f.name)


# The house-format run every effect and serving test shares: 8 steps on the generated task.
HOUSE = {"max_steps": 8, "batch_size": 4, "lr": 2e-3, "warmup_steps": 2, "max_len": 128,
         "val_fraction": 0.1, "eval_every": 4, "checkpoint_every": 4}


@pytest.fixture(scope="session")
def house_adapter(tmp_path_factory: pytest.TempPathFactory, bundled_base) -> dict:
    """The adapter ``acme`` trained on the house-format task, registered in its own data
    directory: {"data_dir", "entry", "summary", "heldout" (chats), "seconds"}."""
    import time

    from autoglm.finetune.housestyle import write_task
    from autoglm.finetune.job import FinetuneRequest, finetune
    from autoglm.finetune.train import TrainConfig

    root = tmp_path_factory.mktemp("house")
    data_dir = root / "data"
    link_base(bundled_base, data_dir)
    train, heldout = write_task(root / "task")
    t0 = time.perf_counter()
    result = finetune(data_dir, FinetuneRequest(train, "acme", config=TrainConfig(
        **HOUSE, threads=THREADS)))
    import json

    return {"data_dir": data_dir, "entry": result.entry, "summary": result.summary,
            "seconds": time.perf_counter() - t0,
            "heldout": [json.loads(line)["messages"][:1] for line in heldout.open()]}
