"""Per-model routing over upstream instances.

Weighted least-connections: the next request goes to the healthy instance with the
lowest ``(in_flight + 1) / weight``; ties rotate. Passive health, as nginx's
``max_fails``/``fail_timeout``: ``max_fails`` failures within ``fail_timeout`` take an
instance out for ``fail_timeout``; after that it gets traffic again, and one more failure
takes it out again. An instance being drained gets no new requests; it is removed once
its in-flight requests are done. The clock is injected for tests.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from autoglm.settings import InstanceSpec

Clock = Callable[[], float]


@dataclass(eq=False)
class Instance:
    name: str
    url: str
    weight: int
    api_key: str | None
    upstream_model: str | None
    in_flight: int = 0
    current: int = 0  # smooth weighted round-robin state
    fails: deque[float] = field(default_factory=deque)
    down_until: float = 0.0
    draining: bool = False
    removing: bool = False
    requests: int = 0
    failures_total: int = 0
    last_error: str | None = None
    gate: Callable[[], bool] | None = None  # e.g. "its managed process is ready"
    headers: dict[str, str] = field(default_factory=dict)  # sent with every request

    def __post_init__(self) -> None:
        self.headers = {"Content-Type": "application/json"}
        if self.api_key:
            self.headers["Authorization"] = f"Bearer {self.api_key}"

    def state(self, now: float) -> str:
        if self.draining:
            return "draining"
        if now < self.down_until or (self.gate is not None and not self.gate()):
            return "down"
        return "up"

    def describe(self, now: float, *, with_url: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name, "state": self.state(now), "weight": self.weight,
            "in_flight": self.in_flight, "recent_failures": len(self.fails),
            "requests": self.requests, "failures_total": self.failures_total,
        }
        if with_url:
            out["url"] = self.url
            out["last_error"] = self.last_error
        if now < self.down_until:
            out["retry_in_s"] = round(self.down_until - now, 2)
        return out


class Router:
    def __init__(
        self, model_id: str, max_fails: int, fail_timeout_s: float, clock: Clock = time.monotonic
    ) -> None:
        self.model_id = model_id
        self.max_fails = max_fails
        self.fail_timeout_s = fail_timeout_s
        self.clock = clock
        self.instances: list[Instance] = []
        self._counter = itertools.count()

    def add(self, spec: InstanceSpec) -> Instance:
        name = spec.name or f"{self.model_id}-{next(self._counter)}"
        if any(i.name == name for i in self.instances):
            raise ValueError(f"instance name '{name}' is already used by model '{self.model_id}'")
        inst = Instance(
            name=name, url=spec.url, weight=spec.weight,
            api_key=spec.api_key.get_secret_value() if spec.api_key else None,
            upstream_model=spec.upstream_model,
        )
        self.instances.append(inst)
        return inst

    def find(self, name: str) -> Instance | None:
        return next((i for i in self.instances if i.name == name), None)

    def drain(self, inst: Instance) -> None:
        """No new requests; in-flight ones finish. ``resume`` undoes it."""
        inst.draining = True

    def resume(self, inst: Instance) -> None:
        inst.draining = False
        inst.removing = False

    def remove(self, inst: Instance) -> None:
        """Drain, then forget the instance once its in-flight requests are done."""
        inst.draining = True
        inst.removing = True
        self._reap()

    def _reap(self) -> None:
        self.instances = [i for i in self.instances if not (i.removing and i.in_flight == 0)]

    # --- choosing ------------------------------------------------------------------------
    def pick(self, exclude: set[Instance] | None = None) -> Instance | None:
        """Fewest in-flight per weight; ties broken by smooth weighted round-robin."""
        now = self.clock()
        candidates: list[Instance] = []
        best_load = 0.0
        for inst in self.instances:
            if inst.state(now) != "up" or (exclude and inst in exclude):
                continue
            load = inst.in_flight / inst.weight
            if not candidates or load < best_load:
                candidates, best_load = [inst], load
            elif load == best_load:
                candidates.append(inst)
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        total = 0
        chosen = candidates[0]
        for inst in candidates:
            inst.current += inst.weight
            total += inst.weight
            if inst.current > chosen.current:
                chosen = inst
        chosen.current -= total
        return chosen

    def acquire(self, inst: Instance) -> None:
        inst.in_flight += 1
        inst.requests += 1

    def release(self, inst: Instance) -> None:
        inst.in_flight -= 1
        if inst.removing and inst.in_flight == 0:
            self._reap()

    # --- health ----------------------------------------------------------------------------
    def success(self, inst: Instance) -> None:
        if inst.fails:
            inst.fails.clear()
        inst.down_until = 0.0

    def failure(self, inst: Instance, reason: str) -> None:
        now = self.clock()
        inst.failures_total += 1
        inst.last_error = reason
        inst.fails.append(now)
        while inst.fails and inst.fails[0] <= now - self.fail_timeout_s:
            inst.fails.popleft()
        recently_out = inst.down_until > 0 and now < inst.down_until + self.fail_timeout_s
        if len(inst.fails) >= self.max_fails or recently_out:
            inst.down_until = now + self.fail_timeout_s
            inst.fails.clear()

    def healthy(self) -> int:
        now = self.clock()
        return sum(1 for i in self.instances if i.state(now) == "up")

    def retry_after(self) -> float:
        now = self.clock()
        waits = [i.down_until - now for i in self.instances if not i.draining]
        return max(1.0, min(waits)) if waits else 1.0
