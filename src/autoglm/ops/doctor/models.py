"""The models: registered ones still match their manifests, the configured ones resolve
and pass the trust policy, and the machine has the memory to serve them with their slots."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from autoglm.engine.catalog import resolve_model
from autoglm.engine.factory import _from_registry
from autoglm.errors import AutoGLMError
from autoglm.ops.doctor.gguf_meta import kv_bytes_per_token
from autoglm.ops.doctor.result import Result, failed, passed, skipped, warned
from autoglm.ops.doctor.runner import Context
from autoglm.settings import Settings
from autoglm.supply import manifest as mf
from autoglm.supply import trust
from autoglm.supply.registry import Registry

MIB = 1 << 20
GIB = 1 << 30
ENGINE_OVERHEAD = 256 * MIB  # llama.cpp compute buffers and the engine process
PROCESS_OVERHEAD = 160 * MIB  # the gateway's Python process (each worker, and the main one)


@dataclass(frozen=True)
class Served:
    """One model the settings serve; ``path`` is the GGUF for the embedded engine."""

    id: str
    engine: str
    path: Path | None = None


def served_models(s: Settings) -> list[Served]:
    """What ``build_engines`` would serve, resolved without starting anything;
    ``AutoGLMError`` when the settings name a model that cannot be found."""
    if s.models:
        out = []
        for spec in s.models:
            if spec.engine == "llamacpp":
                path, mid = resolve_model(spec.model_path, spec.id)
                out.append(Served(mid, "llamacpp", path))
            else:
                out.append(Served(spec.id, spec.engine))
        return out
    if s.model is not None:
        s = _from_registry(s)  # the registered model's files, as `serve --model` takes them
    model_path, model_id = s.model_path, s.model_id
    if s.engine == "vllm":
        if model_path is None:
            raise AutoGLMError("--engine vllm needs --model-path (a model directory or file)")
        path = model_path.expanduser()
        if not path.exists():
            raise AutoGLMError(f"model path not found: {path}")
        return [Served(model_id or path.name.removesuffix(".gguf").lower(), "vllm-managed",
                       path)]
    path, mid = resolve_model(model_path, model_id)
    return [Served(mid, "llamacpp", path)]


def _registry(ctx: Context) -> Result:
    reg = Registry(ctx.settings.data_dir)
    try:
        entries = reg.list()
    except (OSError, ValueError) as exc:
        return failed("models.registry", f"cannot read the registry {reg.dir}: {exc}",
                      f"fix or remove the broken entry in {reg.dir}")
    if not entries:
        return passed("models.registry", "no registered models", count=0)
    problems: list[str] = []
    for e in entries:
        root = Path(e["path"])
        result = mf.verify(root, e["manifest"], full=ctx.full_verify)
        bad = ([f"{p} missing" for p in result.missing] + [f"{p} changed" for p in
               result.changed] + [f"{p} extra" for p in result.extra])
        if not bad and not (e.get("verified") or {}).get("intact", True):
            bad = ["its last `model verify` found it changed"]
        if bad:
            problems.append(f"{e['name']}: {', '.join(bad[:3])}")
    how = "every byte re-hashed" if ctx.full_verify else "sizes; --full re-hashes every byte"
    data = {"count": len(entries), "full": ctx.full_verify, "problems": problems}
    if problems:
        first = problems[0].split(":", 1)[0]
        return failed("models.registry", f"{len(problems)} of {len(entries)} registered "
                      f"model(s) differ from their manifests: {'; '.join(problems[:3])}",
                      f"run `autoglm model verify {first}`; pull or copy the model again, "
                      f"or `autoglm model remove {first}`", **data)
    return passed("models.registry", f"{len(entries)} registered model(s) match their "
                  f"manifests ({how})", **data)


def _served(ctx: Context) -> Result:
    s = ctx.settings
    try:
        served = served_models(s)
    except AutoGLMError as exc:
        return failed("models.served", exc.message, "fix model/model_path/models in the "
                      "settings, or `autoglm model pull`/`add` the model first")
    trusted = []
    for m in served:
        if m.path is None:  # upstream pool: its servers hold the model
            continue
        if s.model_trust == "any":  # nothing to check (and trust.check would log loudly)
            continue
        try:
            state = trust.check(m.path, s.model_trust, s.data_dir, s.trusted_keys)
        except AutoGLMError as exc:
            return failed("models.served", f"{m.id}: {exc.message}",
                          "register the model (`autoglm model add PATH`), restore its files, "
                          "or sign it for model_trust: signed", model=m.id, path=str(m.path))
        trusted.append(f"{m.id} ({state.get('source', '?')})")
    ids = ", ".join(m.id for m in served)
    data = {"models": [{"id": m.id, "engine": m.engine, "path": str(m.path) if m.path
                        else None} for m in served], "model_trust": s.model_trust}
    if s.model_trust == "any" and any(m.path for m in served):
        return warned("models.served", f"{ids}: model_trust is 'any', nothing is verified",
                      "register the models and set model_trust: verified (or signed)", **data)
    return passed("models.served", f"{ids}; trust {s.model_trust}"
                  + (f": {', '.join(trusted)}" if trusted else ""), **data)


def models(ctx: Context) -> list[Result]:
    return [_registry(ctx), _served(ctx)]


# --- memory ----------------------------------------------------------------------------------
def _meminfo(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[name] = int(parts[0]) * 1024
    return out


def _cgroup_limit() -> int | None:
    """The memory limit of this process's cgroup (v2), if it has one."""
    try:
        rel = next(line[3:] for line in Path("/proc/self/cgroup").read_text().splitlines()
                   if line.startswith("0::"))
        raw = (Path("/sys/fs/cgroup") / rel.lstrip("/") / "memory.max").read_text().strip()
    except (OSError, StopIteration):
        return None
    return int(raw) if raw.isdigit() else None


def need_bytes(s: Settings, served: list[Served]) -> tuple[int, list[str]]:
    """Host memory the embedded engines take with their slots, and how it adds up."""
    total = PROCESS_OVERHEAD * (s.workers + (1 if s.workers > 1 else 0))
    parts = [f"gateway {total / MIB:.0f} MiB"]
    host_cache = getattr(s, "prefix_cache_mib", 0) * MIB if getattr(s, "prefix_cache", False) \
        else 0
    for m in served:
        if m.engine != "llamacpp" or m.path is None:
            continue
        weights = m.path.stat().st_size
        kv = s.slots * s.ctx_per_slot * kv_bytes_per_token(m.path)
        total += weights + kv + host_cache + ENGINE_OVERHEAD
        parts.append(f"{m.id}: weights {weights / MIB:.0f} MiB + KV {kv / MIB:.0f} MiB "
                     f"({s.slots} slots x {s.ctx_per_slot} tokens)"
                     + (f" + prefix store {host_cache / MIB:.0f} MiB" if host_cache else ""))
    return total, parts


def memory(ctx: Context) -> Result:
    s = ctx.settings
    try:
        served = served_models(s)
    except AutoGLMError:
        return skipped("system.memory", "the configured model cannot be found (see "
                       "models.served)")
    if not any(m.engine == "llamacpp" for m in served):
        return skipped("system.memory", "no embedded model: upstream servers and vLLM hold "
                       "the weights in their own memory")
    try:
        info = _meminfo(Path("/proc/meminfo").read_text())
    except OSError:
        return skipped("system.memory", "no /proc/meminfo on this platform")
    try:
        need, parts = need_bytes(s, served)
    except (OSError, ValueError) as exc:
        return skipped("system.memory", f"cannot size the model: {exc}")
    total = info.get("MemTotal", 0)
    limit = _cgroup_limit()
    cap = min(total, limit) if limit else total
    avail = min(info.get("MemAvailable", total), cap)
    data = {"needed_bytes": need, "total_bytes": total, "cgroup_limit_bytes": limit,
            "available_bytes": avail, "breakdown": parts}
    text = (f"needs about {need / GIB:.1f} GiB ({'; '.join(parts)}); "
            f"{avail / GIB:.1f} GiB available of {cap / GIB:.1f} GiB")
    fix = ("lower slots, ctx_per_slot or prefix_cache_mib, serve a smaller quantization, or "
           "add memory")
    if need > cap:
        return failed("system.memory", text, fix, **data)
    if need > avail:
        return warned("system.memory", text + " (others use the rest)", "free memory (stop "
                      "other services) or " + fix, **data)
    return passed("system.memory", text, **data)
