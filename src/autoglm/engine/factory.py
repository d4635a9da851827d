"""Settings -> the engines that serve each model id."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

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
    return {model_id: _llamacpp(settings, path, model_id, run_dir)}


def attach_engines(settings: Settings, specs: list[dict]) -> dict[str, Engine]:
    """A gateway worker's engines: handles on the engine processes the main process started
    (``attach_spec`` of each), so N workers share one engine per model."""
    engines: dict[str, Engine] = {}
    for spec in specs:
        if spec["kind"] == "llamacpp":
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
        return {model_id: _llamacpp(settings, path, model_id, run_dir)}
    state = trust.check(path, settings.model_trust, settings.data_dir, settings.trusted_keys)
    files = trust.tree(path, settings.data_dir) if settings.model_trust != "any" else None
    engine = ManagedVllmEngine(settings, path, model_id, groups, files=files)
    engine.model = replace(engine.model, verification=state)
    return {model_id: engine}
