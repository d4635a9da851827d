"""LoRA adapters served on a base model, each under its own model id ``BASE:ADAPTER``.

``plan`` checks every adapter the settings name before any engine starts: registered,
an adapter, trained on exactly the base being served (its SHA-256; a mismatch is refused
with both digests named), and accepted by ``model_trust`` like any model (manifest,
signature); the adapter file is hashed here and must match. The base's engine then
loads them all on its one copy of the base weights.

``AdapterEngine`` is what the gateway routes ``BASE:ADAPTER`` to: the base's engine, its
admission queue and its slots (adapters add no capacity), with the adapter named in
each request. The embedded engine decodes one adapter's requests at a time
(``llamacpp/scheduler.py``); vLLM mixes adapters in one batch (its LoRA support, with
the adapters passed as ``--lora-modules``) and is asked for the adapter by model name.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from autoglm.engine.base import EngineHealth, Event, ModelCard
from autoglm.errors import ConfigError
from autoglm.settings import Settings
from autoglm.supply import manifest as mf
from autoglm.supply import trust
from autoglm.supply.registry import Registry


@dataclass(frozen=True)
class ServedAdapter:
    name: str  # registry name, what the engine calls it
    model_id: str  # BASE:NAME, what clients call it
    gguf: Path  # llama.cpp's adapter file
    peft: Path  # the PEFT directory (vLLM)
    rank: int
    verification: dict[str, Any]


def adapter_id(base_id: str, name: str) -> str:
    return f"{base_id}:{name}"


def base_digest(settings: Settings, path: Path, state: dict[str, Any] | None) -> str:
    """The served base's SHA-256 as adapters record it: of its GGUF file (the trust check's
    when it computed one), or of a registered directory's manifest."""
    if path.is_file():
        load = (state or {}).get("load") or {}
        return load.get("sha256") or mf.sha256_file(path)
    from autoglm.finetune.base import directory_digest

    for entry in Registry(settings.data_dir).list():
        if Path(entry["path"]).resolve() == path.resolve():
            return directory_digest(entry["manifest"])
    raise ConfigError(f"adapters need a registered base; {path} is not a registered model")


def plan(settings: Settings, base_path: Path, base_id: str,
         base_state: dict[str, Any] | None) -> tuple[str, list[ServedAdapter]]:
    """(the base's digest, the adapters ``settings.adapters`` names, each checked)."""
    if not settings.adapters:
        return "", []
    from autoglm.finetune.register import adapter_gguf, check_base, is_adapter, peft_dir

    digest = base_digest(settings, base_path, base_state)
    registry = Registry(settings.data_dir)
    out = []
    for name in dict.fromkeys(settings.adapters):
        entry = registry.get(name)
        if not is_adapter(entry):
            raise ConfigError(f"'{name}' is not a LoRA adapter (see `autoglm model list`); "
                              "serve it as a model of its own")
        check_base(entry, digest, base_id)
        gguf = adapter_gguf(entry)
        state = trust.check(gguf, settings.model_trust, settings.data_dir, settings.trusted_keys)
        want = (state.get("load") or {}).get("sha256")
        if want and mf.sha256_file(gguf) != want:
            raise ConfigError(f"refusing adapter '{name}': {gguf.name} does not hash to its "
                              f"manifest's SHA-256; run `autoglm model verify {name}`")
        state = {**state, "adapter": {"name": name, "base_sha256": digest}}
        out.append(ServedAdapter(name, adapter_id(base_id, name), gguf, peft_dir(entry),
                                 int(entry.get("lora", {}).get("rank", 8)), state))
    return digest, out


class AdapterEngine:
    """``BASE:ADAPTER``: every call goes to the base's engine, with the adapter named."""

    def __init__(self, base: Any, adapter: ServedAdapter) -> None:
        self.base = base
        self.adapter = adapter
        card = base.model
        self.model = ModelCard(id=adapter.model_id, owned_by=card.owned_by,
                               created=int(time.time()), context_length=card.context_length,
                               verification=adapter.verification)
        self.in_flight = 0

    @property
    def queue(self) -> Any:  # the base's slots: one admission queue for all its adapters
        return self.base.queue

    async def start(self) -> None:  # the base's engine is started (and closed) as itself
        return None

    async def close(self) -> None:
        return None

    def capacity(self) -> int:
        return self.base.capacity()

    def check_available(self) -> None:
        self.base.check_available()

    def prepare(self, request: Any) -> None:
        self.base.prepare(request)
        gen = getattr(request, "generation", None)
        if gen is not None and hasattr(gen, "adapter"):
            request.generation = replace(gen, adapter=self.adapter.name)

    async def generate(self, request: Any) -> AsyncIterator[Event]:
        if getattr(request, "generation", None) is None or \
                getattr(request.generation, "adapter", None) != self.adapter.name:
            self.prepare(request)
        self.in_flight += 1
        try:
            async for event in self.base.generate(request):
                yield event
        finally:
            self.in_flight -= 1

    async def health(self) -> EngineHealth:
        found = await self.base.health()
        return replace(found, name=f"{found.name}:{self.adapter.name}",
                       detail={**found.detail, "adapter_of": self.base.model.id})

    def stats(self) -> dict[str, int]:
        """Its own requests in flight; slots, queue and restarts are the base's."""
        base = self.base.stats()
        return {"up": base["up"], "slots": base["slots"], "busy": self.in_flight, "queued": 0,
                "restarts": base["restarts"]}

    def attach_spec(self) -> dict[str, Any]:
        return {"kind": "adapter", "base": self.base.model.id, "model_id": self.model.id,
                "adapter": {"name": self.adapter.name, "model_id": self.adapter.model_id,
                            "gguf": str(self.adapter.gguf), "peft": str(self.adapter.peft),
                            "rank": self.adapter.rank,
                            "verification": self.adapter.verification}}


def attach(spec: dict[str, Any], engines: dict[str, Any]) -> AdapterEngine:
    """A gateway worker's view of an adapter (``AdapterEngine.attach_spec``)."""
    a = spec["adapter"]
    served = ServedAdapter(a["name"], a["model_id"], Path(a["gguf"]), Path(a["peft"]),
                           int(a["rank"]), a["verification"])
    return AdapterEngine(engines[spec["base"]], served)
