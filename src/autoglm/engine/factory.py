"""Settings -> the engines that serve each model id."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from autoglm.engine import adapters as lora
from autoglm.engine.base import Engine
from autoglm.engine.catalog import is_gguf, resolve_model
from autoglm.engine.llamacpp.client import LlamaCppEngine
from autoglm.engine.upstream.client import UpstreamEngine
from autoglm.errors import ConfigError
from autoglm.settings import ModelSpec, Settings
from autoglm.supply import trust
from autoglm.supply.registry import Registry

log = logging.getLogger("autoglm.engines")


def build_engines(settings: Settings, run_dir: Path) -> dict[str, Engine]:
    """One engine per served model: the settings' ``models`` list, else ``--model-path``
    on the engine ``--engine`` names (embedded llama.cpp by default)."""
    if settings.models:
        if settings.adapters:
            raise ConfigError("adapters are served on the one model of --model/--model-path; "
                              "with a models list, name no adapters")
        engines: dict[str, Engine] = {}
        for spec in settings.models:
            if spec.engine == "llamacpp":
                path, model_id = resolve_model(spec.model_path, spec.id)
                engines[model_id] = _llamacpp(settings, path, model_id, run_dir)
            else:
                engines[spec.id] = UpstreamEngine(settings, spec)
        return engines
    if settings.model is not None:
        settings = _from_registry(settings)
    if settings.engine == "vllm":
        return _managed_vllm(settings, run_dir)
    path, model_id = resolve_model(settings.model_path, settings.model_id)
    return _with_adapters(settings, path, model_id, run_dir)


def _with_adapters(settings: Settings, path: Path, model_id: str,
                   run_dir: Path) -> dict[str, Engine]:
    """The base's engine, and ``BASE:ADAPTER`` for each adapter it loads."""
    state = trust.check(path, settings.model_trust, settings.data_dir, settings.trusted_keys)
    digest, served = lora.plan(settings, path, model_id, state)
    base = LlamaCppEngine(settings, path, model_id, run_dir, verification=state,
                          adapters={a.name: a.gguf for a in served}, base_sha256=digest)
    engines: dict[str, Engine] = {model_id: base}
    for a in served:
        engines[a.model_id] = lora.AdapterEngine(base, a)
    return engines


def attach_engines(settings: Settings, specs: list[dict]) -> dict[str, Engine]:
    """A gateway worker's engines: handles on the engine processes the main process started
    (``attach_spec`` of each), so N workers share one engine per model."""
    engines: dict[str, Engine] = {}
    for spec in sorted(specs, key=lambda s: s["kind"] == "adapter"):  # bases first
        if spec["kind"] == "adapter":
            engines[spec["model_id"]] = lora.attach(spec, engines)
        elif spec["kind"] == "llamacpp":
            sock = Path(spec["socket"])
            engines[spec["model_id"]] = LlamaCppEngine(
                settings, Path(spec["model_path"]), spec["model_id"], sock.parent,
                verification=spec.get("verification"), attached=True)
        else:
            model = ModelSpec.model_validate(spec["spec"])
            engines[model.id] = UpstreamEngine(settings, model)
    return engines


def _llamacpp(settings: Settings, path: Path, model_id: str, run_dir: Path) -> LlamaCppEngine:
    state = trust.check(path, settings.model_trust, settings.data_dir, settings.trusted_keys)
    return LlamaCppEngine(settings, path, model_id, run_dir, verification=state)


def _from_registry(settings: Settings) -> Settings:
    """``--model NAME``: the registered model's files (its GGUF, for llama.cpp)."""
    entry = Registry(settings.data_dir).get(settings.model or "")
    if entry.get("kind") == "adapter":
        raise ConfigError(f"'{entry['name']}' is a LoRA adapter, not a model: serve its base "
                          f"'{entry['base']['name']}' with --adapter {entry['name']}")
    root = Path(entry["path"])
    path = root
    if settings.engine == "llamacpp" and root.is_dir():
        ggufs = [f for f in root.iterdir() if f.suffix == ".gguf"]
        if len(ggufs) != 1:
            raise ConfigError(f"registered model '{entry['name']}' has {len(ggufs)} GGUF files; "
                              "llama.cpp needs exactly one (quantize, or pass --model-path)")
        path = ggufs[0]
    return settings.model_copy(update={"model_path": path,
                                       "model_id": settings.model_id or entry["name"]})


def _managed_vllm(settings: Settings, run_dir: Path) -> dict[str, Engine]:
    from autoglm.engine.vllm.managed import ManagedVllmEngine, plan

    if settings.model_path is None:
        raise ConfigError("--engine vllm needs --model-path (a model directory or file)")
    path = settings.model_path.expanduser()
    if not path.exists():
        raise ConfigError(f"model path not found: {path}")
    model_id = settings.model_id or path.name.removesuffix(".gguf").lower()
    try:
        groups = plan(settings)
    except ConfigError as exc:
        if not settings.vllm_fallback:
            raise
        if not is_gguf(path):
            raise ConfigError(f"{exc.message}; {path} is not a GGUF file, so there is no "
                              "llama.cpp fallback") from None
        log.warning("vLLM cannot run here; serving the GGUF model on llama.cpp instead",
                    extra={"reason": exc.message, "model": model_id})
        path, model_id = resolve_model(path, model_id)
        return _with_adapters(settings, path, model_id, run_dir)
    state = trust.check(path, settings.model_trust, settings.data_dir, settings.trusted_keys)
    files = trust.tree(path, settings.data_dir) if settings.model_trust != "any" else None
    _, served = lora.plan(settings, path, model_id, state)
    engine = ManagedVllmEngine(settings, path, model_id, groups, files=files,
                               lora_modules={a.model_id: a.peft for a in served},
                               max_lora_rank=max((a.rank for a in served), default=0))
    engine.model = replace(engine.model, verification=state)
    engines: dict[str, Engine] = {model_id: engine}
    for a in served:
        engines[a.model_id] = lora.AdapterEngine(engine, a)
    return engines
