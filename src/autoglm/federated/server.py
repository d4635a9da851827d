"""``autoglm federated server``: run the rounds, release a registered, signed adapter.

The server holds no training data. It loads the base (to create the initial adapter and
to write the final one), listens with mutual TLS (a site must present a certificate the
federation's CA signed; gRPC refuses any other in the handshake), waits for the expected
sites, then runs Flower rounds: every connected site trains ``local_steps`` steps from the
global adapter and sends its clipped update; the strategy averages and adds noise;
every site then reports its held-out loss under the new global adapter (the weighted mean
is the loss on the union of the sites' held-out sets). Before each round the privacy
accountant says whether the budget allows it; the run stops when it does not.

Each round and each site's part in it is an audit record (``federated.round``,
``federated.site``), as are the start, a budget stop and the release. The adapter is
registered like ``autoglm finetune``'s (``kind: adapter``, bound to the base's digest)
and signed with ``--sign-key``.
"""

from __future__ import annotations

import shutil
import threading
import time
import warnings
from concurrent import futures
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autoglm.errors import ConfigError
from autoglm.federated.pki import Credentials
from autoglm.federated.privacy import Accountant, DPConfig
from autoglm.finetune.train import TARGETS

MAX_MESSAGE = 256 * 1024 * 1024


@dataclass(frozen=True)
class ServerRequest:
    name: str  # the adapter to register
    address: str  # host:port to listen on
    credentials: Credentials
    sites: int = 3  # wait for this many before the first round
    min_sites: int = 2  # a round needs this many results
    rounds: int = 3
    local_steps: int = 4
    batch_size: int = 4
    lr: float = 2e-3
    server_lr: float = 1.0  # scales the averaged update (FedAvg: 1)
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = TARGETS
    max_len: int = 512
    seed: int = 0
    dp: DPConfig = field(default_factory=DPConfig)
    join_timeout_s: float = 600.0
    round_timeout_s: float = 900.0
    base: str | None = None
    sign_key: Path | None = None

    def check(self) -> None:
        if not 1 <= self.min_sites <= self.sites:
            raise ConfigError("min-sites must be between 1 and sites")
        if self.server_lr <= 0:
            raise ConfigError("server-lr must be positive")
        for what in ("rounds", "local_steps", "batch_size", "rank"):
            if getattr(self, what) < 1:
                raise ConfigError(f"{what.replace('_', '-')} must be at least 1")
        self.dp.check()
        if self.sign_key is not None and not self.sign_key.is_file():
            raise ConfigError(f"signing key not found: {self.sign_key}")

    def fit_config(self, base_sha256: str) -> dict[str, Any]:
        """What every site trains with (Flower config values are scalars)."""
        return {"rounds": self.rounds, "local_steps": self.local_steps,
                "batch_size": self.batch_size, "lr": self.lr, "rank": self.rank,
                "alpha": self.alpha, "targets": ",".join(self.targets),
                "max_len": self.max_len, "seed": self.seed, "clip": self.dp.clip,
                "base_sha256": base_sha256}


class Reporter:
    def note(self, text: str) -> None: ...


def _site_servicer(client_manager: Any) -> Any:
    """Flower's servicer, with each connection's client id set to the site's name as its
    certificate gives it (the id the strategy and the audit records see)."""
    from flwr.server.superlink.fleet.grpc_bidi.flower_service_servicer import (
        FlowerServiceServicer,
    )
    from flwr.server.superlink.fleet.grpc_bidi.grpc_client_proxy import GrpcClientProxy

    local = threading.local()

    class SiteServicer(FlowerServiceServicer):  # type: ignore[misc]
        def Join(self, request_iterator: Any, context: Any) -> Any:  # noqa: N802 - gRPC's name
            names = context.auth_context().get("x509_common_name") or []
            if not names:  # never without mutual TLS; refuse rather than name it
                context.abort(16, "a site certificate is required")  # UNAUTHENTICATED
            local.site = names[0].decode()
            # Flower builds the proxy during the generator's first step, in this thread
            yield from super().Join(request_iterator, context)

    return SiteServicer(
        client_manager,
        grpc_client_proxy_factory=lambda cid, bridge: GrpcClientProxy(cid=local.site,
                                                                      bridge=bridge))


def _grpc_server(address: str, creds: Credentials, client_manager: Any) -> Any:
    import grpc
    from flwr.proto.transport_pb2_grpc import add_FlowerServiceServicer_to_server

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64), options=[
        ("grpc.max_send_message_length", MAX_MESSAGE),
        ("grpc.max_receive_message_length", MAX_MESSAGE)])
    add_FlowerServiceServicer_to_server(_site_servicer(client_manager), server)
    credentials = grpc.ssl_server_credentials(
        [(creds.key, creds.cert)], root_certificates=creds.ca, require_client_auth=True)
    try:
        port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise ConfigError(f"cannot listen on {address}: {exc}") from None
    if port == 0:
        raise ConfigError(f"cannot listen on {address} (in use, or not an address here)")
    return server


@dataclass
class ServerResult:
    entry: dict[str, Any]
    summary: dict[str, Any]


class FederatedServer:
    def __init__(self, settings: Any, req: ServerRequest, audit: Any,
                 reporter: Reporter | None = None) -> None:
        self.settings, self.req, self.audit = settings, req, audit
        self.reporter = reporter or Reporter()
        self.rounds: list[dict[str, Any]] = []

    def _record(self, action: str, decision: str = "allow", *, actor: str = "federated-server",
                resource: str = "", **detail: Any) -> None:
        from autoglm.audit.record import Record

        self.audit.append([Record(action=action, decision=decision, actor=actor[:64],
                                  resource=resource or f"model:{self.req.name}",
                                  model=self.req.name, detail=detail)])

    def _on_site(self, rnd: int, site: str, outcome: str, detail: dict[str, Any]) -> None:
        clean = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in detail.items()}
        self._record("federated.site", "allow" if outcome == "aggregated" else "error",
                     actor=f"site:{site}", round=rnd, outcome=outcome, **clean)

    def run(self) -> ServerResult:
        import torch
        from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
        from flwr.server import Server
        from flwr.server.client_manager import SimpleClientManager
        from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

        from autoglm.finetune.base import load, prepare, require_train_extra, resolve_base
        from autoglm.finetune.job import bases_dir
        from autoglm.federated.strategy import make_strategy, quiet_flower
        from autoglm.supply.registry import Registry

        require_train_extra()
        quiet_flower()
        req, data_dir = self.req, Path(self.settings.data_dir)
        req.check()
        registry = Registry(data_dir)
        registry.ensure_free(req.name)
        base = resolve_base(registry, req.base)
        self.reporter.note(f"base {base.name} (sha256 {base.sha256[:12]}...)")
        model, _ = load(prepare(base, bases_dir(data_dir)))
        torch.manual_seed(req.seed)
        present = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        lora = LoraConfig(r=req.rank, lora_alpha=req.alpha, lora_dropout=0.0, bias="none",
                          target_modules=[t for t in req.targets if t in present],
                          task_type="CAUSAL_LM")
        with warnings.catch_warnings():  # transformers deprecation notes peft triggers
            warnings.simplefilter("ignore", FutureWarning)
            peft_model = get_peft_model(model, lora)
        state = get_peft_model_state_dict(peft_model)
        keys = sorted(state)
        initial = [state[k].detach().float().numpy() for k in keys]

        accountant = Accountant(req.dp)
        cm = SimpleClientManager()
        strategy = make_strategy(initial=initial, trained=[".lora_B." in k for k in keys],
                                 server_lr=req.server_lr, min_sites=req.min_sites,
                                 accountant=accountant, fit_config=req.fit_config(base.sha256),
                                 on_site=self._on_site)
        flower = Server(client_manager=cm, strategy=strategy)
        flower.parameters = ndarrays_to_parameters(initial)
        grpc_server = _grpc_server(req.address, req.credentials, cm)
        grpc_server.start()
        started = time.monotonic()
        self._record("federated.start", rounds=req.rounds, sites=req.sites,
                     min_sites=req.min_sites, local_steps=req.local_steps,
                     dp=asdict(req.dp), base=base.sha256)
        self.reporter.note(f"listening on {req.address} (mutual TLS); waiting for "
                           f"{req.sites} sites")
        if not req.dp.enabled:
            self.reporter.note("differential privacy is off (--noise-multiplier 0): the "
                               "released adapter carries no privacy guarantee"
                               + ("" if req.dp.clip else "; updates are not clipped"))
        try:
            if not cm.wait_for(req.sites, timeout=int(req.join_timeout_s)):
                have = cm.num_available()
                if have < req.min_sites:
                    raise ConfigError(f"only {have} of {req.sites} sites joined within "
                                      f"{req.join_timeout_s:.0f} s (at least {req.min_sites} "
                                      "needed)")
                self.reporter.note(f"{have} of {req.sites} sites joined; starting with them")
            self.reporter.note("sites: " + ", ".join(sorted(cm.all())))
            self._rounds(flower, strategy, accountant)
        finally:
            try:
                flower.disconnect_all_clients(timeout=10)
            finally:
                grpc_server.stop(grace=2)
        applied = [r for r in self.rounds if r["applied"]]
        if not applied:
            self._record("federated.finish", "error", why="no round was applied")
            raise ConfigError("no round was applied (too few sites answered); nothing released")
        weights = dict(zip(keys, parameters_to_ndarrays(flower.parameters)))
        entry = self._release(base, peft_model, weights, lora, accountant, started)
        return ServerResult(entry, entry["federated"])

    def _rounds(self, flower: Any, strategy: Any, accountant: Accountant) -> None:
        req = self.req
        for rnd in range(1, req.rounds + 1):
            if not accountant.allows_another():
                eps = accountant.epsilon_after(accountant.rounds + 1)
                self._record("federated.budget_stop", round=rnd,
                             epsilon_spent=accountant.epsilon, epsilon_next=round(eps, 4),
                             budget=req.dp.epsilon_budget)
                self.reporter.note(f"privacy budget: round {rnd} would reach epsilon "
                                   f"{eps:.2f} > {req.dp.epsilon_budget}; stopping")
                break
            t0 = time.monotonic()
            res = flower.fit_round(server_round=rnd, timeout=req.round_timeout_s)
            if res is not None and res[0] is not None:
                flower.parameters = res[0]
            report = strategy.reports.get(rnd)
            evaluated = flower.evaluate_round(server_round=rnd, timeout=req.round_timeout_s)
            loss = evaluated[0] if evaluated else None
            row = {"round": rnd, "applied": bool(report and report.applied),
                   "sites": report.sites if report else [],
                   "failed": report.failed if report else [],
                   "examples": report.examples if report else 0,
                   "train_loss": report.train_loss if report else None,
                   "heldout_loss": loss, "noise_std": report.noise_std if report else 0.0,
                   "epsilon": report.epsilon if report else None,
                   "seconds": round(time.monotonic() - t0, 1)}
            self.rounds.append(row)
            self._record("federated.round", "allow" if row["applied"] else "error",
                         resource=f"model:{req.name}#round{rnd}",
                         **{k: (round(v, 6) if isinstance(v, float) else v)
                            for k, v in row.items()})
            eps = f", epsilon {row['epsilon']:.2f}" if row["epsilon"] is not None else ""
            held = f"{loss:.4f}" if loss is not None else "-"
            self.reporter.note(
                f"round {rnd}/{req.rounds}: {'applied' if row['applied'] else 'NOT applied'}"
                f", sites {', '.join(row['sites']) or '-'}"
                + (f" (failed: {', '.join(row['failed'])})" if row["failed"] else "")
                + f", held-out loss {held}{eps}, {row['seconds']} s")

    def _release(self, base: Any, peft_model: Any, weights: dict[str, Any], lora: Any,
                 accountant: Accountant, started: float) -> dict[str, Any]:
        import torch
        from peft import set_peft_model_state_dict

        from autoglm.finetune.export import (
            GGUF_FILE,
            PEFT_DIR,
            gguf_architecture,
            write_gguf,
            write_peft,
        )
        from autoglm.finetune.register import register_adapter
        from autoglm.supply.registry import Registry

        req, data_dir = self.req, Path(self.settings.data_dir)
        registry = Registry(data_dir)
        tensors = {k: torch.from_numpy(v.copy()) for k, v in weights.items()}
        set_peft_model_state_dict(peft_model, tensors)
        staged = data_dir / "federated" / "staging" / req.name
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir(parents=True)
        model = peft_model.get_base_model()
        arch = gguf_architecture(base.path) if base.gguf else str(model.config.model_type)
        write_gguf(tensors, staged / GGUF_FILE, arch=arch, config=model.config,
                   alpha=req.alpha, name=req.name, base_sha256=base.sha256)
        write_peft(peft_model, staged / PEFT_DIR, base.describe())
        summary = {
            "federated": True, "rounds": self.rounds,
            "rounds_applied": sum(1 for r in self.rounds if r["applied"]),
            "dp": {**asdict(req.dp), "epsilon": accountant.epsilon if req.dp.enabled else None,
                   "accounting": "Gaussian DP (exact composition), every round charged to "
                                 "every site; unit: one site's update"},
            "config": {**req.fit_config(base.sha256), "server_lr": req.server_lr},
            "seconds": round(time.monotonic() - started, 1)}
        entry = register_adapter(
            registry, req.name, staged, base=base.describe(), source="federated",
            lora={"rank": req.rank, "alpha": req.alpha, "targets": sorted(lora.target_modules)},
            training=summary)
        entry["federated"] = summary
        registry.save(entry)
        signer = None
        if req.sign_key is not None:
            from autoglm.supply.signing import sign

            entry = sign(registry, req.name, req.sign_key)
            signer = entry["signed_by"]
        self._record("federated.finish", rounds_applied=summary["rounds_applied"],
                     epsilon=summary["dp"]["epsilon"], delta=req.dp.delta,
                     manifest_sha256=entry.get("manifest_sha256"), signed_by=signer)
        return entry
