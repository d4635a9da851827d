"""``autoglm federated site``: train on this site's data; send only clipped adapter updates.

The site loads the base and its own examples, connects to the server with mutual TLS
(its certificate names it), and answers Flower's messages on the classic bidirectional
stream (``FlowerService.Join``, Flower's own messages and serialisation):

- ``fit``: load the global adapter, take ``local_steps`` optimizer steps on local data
  (the server sets the training settings; the site refuses a base other than its own),
  and answer with the update (local minus global weights) clipped to the round's norm,
  with the example count;
- ``evaluate``: the loss of the global adapter on the site's held-out examples;
- ``reconnect``: the run is over.

Nothing else leaves the site: no examples, no per-example values, no gradients.
"""

from __future__ import annotations

import math
import queue
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoglm.errors import ConfigError
from autoglm.federated.pki import Credentials
from autoglm.federated.privacy import clip
from autoglm.federated.server import MAX_MESSAGE


@dataclass(frozen=True)
class SiteRequest:
    server: str  # host:port
    credentials: Credentials
    data: Path  # training chats (JSONL, OpenAI fine-tuning format)
    heldout: Path | None = None  # held-out chats; None: 10 % of ``data``
    base: str | None = None
    connect_timeout_s: float = 60.0
    threads: int = 0


class Reporter:
    def note(self, text: str) -> None: ...


class SiteError(ConfigError):
    """The site could not take part (refused, unreachable, or the server's settings)."""


def _status_ok() -> Any:
    from flwr.common import Code, Status

    return Status(code=Code.OK, message="ok")


class Site:
    def __init__(self, settings: Any, req: SiteRequest, reporter: Reporter | None = None):
        self.settings, self.req = settings, req
        self.reporter = reporter or Reporter()
        self.name = req.credentials.common_name()
        self.trainer: Any = None
        self.keys: list[str] = []
        self.rounds = 0

    # --- local state -----------------------------------------------------------------------
    def prepare(self) -> None:
        """Check and load everything before connecting (data errors fail fast)."""
        from autoglm.finetune.base import load, prepare, require_train_extra, resolve_base
        from autoglm.finetune.data import load_examples, split
        from autoglm.finetune.job import bases_dir
        from autoglm.supply.registry import Registry

        from autoglm.federated.strategy import quiet_flower

        require_train_extra()
        quiet_flower()
        data_dir = Path(self.settings.data_dir)
        train = load_examples(self.req.data)
        if self.req.heldout is not None:
            held = load_examples(self.req.heldout)
        else:
            train, held = split(train, 0.1, 0)
        if not held:
            raise ConfigError("the site needs held-out examples (--heldout FILE, or more "
                              "training examples so that 10 % can be held out)")
        self.base = resolve_base(Registry(data_dir), self.req.base)
        self.model, self.tokenizer = load(prepare(self.base, bases_dir(data_dir)))
        self.train_examples, self.held_examples = train, held
        self.reporter.note(f"site {self.name}: {len(train)} training and {len(held)} held-out "
                           f"examples, base {self.base.name}")

    def _trainer(self, config: dict[str, Any]) -> Any:
        """Built at the first instruction, with the server's settings."""
        if self.trainer is not None:
            return self.trainer
        from autoglm.finetune.checkpoint import RunDir
        from autoglm.finetune.data import ChatEncoder
        from autoglm.finetune.train import TrainConfig, Trainer

        if config.get("base_sha256") != self.base.sha256:
            raise SiteError(f"the server trains on a base with sha256 "
                            f"{str(config.get('base_sha256'))[:12]}..., this site has "
                            f"{self.base.name} ({self.base.sha256[:12]}...)")
        cfg = TrainConfig(
            max_steps=int(config["rounds"]) * int(config["local_steps"]),
            batch_size=int(config["batch_size"]), lr=float(config["lr"]),
            rank=int(config["rank"]), alpha=float(config["alpha"]),
            targets=tuple(str(config["targets"]).split(",")), max_len=int(config["max_len"]),
            seed=int(config["seed"]), val_fraction=0.0, threads=self.req.threads)
        encoder = ChatEncoder(self.tokenizer, cfg.max_len)
        run = RunDir(Path(self.settings.data_dir) / "federated" / "site" / self.name)
        self.trainer = Trainer(self.model, self.tokenizer, encoder.encode_all(self.train_examples),
                               encoder.encode_all(self.held_examples), cfg, run)
        for name, param in self.trainer.model.named_parameters():
            if ".lora_A." in name:  # frozen at the server's initial values (see server.py)
                param.requires_grad_(False)
        self.keys = sorted(self.trainer.adapter_weights())
        return self.trainer

    def _weights(self) -> list[Any]:
        state = self.trainer.adapter_weights()
        return [state[k].detach().float().cpu().numpy() for k in self.keys]

    def _load(self, arrays: list[Any]) -> None:
        import torch
        from peft import set_peft_model_state_dict

        mine = self.trainer.adapter_weights()
        if len(arrays) != len(self.keys) or any(
                tuple(a.shape) != tuple(mine[k].shape) for a, k in zip(arrays, self.keys)):
            raise SiteError("the server's adapter does not match this site's LoRA layout")
        set_peft_model_state_dict(self.trainer.model, {
            k: torch.from_numpy(a.copy()) for k, a in zip(self.keys, arrays)})

    # --- Flower's instructions ---------------------------------------------------------------
    def fit(self, ins: Any) -> Any:
        from flwr.common import FitRes, ndarrays_to_parameters, parameters_to_ndarrays

        trainer = self._trainer(ins.config)
        start = parameters_to_ndarrays(ins.parameters)
        self._load(start)
        steps = int(ins.config["local_steps"])
        seconds, tokens = trainer.seconds, trainer.tokens
        loss = trainer.local_round(steps)
        update, norm = clip([b - a for a, b in zip(start, self._weights())],
                            float(ins.config.get("clip", 0.0)))
        self.rounds += 1
        took = trainer.seconds - seconds
        self.reporter.note(f"round {ins.config.get('round')}: {steps} local steps, loss "
                           f"{loss:.4f}, update norm {norm:.4f}, {took:.1f} s")
        return FitRes(status=_status_ok(), parameters=ndarrays_to_parameters(update),
                      num_examples=len(self.train_examples),
                      metrics={"train_loss": float(loss), "update_norm": float(norm),
                               "steps": steps, "tokens": trainer.tokens - tokens,
                               "seconds": round(took, 3)})

    def evaluate(self, ins: Any) -> Any:
        from flwr.common import EvaluateRes, parameters_to_ndarrays

        trainer = self._trainer(ins.config) if self.trainer is None else self.trainer
        self._load(parameters_to_ndarrays(ins.parameters))
        loss = trainer.validation_loss()
        if math.isnan(loss):
            raise SiteError("no held-out tokens to evaluate")
        self.reporter.note(f"round {ins.config.get('round')}: held-out loss {loss:.4f}")
        return EvaluateRes(status=_status_ok(), loss=float(loss),
                           num_examples=len(self.held_examples), metrics={"loss": float(loss)})

    # --- the connection ----------------------------------------------------------------------
    def _channel(self) -> Any:
        import grpc

        creds = self.req.credentials
        channel = grpc.secure_channel(self.req.server, grpc.ssl_channel_credentials(
            root_certificates=creds.ca, private_key=creds.key, certificate_chain=creds.cert),
            options=[("grpc.max_send_message_length", MAX_MESSAGE),
                     ("grpc.max_receive_message_length", MAX_MESSAGE)])
        try:
            grpc.channel_ready_future(channel).result(timeout=self.req.connect_timeout_s)
        except grpc.FutureTimeoutError:
            channel.close()
            raise SiteError(self._refused()) from None
        return channel

    def _refused(self) -> str:
        return (f"no TLS connection to the server at {self.req.server} within "
                f"{self.req.connect_timeout_s:.0f} s: it is not running there, or the TLS "
                "handshake failed (the server accepts only site certificates its "
                "federation's CA signed, and this site trusts only a server certificate "
                "signed by --ca for that address)")

    def run(self) -> int:
        """Take part until the server ends the run; the rounds this site trained in."""
        import grpc
        from flwr.common import serde
        from flwr.proto.transport_pb2 import ClientMessage, Reason
        from flwr.proto.transport_pb2_grpc import FlowerServiceStub

        channel = self._channel()
        outbox: queue.Queue[Any] = queue.Queue(maxsize=1)
        stream = FlowerServiceStub(channel).Join(iter(outbox.get, None))
        self.reporter.note(f"site {self.name}: connected to {self.req.server}")
        got_any = False
        try:
            for msg in stream:
                got_any = True
                kind = msg.WhichOneof("msg")
                if kind == "fit_ins":
                    res = self.fit(serde.fit_ins_from_proto(msg.fit_ins))
                    outbox.put(ClientMessage(fit_res=serde.fit_res_to_proto(res)))
                elif kind == "evaluate_ins":
                    res = self.evaluate(serde.evaluate_ins_from_proto(msg.evaluate_ins))
                    outbox.put(ClientMessage(evaluate_res=serde.evaluate_res_to_proto(res)))
                elif kind == "reconnect_ins":
                    outbox.put(ClientMessage(disconnect_res=ClientMessage.DisconnectRes(
                        reason=Reason.ACK)))
                    break
                else:
                    raise SiteError(f"the server sent an instruction this site does not "
                                    f"take part in ({kind})")
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if not got_any and code == grpc.StatusCode.UNAVAILABLE:
                raise SiteError(self._refused()) from None
            raise SiteError(f"the connection to the server ended: "
                            f"{getattr(code, 'name', code)} {exc.details() or ''}") from None
        finally:
            try:
                outbox.put(None, timeout=2)  # ends the request stream
            except queue.Full:
                pass
            channel.close()
        return self.rounds
