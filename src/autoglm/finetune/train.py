"""The training loop: LoRA (peft) on a frozen base, AdamW, gradient accumulation.

The order of the examples is a function of the step (a seeded shuffle per epoch), and
dropout is off by default, so a run resumed from a checkpoint takes the same batches it
would have taken unkilled: the step count continues, it does not restart. The loss is
the mean cross-entropy over the answer tokens of a step's batches; logits are computed
only at those positions (the vocabulary projection is a large part of a small model's
cost). A validation loss over the held-out examples is taken every ``eval_every``
steps; after ``patience`` evaluations without improvement the run stops early. The
adapter kept is the one with the lowest validation loss (the last one without a
validation split).
"""

from __future__ import annotations

import math
import os
import random
import time
import warnings
from dataclasses import asdict, dataclass, fields
from typing import Any

from autoglm.errors import ConfigError
from autoglm.finetune.checkpoint import LoopState, RunDir
from autoglm.finetune.data import IGNORE, Encoded

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int = 60
    batch_size: int = 4  # examples per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3
    warmup_steps: int = 5  # then linear decay to 10% at max_steps
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = TARGETS
    max_len: int = 512
    val_fraction: float = 0.1
    eval_every: int = 10
    checkpoint_every: int = 10
    patience: int = 3  # evaluations without improvement before stopping; 0: never
    seed: int = 0
    threads: int = 0  # torch threads; 0: the cores this process may use

    def check(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum", "rank", "max_len",
                     "eval_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be at least 1")
        if self.lr < 0 or self.patience < 0 or not 0 <= self.dropout < 1:
            raise ConfigError("lr and patience must not be negative; dropout is in [0, 1)")

    def identity(self) -> dict[str, Any]:
        """What a resumed run must share with the one that wrote the checkpoints."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ("max_steps", "patience", "threads", "eval_every",
                                  "checkpoint_every")}


class Reporter:
    """What the loop tells its caller; every method may be left as is."""

    def note(self, text: str) -> None: ...

    def start(self, step: int, total: int, resumed: bool) -> None: ...

    def step(self, step: int, loss: float, seconds: float, tokens: int) -> None: ...

    def evaluated(self, step: int, val_loss: float, best: bool) -> None: ...

    def checkpoint(self, step: int) -> None: ...

    def stopped_early(self, step: int, best_step: int) -> None: ...


def _tensors(items: list[Encoded], pad: int, device: Any) -> tuple[Any, Any, Any]:
    import torch

    width = max(len(e.input_ids) for e in items)
    ids = torch.full((len(items), width), pad, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for i, e in enumerate(items):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return ids.to(device), labels.to(device), mask.to(device)


def loss_sum(lm: Any, items: list[Encoded], pad: int) -> tuple[Any, int]:
    """Summed cross-entropy over the answer tokens of ``items``, and their count. ``lm``: a
    causal LM (with any LoRA layers injected); logits only at the answer positions (the
    vocabulary projection is a large part of a small model's cost)."""
    import torch.nn.functional as F

    ids, labels, mask = _tensors(items, pad, next(lm.parameters()).device)
    hidden = lm.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != IGNORE
    logits = lm.get_output_embeddings()(hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), targets[keep], reduction="sum"), int(keep.sum())


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Trainer:
    def __init__(self, model: Any, tokenizer: Any, train: list[Encoded], val: list[Encoded],
                 config: TrainConfig, run: RunDir, reporter: Reporter | None = None) -> None:
        import torch
        from peft import LoraConfig, get_peft_model

        config.check()
        torch.set_num_threads(config.threads or len(os.sched_getaffinity(0)) or 1)
        torch.manual_seed(config.seed)  # the LoRA A matrices' initial values
        present = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        targets = [t for t in config.targets if t in present]
        if not targets:
            raise ConfigError(f"the base model has none of the layers LoRA targets "
                              f"({', '.join(config.targets)})")
        lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                          target_modules=targets, bias="none", task_type="CAUSAL_LM")
        with warnings.catch_warnings():  # transformers deprecation notes peft triggers
            warnings.simplefilter("ignore", FutureWarning)
            self.model = get_peft_model(model, lora)
        self.lora_config = lora
        self.tokenizer = tokenizer
        self.pad = tokenizer.pad_token_id
        self.train_set, self.val_set = train, val
        self.config = config
        self.run = run
        self.reporter = reporter or Reporter()
        self.device = next(model.parameters()).device
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
        self.state = LoopState()
        self.seconds = 0.0  # spent in training steps by this process
        self.tokens = 0  # tokens those steps processed (prompts and answers)
        self.last_loss = math.nan  # the last step's training loss

    # --- data ----------------------------------------------------------------------------
    def _indices(self, step: int, micro: int) -> list[int]:
        cfg, n = self.config, len(self.train_set)
        first = ((step - 1) * cfg.grad_accum + micro) * cfg.batch_size
        out = []
        for g in range(first, first + cfg.batch_size):
            order = list(range(n))
            random.Random(cfg.seed * 1_000_003 + g // n).shuffle(order)
            out.append(order[g % n])
        return out

    def _loss_sum(self, items: list[Encoded]) -> tuple[Any, int]:
        return loss_sum(self.model.get_base_model(), items, self.pad)

    def validation_loss(self) -> float:
        import torch

        total, count = 0.0, 0
        self.model.eval()
        with torch.no_grad():
            for i in range(0, len(self.val_set), self.config.batch_size):
                s, n = self._loss_sum(self.val_set[i:i + self.config.batch_size])
                total, count = total + float(s), count + n
        self.model.train()
        return total / count if count else math.nan

    def _lr(self, step: int) -> float:
        cfg = self.config
        if step <= cfg.warmup_steps:
            return cfg.lr * step / max(1, cfg.warmup_steps)
        span = max(1, cfg.max_steps - cfg.warmup_steps)
        return cfg.lr * (1.0 - 0.9 * (step - cfg.warmup_steps) / span)

    # --- checkpoints ---------------------------------------------------------------------
    def adapter_weights(self) -> dict[str, Any]:
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(self.model)

    def _resume(self) -> None:
        from peft import set_peft_model_state_dict

        latest = self.run.latest()
        if latest is None:
            return
        state, adapter, optimizer = RunDir.load(latest)
        set_peft_model_state_dict(self.model, adapter)
        self.optimizer.load_state_dict(optimizer)
        state.resumed_from.append(state.step)
        self.state = state
        self.run.restore_best(latest, state)

    def _save(self) -> None:
        self.run.save(self.state, self.adapter_weights(), self.optimizer.state_dict())
        self.reporter.checkpoint(self.state.step)

    def _evaluate(self) -> bool:
        """Take the validation loss; True when the run should stop early."""
        st, cfg = self.state, self.config
        val = self.validation_loss()
        st.evals.append((st.step, val))
        better = st.best_val is None or val < st.best_val
        if better:
            st.best_val, st.best_step, st.bad_evals = val, st.step, 0
            self.run.save_best(st.step, val, self.adapter_weights())
        else:
            st.bad_evals += 1
        self.reporter.evaluated(st.step, val, better)
        return cfg.patience > 0 and st.bad_evals >= cfg.patience

    # --- the loop ------------------------------------------------------------------------
    def train(self) -> LoopState:
        cfg = self.config
        self._resume()
        st = self.state
        self.reporter.start(st.step, cfg.max_steps, bool(st.resumed_from))
        self.model.train()
        while st.step < cfg.max_steps and not st.stopped_early:
            step = self._step()
            last = step == cfg.max_steps
            if self.val_set and (step % cfg.eval_every == 0 or last):
                st.stopped_early = self._evaluate() and not last
            if step % cfg.checkpoint_every == 0 or last or st.stopped_early:
                self._save()
        if st.stopped_early:
            self.reporter.stopped_early(st.step, st.best_step)
        return st

    def _step(self) -> int:
        """One optimizer step (the next one); its number."""
        cfg, st = self.config, self.state
        t0 = time.perf_counter()
        step = st.step + 1
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr(step)
        micro = [[self.train_set[i] for i in self._indices(step, m)]
                 for m in range(cfg.grad_accum)]
        n_answer = sum(e.trained_tokens for batch in micro for e in batch) or 1
        tokens, total = 0, 0.0
        for batch in micro:
            s, _ = self._loss_sum(batch)
            (s / n_answer).backward()
            total += float(s.detach())
            tokens += sum(len(e.input_ids) for e in batch)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        st.step = step
        took = time.perf_counter() - t0
        self.seconds += took
        self.tokens += tokens
        self.last_loss = total / n_answer
        self.reporter.step(step, self.last_loss, took, tokens)
        return step

    def local_round(self, steps: int) -> float:
        """``steps`` more optimizer steps and nothing else (no evaluation, no checkpoint):
        a federated site's local training in one round. The mean training loss."""
        self.model.train()
        losses = []
        for _ in range(steps):
            self._step()
            losses.append(self.last_loss)
        return sum(losses) / len(losses) if losses else math.nan

    def final_adapter(self) -> dict[str, Any]:
        """The weights to ship: the best by validation loss, else the last."""
        from peft import set_peft_model_state_dict

        best = self.run.best_adapter() if self.val_set else None
        if best is not None:
            set_peft_model_state_dict(self.model, best)
        return self.adapter_weights()

    def summary(self) -> dict[str, Any]:
        st = self.state
        return {"steps": st.step, "best_step": st.best_step, "best_val_loss": st.best_val,
                "evals": st.evals, "stopped_early": st.stopped_early,
                "resumed_from": st.resumed_from, "config": asdict(self.config),
                "train_seconds": round(self.seconds, 2), "train_tokens": self.tokens,
                "tokens_per_s": round(self.tokens / self.seconds, 1) if self.seconds else None}
