"""``autoglm finetune``: train a LoRA adapter and register it (needs the train extra)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

from autoglm.cli.output import fail
from autoglm.errors import AutoGLMError
from autoglm.finetune.train import Reporter, TrainConfig
from autoglm.settings import load_settings


class _Progress(Reporter):
    """A rich bar (loss, validation loss, step time, tokens/s, ETA) on a terminal; one
    plain line per step otherwise."""

    def __init__(self) -> None:
        self.console = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)
        self.bar: Progress | None = None
        self.task = TaskID(0)
        self.total = 0
        self.first = 0
        self.started = 0.0
        self.val = "-"

    def note(self, text: str) -> None:
        self.console.print(text)

    def start(self, step: int, total: int, resumed: bool) -> None:
        self.total, self.first, self.started = total, step, time.monotonic()
        self.console.print(f"resuming from the checkpoint at step {step} of {total}" if resumed
                           else f"training for {total} steps")
        if self.console.is_terminal:
            self.bar = Progress(
                "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("val {task.fields[val]}"),
                TextColumn("{task.fields[speed]}"), TimeRemainingColumn(),
                console=self.console)
            self.bar.start()
            self.task = self.bar.add_task("training", total=total, completed=step, loss="-",
                                          val="-", speed="")

    def step(self, step: int, loss: float, seconds: float, tokens: int) -> None:
        speed = f"{seconds:.2f} s/step {tokens / seconds:,.0f} tok/s"
        if self.bar is not None:
            self.bar.update(self.task, completed=step, loss=f"{loss:.3f}", speed=speed)
            return
        done = step - self.first
        eta = (time.monotonic() - self.started) / done * (self.total - step) if done else 0
        self.console.print(f"step {step}/{self.total} loss {loss:.3f} val {self.val} {speed} "
                           f"eta {eta:.0f} s")

    def evaluated(self, step: int, val_loss: float, best: bool) -> None:
        self.val = f"{val_loss:.3f}" + (" (best)" if best else "")
        if self.bar is not None:
            self.bar.update(self.task, val=self.val)

    def checkpoint(self, step: int) -> None:
        if self.bar is None:
            self.console.print(f"checkpoint at step {step}")

    def stopped_early(self, step: int, best_step: int) -> None:
        self.console.print(f"stopped early at step {step}: the validation loss has not improved "
                           f"since step {best_step}")

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def finetune(
    data: Annotated[Path, typer.Option(help="Training chats, JSONL in OpenAI's fine-tuning "
                                        "format ({\"messages\": [...]} a line).")],
    name: Annotated[str, typer.Option(help="Registry name of the adapter.")],
    base: Annotated[Optional[str], typer.Option(
        help="Registered base model (default: the bundled smollm2-135m-instruct).")] = None,
    max_steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 60,
    batch_size: Annotated[int, typer.Option(help="Examples per micro-batch.")] = 4,
    grad_accum: Annotated[int, typer.Option(help="Micro-batches per step.")] = 1,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW).")] = 1e-3,
    rank: Annotated[int, typer.Option(help="LoRA rank.")] = 8,
    alpha: Annotated[float, typer.Option(help="LoRA alpha (scale alpha/rank).")] = 16.0,
    max_len: Annotated[int, typer.Option(help="Tokens per example (longer ones are cut).")] = 512,
    val_fraction: Annotated[float, typer.Option(help="Share of examples held out.")] = 0.1,
    eval_every: Annotated[int, typer.Option(help="Steps between validation losses.")] = 10,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 10,
    patience: Annotated[int, typer.Option(
        help="Evaluations without improvement before stopping early (0: never).")] = 3,
    seed: Annotated[int, typer.Option(help="Seed of the split, the order and LoRA's init.")] = 0,
    threads: Annotated[int, typer.Option(help="torch threads (0: all cores).")] = 0,
    restart: Annotated[bool, typer.Option(
        "--restart", help="Discard an unfinished run of this name instead of resuming it.")
    ] = False,
    config: Annotated[Optional[Path], typer.Option("--config", "-c",
                                                   help="YAML settings file.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Train a LoRA adapter on a registered base model and register it as a model. Run the
    same command again after an interruption: it resumes from the last checkpoint."""
    from autoglm.finetune.job import FinetuneRequest
    from autoglm.finetune.job import finetune as run

    cfg = TrainConfig(max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr,
                      rank=rank, alpha=alpha, max_len=max_len, val_fraction=val_fraction,
                      eval_every=eval_every, checkpoint_every=checkpoint_every,
                      patience=patience, seed=seed, threads=threads)
    progress = _Progress()
    try:
        settings = load_settings(config)
        result = run(settings.data_dir, FinetuneRequest(data.expanduser(), name, base, cfg,
                                                         restart), progress)
    except AutoGLMError as exc:
        raise fail(exc.message) from None
    finally:
        progress.stop()
    if as_json:
        print(json.dumps({"entry": result.entry, "summary": result.summary}, indent=2,
                         default=str))
        return
    s = result.summary
    val = f", best validation loss {s['best_val_loss']:.3f} at step {s['best_step']}" \
        if s["best_val_loss"] is not None else ""
    progress.console.print(
        f"registered adapter {name} on {result.entry['base']['name']}: {s['steps']} steps"
        f"{val}; {s['train_seconds']:.0f} s of training, {s['tokens_per_s'] or 0:,.0f} tokens/s; "
        f"serve it as {result.entry['base']['name']}:{name}")
