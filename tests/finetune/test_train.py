import json
import subprocess
import sys
from pathlib import Path

import pytest

from autoglm.errors import ConfigError
from autoglm.finetune.housestyle import make_task
from autoglm.finetune.job import FinetuneRequest, finetune, run_dir
from autoglm.finetune.train import TrainConfig
from autoglm.supply.registry import Registry
from tests.finetune.conftest import THREADS, link_base, needs_train


def small_task(path: Path, n: int) -> Path:
    train, _ = make_task()
    path.write_text("".join(json.dumps(c) + "\n" for c in train[:n]))
    return path


@needs_train
def test_early_stop_when_validation_stops_improving(tmp_path: Path, bundled_base) -> None:
    data_dir = tmp_path / "data"
    link_base(bundled_base, data_dir)
    # lr 0: the validation loss cannot improve after the first evaluation
    cfg = TrainConfig(max_steps=10, batch_size=2, lr=0.0, max_len=64, val_fraction=0.25,
                      eval_every=1, checkpoint_every=5, patience=1, threads=THREADS)
    result = finetune(data_dir, FinetuneRequest(small_task(tmp_path / "d.jsonl", 8), "early",
                                                config=cfg))
    s = result.summary
    assert s["steps"] == 2 and s["stopped_early"] and s["best_step"] == 1
    assert [step for step, _ in s["evals"]] == [1, 2]
    assert s["examples"] == {"train": 6, "validation": 2}
    run = run_dir(data_dir, "early")
    assert run.latest().name == "step-000002"  # a checkpoint where it stopped
    assert json.loads((run.best / "best.json").read_text())["step"] == 1


@needs_train
def test_bases_that_cannot_be_trained(tmp_path: Path, bundled_base) -> None:
    import gguf
    import numpy as np

    data_dir = tmp_path / "data"
    reg = Registry(data_dir)
    data = small_task(tmp_path / "d.jsonl", 4)
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "notes.txt").write_text("not a model")
    reg.add(odd, "odd")
    w = gguf.GGUFWriter(str(tmp_path / "alien.gguf"), "nonesuch")
    w.add_tensor("blk.0.attn_q.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    reg.add(tmp_path / "alien.gguf", "alien")
    fake_adapter = reg.get("odd") | {"name": "lora1", "kind": "adapter",
                                     "base": {"name": "odd", "sha256": "0" * 64}}
    reg.save(fake_adapter)
    for name, why in [("odd", "neither a GGUF file nor a transformers model"),
                      ("alien", "transformers cannot load its GGUF"),
                      ("lora1", "it is a LoRA adapter"),
                      ("missing", "no model named 'missing'")]:
        with pytest.raises(ConfigError if name != "missing" else Exception, match=why):
            finetune(data_dir, FinetuneRequest(data, "x", base=name))
    with pytest.raises(ConfigError, match="already registered"):
        finetune(data_dir, FinetuneRequest(data, "odd"))


def test_without_the_train_extra_the_command_says_how_to_install(tmp_path: Path) -> None:
    data = small_task(tmp_path / "d.jsonl", 2)
    code = ("import sys; sys.modules['torch'] = None; sys.argv = ['autoglm', 'finetune', "
            f"'--data', {str(data)!r}, '--name', 'x']; from autoglm.cli.main import main; main()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                          timeout=60)
    assert proc.returncode == 1
    assert "pip install 'autoglm[train]'" in proc.stderr


@needs_train
def test_a_transformers_directory_is_a_base_too(tmp_path: Path, bundled_base) -> None:
    import os

    from autoglm.finetune.base import directory_digest

    data_dir = tmp_path / "data"
    hf = tmp_path / "smol-hf"
    hf.mkdir()
    for f in bundled_base[1].iterdir():  # the converted base, registered as a model
        os.link(f, hf / f.name)
    reg = Registry(data_dir)
    base_entry = reg.add(hf, "smol-hf")
    cfg = TrainConfig(max_steps=1, batch_size=2, max_len=64, val_fraction=0.0,
                      threads=THREADS)
    result = finetune(data_dir, FinetuneRequest(small_task(tmp_path / "d.jsonl", 2), "hf1",
                                                base="smol-hf", config=cfg))
    assert result.entry["base"] == {"name": "smol-hf",
                                    "sha256": directory_digest(base_entry["manifest"])}
    assert (Path(result.entry["path"]) / "adapter.gguf").stat().st_size > 0
    assert result.summary["best_val_loss"] is None  # no validation split asked for
