"""How many prompt tokens one decode step takes, so that prefill does not stall decoding.

With no answer being generated a step takes as many prompt tokens as the batch holds.
While answers stream, every prompt token in a step delays each of their next tokens, so
a long prompt is fed in chunks of at most the budget per step:

- ``prefill_budget_tokens`` > 0: that many tokens per step;
- 0 (auto): as many as keep a step within ``prefill_stall_factor`` times a step without
  prompt tokens, from the step times measured on this machine (decode-only steps, per
  number of generating slots, and the cost of one more prompt token), so it adapts to
  the model, the threads and the load.

A prompt whose whole rest is at most ``prefill_short_tokens`` goes in at once: requests
that arrive together reach their first tokens as with one batched prefill, and only
long prompts are spread over steps.
"""

from __future__ import annotations

from dataclasses import dataclass

_ALPHA = 0.2  # weight of a new measurement in the moving averages
_FIRST_GUESS = 2  # tokens per step before any cost was measured


@dataclass
class BudgetConfig:
    n_batch: int
    fixed: int = 0
    stall_factor: float = 1.5
    short: int = 64


class PrefillBudget:
    def __init__(self, config: BudgetConfig) -> None:
        self.config = config
        self._decode_s: dict[int, float] = {}  # generating slots -> decode-only step seconds
        self._token_s: float | None = None  # seconds one more prompt token adds to a step

    def tokens(self, generating: int) -> int:
        """The step's budget for prompt tokens of long prompts."""
        cfg = self.config
        if generating == 0:
            return cfg.n_batch
        if cfg.fixed > 0:
            return min(cfg.fixed, cfg.n_batch)
        base = self._decode_s.get(generating) or self._nearest(generating)
        if base is None or self._token_s is None:
            return _FIRST_GUESS
        room = (cfg.stall_factor - 1.0) * base
        return max(1, min(cfg.n_batch, int(room / self._token_s)))

    def short(self, rest: int) -> bool:
        return rest <= self.config.short

    def observe(self, generating: int, prompt_tokens: int, seconds: float) -> None:
        """One step's measured ``llama_decode`` time."""
        if prompt_tokens == 0:
            if generating > 0:
                old = self._decode_s.get(generating)
                self._decode_s[generating] = seconds if old is None else \
                    old + _ALPHA * (seconds - old)
            return
        base = self._decode_s.get(generating) or self._nearest(generating) or 0.0
        if generating == 0 and prompt_tokens < 16:
            return  # a short prefill alone is mostly fixed cost: says little per token
        per = max(seconds - base, 0.0) / prompt_tokens
        self._token_s = per if self._token_s is None else \
            self._token_s + _ALPHA * (per - self._token_s)

    def _nearest(self, generating: int) -> float | None:
        if not self._decode_s:
            return None
        k = min(self._decode_s, key=lambda n: abs(n - generating))
        return self._decode_s[k]
