"""The server's strategy: Flower's FedAvg over clipped adapter updates, plus noise.

Sites send updates (local LoRA weights minus the round's global ones), never weights or
data. ``aggregate_fit`` checks each update's shapes against the global adapter, clips it
again (a site's own clipping is not trusted), averages the updates weighted by the
sites' example counts, adds the Gaussian noise of ``privacy`` and applies the result to
the global adapter. A round with fewer than ``min_sites`` results changes nothing. What
happened to each site in each round is handed to ``on_site`` (the server audits it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from autoglm.federated.privacy import Accountant, clip


@dataclass
class RoundReport:
    round: int
    sites: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    examples: int = 0
    train_loss: float | None = None
    noise_std: float = 0.0
    epsilon: float | None = None
    applied: bool = False
    refused: dict[str, str] = field(default_factory=dict)  # site: why its update was dropped


SiteEvent = Callable[[int, str, str, dict[str, Any]], None]  # round, site, outcome, detail


def _weighted_metrics(results: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """Example-weighted means of the numeric metrics the sites reported."""
    total = sum(n for n, _ in results) or 1
    names = {k for _, m in results for k, v in m.items() if isinstance(v, int | float)}
    return {k: sum(n * float(m.get(k, 0.0)) for n, m in results) / total for k in names}


def quiet_flower() -> None:
    """Flower logs every step of a round at INFO; our own lines say what matters."""
    import logging

    logging.getLogger("flwr").setLevel(logging.WARNING)


def make_strategy(*, initial: list[Any], trained: list[bool], min_sites: int,
                  accountant: Accountant, fit_config: dict[str, Any], on_site: SiteEvent,
                  server_lr: float = 1.0) -> Any:
    """A FedAvg subclass (built here so that flwr is imported only when federating).
    ``trained``: per tensor, whether sites train it (the LoRA B matrices); updates to the
    others (the A matrices, frozen) are dropped, and only trained tensors get noise.
    ``server_lr`` scales the averaged update before it is applied (1: plain FedAvg)."""
    import numpy as np
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import FedAvg

    class DPFedAvg(FedAvg):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(
                fraction_fit=1.0, fraction_evaluate=1.0, min_fit_clients=min_sites,
                min_evaluate_clients=min_sites, min_available_clients=min_sites,
                accept_failures=True, initial_parameters=ndarrays_to_parameters(initial),
                on_fit_config_fn=lambda rnd: {**fit_config, "round": rnd},
                on_evaluate_config_fn=lambda rnd: {"round": rnd},
                evaluate_metrics_aggregation_fn=_weighted_metrics,
                fit_metrics_aggregation_fn=_weighted_metrics)
            self.global_weights = [np.asarray(a) for a in initial]
            self.reports: dict[int, RoundReport] = {}
            self.sampled: dict[int, list[str]] = {}  # round: the sites asked to train
            self.rng = np.random.default_rng()  # seeded from the OS: the noise is not replayable

        def configure_fit(self, server_round: int, parameters: Any,
                          client_manager: Any) -> list[Any]:
            asked = super().configure_fit(server_round, parameters, client_manager)
            self.sampled[server_round] = [proxy.cid for proxy, _ in asked]
            return asked

        def aggregate_fit(self, server_round: int, results: list[Any],
                          failures: list[Any]) -> tuple[Any, dict[str, Any]]:
            report = RoundReport(server_round)
            self.reports[server_round] = report
            # Flower hands failures over as bare exceptions (no site): the sites asked in
            # this round that sent no result are the ones that failed
            answered = {proxy.cid for proxy, _ in results}
            for site in sorted(set(self.sampled.get(server_round, ())) - answered):
                report.failed.append(site)
                on_site(server_round, site, "failed", {"why": "no result (dropped out, "
                                                              "timed out or failed)"})
            updates: list[tuple[str, list[Any], int, dict[str, Any]]] = []
            for proxy, res in results:
                site = proxy.cid
                delta = parameters_to_ndarrays(res.parameters)
                shapes = [a.shape for a in self.global_weights]
                if [d.shape for d in delta] != shapes or res.num_examples < 1:
                    report.refused[site] = "update does not match the adapter's shapes"
                    on_site(server_round, site, "refused", {"why": report.refused[site]})
                    continue
                delta = [d.astype(np.float32) if keep else np.zeros_like(d, np.float32)
                         for d, keep in zip(delta, trained)]
                delta, norm = clip(delta, accountant.config.clip)
                updates.append((site, delta, int(res.num_examples),
                                {**res.metrics, "norm_received": round(norm, 6)}))
            if len(updates) < min_sites:
                for site, _, n, metrics in updates:
                    on_site(server_round, site, "discarded",
                            {"examples": n, "why": f"fewer than {min_sites} sites in the round"})
                return None, {"sites": len(updates), "applied": 0}
            total = sum(n for _, _, n, _ in updates)
            weights = [n / total for _, _, n, _ in updates]
            agg = [np.zeros_like(g, dtype=np.float32) for g in self.global_weights]
            for w, (_, delta, _, _) in zip(weights, updates):
                for a, d in zip(agg, delta):
                    a += np.float32(w) * d
            std = accountant.noise_std(max(weights)) if accountant.config.enabled else 0.0
            if std > 0:
                for a, keep in zip(agg, trained):
                    if keep:
                        a += self.rng.normal(0.0, std, size=a.shape).astype(np.float32)
            step = np.float32(server_lr)
            self.global_weights = [g + step * a for g, a in zip(self.global_weights, agg)]
            report.sites = [s for s, _, _, _ in updates]
            report.examples = total
            losses = [(m.get("train_loss"), n) for _, _, n, m in updates]
            if all(isinstance(v, float) for v, _ in losses):
                report.train_loss = sum(v * n for v, n in losses) / total  # type: ignore[operator]
            report.noise_std = std
            report.applied = True
            report.epsilon = accountant.spend() if accountant.config.enabled else None
            for (site, _, n, metrics), w in zip(updates, weights):
                on_site(server_round, site, "aggregated",
                        {"examples": n, "weight": round(w, 4), **metrics})
            return ndarrays_to_parameters(self.global_weights), {
                "sites": len(updates), "applied": 1, "examples": total}

    return DPFedAvg()
