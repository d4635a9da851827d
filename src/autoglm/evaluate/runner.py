"""Quantize a model to each requested type and measure every file, the source first.

Three phases: every type is quantized first, so a type llama.cpp cannot produce fails the
run at once rather than after minutes of measuring; then each file's perplexity; then the
speed rounds, interleaved across the files. The quantized files go to
``output_dir`` when one is given (kept, not registered: ``autoglm model quantize``
registers a type you decide to serve), else to a temporary directory removed at the end.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from autoglm.errors import ConfigError
from autoglm.evaluate.perplexity import perplexity
from autoglm.evaluate.report import Report, Row
from autoglm.evaluate.speed import Speed, SpeedConfig, measure_speed, median_speed
from autoglm.evaluate.text import EvalText
from autoglm.settings import EMBEDDED_MODEL_ID, Settings

DEFAULT_TYPES = ("q8_0", "q5_k_m", "q4_k_m", "q4_0")
_TYPE_IN_NAME = re.compile(r"\.(Q\d\w*|F16|F32|BF16|IQ\d\w*)\.gguf$", re.IGNORECASE)

Progress = Callable[[str, int, int], None]  # (step, done, total)


@dataclass(frozen=True)
class Plan:
    types: tuple[str, ...] = DEFAULT_TYPES
    window: int = 512
    windows: int = 8
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    output_dir: Path | None = None


def parse_types(spec: str) -> tuple[str, ...]:
    """``q8_0,q4_0`` -> the types, checked against llama.cpp's list, duplicates dropped."""
    from autoglm.supply.quantize import check_type

    types = tuple(dict.fromkeys(t.strip().lower() for t in spec.split(",") if t.strip()))
    if not types:
        raise ConfigError("no quantization types given (e.g. --types q8_0,q4_k_m)")
    for t in types:
        check_type(t)
    return types


def resolve_source(settings: Settings, name: str) -> tuple[Path, str]:
    """(GGUF file, its quantization type) of a registered model, or of the bundled one
    under its id when no registered model has that name."""
    from autoglm.engine.catalog import embedded_model_path
    from autoglm.errors import NotFoundError
    from autoglm.supply.quantize import source_gguf
    from autoglm.supply.registry import Registry

    try:
        entry = Registry(settings.data_dir).get(name)
    except NotFoundError:
        if name != EMBEDDED_MODEL_ID:
            raise NotFoundError(f"no model named '{name}': give a registered model (see "
                                f"`autoglm model list`) or the bundled {EMBEDDED_MODEL_ID}"
                                ) from None
        path = embedded_model_path()
    else:
        if entry.get("format") != "gguf":
            raise ConfigError(f"model '{name}' is not GGUF; llama.cpp quantizes GGUF models")
        if entry.get("encryption"):
            raise ConfigError(f"model '{name}' is an encrypted package; evaluate its "
                              "plaintext source instead")
        path = source_gguf(entry)
    m = _TYPE_IN_NAME.search(path.name)
    return path, (m.group(1).lower() if m else "unknown")


def evaluate(settings: Settings, name: str, text: EvalText, plan: Plan,
             progress: Progress | None = None) -> Report:
    from autoglm.supply.quantize import quantize_file

    parse_types(",".join(plan.types))  # before any work
    plan.speed.check()
    source, source_type = resolve_source(settings, name)
    threads = settings.n_threads or len(os.sched_getaffinity(0)) or 1
    keep = plan.output_dir is not None
    out_dir = plan.output_dir.expanduser() if keep else Path(
        tempfile.mkdtemp(prefix="autoglm-evaluate-"))
    report = Report(model=name, source_file=source.name, source_type=source_type, text=text,
                    window=plan.window, windows=0, scored_tokens=0,
                    streams=plan.speed.streams, max_tokens=plan.speed.max_tokens,
                    rounds=plan.speed.rounds, threads=threads,
                    output_dir=str(out_dir) if keep else None)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        files: list[_File] = [_File(source_type, source, True)]
        for t in plan.types:
            _tell(progress, f"quantizing to {t}", 0, 1)
            files.append(_File(t, quantize_file(source, out_dir, t, settings.n_threads,
                                                what=f"'{name}'")))
            _tell(progress, f"quantizing to {t}", 1, 1)
        ppls = [_perplexity(settings, f, text, plan, report, progress) for f in files]
        speeds = _speeds(settings, files, plan.speed, progress)
        report.rows = [Row(type=f.qtype, file=f.path.name, size_bytes=f.path.stat().st_size,
                           perplexity=ppl, tokens_per_s_1=sp.tokens_per_s_1,
                           tokens_per_s_n=sp.tokens_per_s_n, ttft_ms=sp.ttft_ms,
                           is_source=f.is_source,
                           ppl_delta_pct=None if f.is_source else (ppl / ppls[0] - 1) * 100)
                       for f, ppl, sp in zip(files, ppls, speeds)]
    finally:
        if not keep:
            shutil.rmtree(out_dir, ignore_errors=True)
    return report


@dataclass(frozen=True)
class _File:
    qtype: str
    path: Path
    is_source: bool = False

    @property
    def label(self) -> str:
        return f"{self.qtype} (source)" if self.is_source else self.qtype


def _perplexity(settings: Settings, f: _File, text: EvalText, plan: Plan, report: Report,
                progress: Progress | None) -> float:
    step = f"perplexity of {f.label}"
    _tell(progress, step, 0, plan.windows)
    ppl = perplexity(f.path, text.text, window=plan.window, max_windows=plan.windows,
                     threads=settings.n_threads,
                     progress=lambda d, n: _tell(progress, step, d, n))
    report.windows, report.scored_tokens = ppl.windows, ppl.scored_tokens
    return ppl.value


def _speeds(settings: Settings, files: list[_File], config: SpeedConfig,
            progress: Progress | None) -> list[Speed]:
    """Rounds interleaved across the files (each visit starts the file's engine and times
    one round), medians per file: a burst of load from elsewhere on the machine lands on
    one round of a file, not on all of its rounds."""
    one_round = replace(config, rounds=1)
    rounds: list[list[Speed]] = [[] for _ in files]
    for r in range(config.rounds):
        step = f"speed, round {r + 1} of {config.rounds}"
        for i, f in enumerate(files):
            _tell(progress, step, i, len(files))
            rounds[i].append(measure_speed(settings, f.path, one_round))
        _tell(progress, step, len(files), len(files))
    return [median_speed(s) for s in rounds]


def _tell(progress: Progress | None, step: str, done: int, total: int) -> None:
    if progress is not None:
        progress(step, done, total)
