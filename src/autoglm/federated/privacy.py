"""Differential privacy of the federated rounds: clipping, Gaussian noise, the budget.

The unit protected is a **site**: whatever one site sends in a round (its adapter update)
could be replaced by any other update, and the aggregated adapter the server releases
changes in distribution by at most (epsilon, delta). The mechanism (DP-FedAvg):

- each site clips its update (local weights minus the round's global weights, all LoRA
  tensors as one vector) to L2 norm ``clip`` before it leaves the site;
- the server averages the clipped updates weighted by example counts (w_i = n_i / sum n;
  the counts are treated as public) and adds Gaussian noise of standard deviation
  ``noise_multiplier * clip * max_i w_i`` to every coordinate. One site's weighted update
  moves the sum by at most ``max w * clip``, so each round is a Gaussian mechanism with
  noise multiplier ``noise_multiplier``.

Accounting uses Gaussian differential privacy (Dong, Roth and Su, 2019): T rounds of a
Gaussian mechanism with multiplier z compose exactly to mu-GDP with mu = sqrt(T) / z, and
mu-GDP is (epsilon, delta)-DP for delta(epsilon) = Phi(-epsilon/mu + mu/2) -
e^epsilon Phi(-epsilon/mu - mu/2); epsilon for the chosen delta is found by bisection.
This is tight for full participation; every round is charged to every site (a site that
missed a round is not credited), so the figure is an upper bound per site.

With three sites the noise that a small epsilon needs is far larger than any site's
update; README states the epsilon the shipped test reaches and what it costs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from autoglm.errors import ConfigError


@dataclass(frozen=True)
class DPConfig:
    noise_multiplier: float = 0.0  # 0: no noise (and no privacy claim)
    clip: float = 0.0  # L2 bound of a site's update; 0: not clipped
    delta: float = 1e-5
    epsilon_budget: float | None = None  # stop before a round that would spend more

    def check(self) -> None:
        if self.noise_multiplier < 0 or self.clip < 0:
            raise ConfigError("noise multiplier and clip must not be negative")
        if self.noise_multiplier > 0 and self.clip <= 0:
            raise ConfigError("differential privacy needs a clip norm (--clip) with the noise")
        if not 0 < self.delta < 1:
            raise ConfigError("delta must be between 0 and 1 (e.g. 1e-5)")
        if self.epsilon_budget is not None and self.epsilon_budget <= 0:
            raise ConfigError("the epsilon budget must be positive")
        if self.epsilon_budget is not None and self.noise_multiplier <= 0:
            raise ConfigError("an epsilon budget needs noise (--noise-multiplier > 0)")

    @property
    def enabled(self) -> bool:
        return self.noise_multiplier > 0


def l2_norm(arrays: list[Any]) -> float:
    return math.sqrt(sum(float((a.astype("float64") ** 2).sum()) for a in arrays))


def clip(update: list[Any], bound: float) -> tuple[list[Any], float]:
    """``update`` scaled to L2 norm at most ``bound`` (0: unchanged); and its norm before."""
    norm = l2_norm(update)
    if bound <= 0 or norm <= bound:
        return update, norm
    scale = bound / norm
    return [a * scale for a in update], norm


def _log_phi(x: float) -> float:
    """log of the standard normal CDF, stable far into the lower tail."""
    if x > -30:
        return math.log(0.5 * math.erfc(-x / math.sqrt(2)))
    inv = 1 / (x * x)
    return (-x * x / 2 - math.log(-x) - 0.5 * math.log(2 * math.pi)
            + math.log(1 - inv + 3 * inv * inv))


def gdp_delta(mu: float, eps: float) -> float:
    """delta of mu-GDP at epsilon."""
    a = math.exp(_log_phi(-eps / mu + mu / 2))
    b = math.exp(eps + _log_phi(-eps / mu - mu / 2))
    return max(0.0, a - b)


def gdp_epsilon(mu: float, delta: float) -> float:
    """The smallest epsilon at which mu-GDP is (epsilon, delta)-DP."""
    if mu <= 0:
        return 0.0
    if gdp_delta(mu, 0.0) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while gdp_delta(mu, hi) > delta:
        lo, hi = hi, hi * 2
        if hi > 1e7:
            return math.inf
    for _ in range(100):
        mid = (lo + hi) / 2
        if gdp_delta(mu, mid) > delta:
            lo = mid
        else:
            hi = mid
    return hi


@dataclass
class Accountant:
    """The privacy spent by the rounds so far (every round charged to every site)."""

    config: DPConfig
    rounds: int = 0
    history: list[float] = field(default_factory=list)  # epsilon after each round

    def _mu(self, rounds: int) -> float:
        return math.sqrt(rounds) / self.config.noise_multiplier

    def epsilon_after(self, rounds: int) -> float:
        if not self.config.enabled:
            return math.inf
        return gdp_epsilon(self._mu(rounds), self.config.delta)

    @property
    def epsilon(self) -> float:
        return self.epsilon_after(self.rounds) if self.rounds else 0.0

    def allows_another(self) -> bool:
        budget = self.config.epsilon_budget
        return budget is None or self.epsilon_after(self.rounds + 1) <= budget

    def spend(self) -> float:
        self.rounds += 1
        self.history.append(self.epsilon)
        return self.history[-1]

    def noise_std(self, max_weight: float) -> float:
        return self.config.noise_multiplier * self.config.clip * max_weight
