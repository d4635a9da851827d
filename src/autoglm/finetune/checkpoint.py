"""A training run's directory, ``data_dir/finetune/<name>/``, and its checkpoints.

``run.json`` says what the run is (base digest, data digest, settings): a later
``autoglm finetune`` with the same name resumes only a run that matches it. A checkpoint
is a directory ``checkpoints/step-NNNNNN/`` (LoRA weights, optimizer state, loop state)
written under a temporary name and renamed when complete, so a run killed at any moment
leaves only whole checkpoints; the newest is the one resumed. ``best/`` holds the
adapter weights with the lowest validation loss so far.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autoglm.errors import ConfigError

KEEP = 2  # checkpoints kept; older ones are removed once a newer one is complete
ADAPTER_FILE = "adapter.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
BEST_FILE = "best.safetensors"


@dataclass
class LoopState:
    step: int = 0
    best_val: float | None = None
    best_step: int = 0
    bad_evals: int = 0  # evaluations since the validation loss last improved
    evals: list[tuple[int, float]] = field(default_factory=list)
    stopped_early: bool = False
    resumed_from: list[int] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoopState:
        state = cls(**data)
        state.evals = [(int(s), float(v)) for s, v in state.evals]
        return state


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


class RunDir:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.checkpoints = root / "checkpoints"
        self.best = root / "best"

    @property
    def info_path(self) -> Path:
        return self.root / "run.json"

    def info(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.info_path.read_text())
        except FileNotFoundError:
            return None

    def begin(self, identity: dict[str, Any], *, restart: bool) -> bool:
        """Prepare the directory for a run with ``identity``; True when it resumes one.
        A directory left by a different run is refused unless ``restart``."""
        identity = json.loads(json.dumps(identity))  # as it reads back (tuples: lists)
        old = self.info()
        if old is not None and not restart:
            if old.get("identity") != identity:
                changed = sorted(k for k in set(old.get("identity", {})) | set(identity)
                                 if old.get("identity", {}).get(k) != identity.get(k))
                raise ConfigError(
                    f"a training run named '{self.root.name}' exists with other "
                    f"{', '.join(changed)}; pass --restart to discard it, or pick another "
                    "--name")
            return self.latest() is not None
        if self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        _write_json(self.info_path, {"identity": identity})
        return False

    def latest(self) -> Path | None:
        if not self.checkpoints.is_dir():
            return None
        done = sorted(p for p in self.checkpoints.iterdir()
                      if p.name.startswith("step-") and (p / "state.json").is_file())
        return done[-1] if done else None

    def save(self, state: LoopState, adapter: dict[str, Any], optimizer: dict[str, Any]) -> Path:
        import torch
        from safetensors.torch import save_file

        self.checkpoints.mkdir(parents=True, exist_ok=True)
        final = self.checkpoints / f"step-{state.step:06d}"
        tmp = self.checkpoints / f".{final.name}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file({k: v.detach().cpu().contiguous() for k, v in adapter.items()},
                  tmp / ADAPTER_FILE)
        torch.save(optimizer, tmp / OPTIMIZER_FILE)
        if (self.best / ADAPTER_FILE).is_file():  # the best so far, as of this step
            shutil.copyfile(self.best / ADAPTER_FILE, tmp / BEST_FILE)
        (tmp / "state.json").write_text(json.dumps(asdict(state), indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in sorted(p for p in self.checkpoints.iterdir()
                          if p.name.startswith("step-"))[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    @staticmethod
    def load(path: Path) -> tuple[LoopState, dict[str, Any], dict[str, Any]]:
        import torch
        from safetensors.torch import load_file

        state = LoopState.from_json(json.loads((path / "state.json").read_text()))
        optimizer = torch.load(path / OPTIMIZER_FILE, weights_only=True)
        return state, load_file(path / ADAPTER_FILE), optimizer

    def save_best(self, step: int, val: float, adapter: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        self.best.mkdir(parents=True, exist_ok=True)
        tmp = self.best / f".{ADAPTER_FILE}.{os.getpid()}.tmp"
        save_file({k: v.detach().cpu().contiguous() for k, v in adapter.items()}, tmp)
        os.replace(tmp, self.best / ADAPTER_FILE)
        _write_json(self.best / "best.json", {"step": step, "val_loss": val})

    def restore_best(self, checkpoint: Path, state: LoopState) -> None:
        """Put back the best adapter as of ``checkpoint`` (a killed run may have written a
        newer one that the resumed run will or will not find again)."""
        shutil.rmtree(self.best, ignore_errors=True)
        if (checkpoint / BEST_FILE).is_file() and state.best_val is not None:
            self.best.mkdir(parents=True)
            shutil.copyfile(checkpoint / BEST_FILE, self.best / ADAPTER_FILE)
            _write_json(self.best / "best.json", {"step": state.best_step,
                                                  "val_loss": state.best_val})

    def best_adapter(self) -> dict[str, Any] | None:
        from safetensors.torch import load_file

        path = self.best / ADAPTER_FILE
        return load_file(path) if path.is_file() else None

    def finish(self, summary: dict[str, Any]) -> None:
        info = self.info() or {}
        info["result"] = summary
        _write_json(self.info_path, info)
