"""``autoglm model evaluate``: a quantization report (perplexity, speed, size per type)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TimeElapsedColumn

from autoglm.cli.output import fail
from autoglm.errors import AutoGLMError, ConfigError

Config = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML settings file.")]


class _Steps:
    """A rich progress bar per step on stderr; one plain line per step elsewhere."""

    def __init__(self) -> None:
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)
        self.bar: Progress | None = None
        self.tasks: dict[str, TaskID] = {}
        if self.console.is_terminal:
            self.bar = Progress("[progress.description]{task.description}", BarColumn(),
                                MofNCompleteColumn(), TimeElapsedColumn(),
                                console=self.console, transient=True)
            self.bar.start()

    def __call__(self, step: str, done: int, total: int) -> None:
        if step not in self.tasks:
            self.tasks[step] = (self.bar.add_task(step, total=total)
                                if self.bar is not None else TaskID(0))
            if self.bar is None:
                self.console.print(f"{step}...")
        if self.bar is not None:
            self.bar.update(self.tasks[step], completed=done, total=total)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def model_evaluate(
        name: Annotated[str, typer.Argument(
            help="A registered GGUF model, or smollm2-135m-instruct (the bundled one).")],
        types: Annotated[str, typer.Option(
            help="Quantization types to compare, comma-separated.")] = "q8_0,q5_k_m,q4_k_m,q4_0",
        text: Annotated[Optional[Path], typer.Option(
            help="Measure perplexity on this UTF-8 text (default: the Python Language "
            "Reference topics the interpreter ships).")] = None,
        fmt: Annotated[str, typer.Option(
            "--format", help="table, json or markdown.")] = "table",
        output_dir: Annotated[Optional[Path], typer.Option(
            help="Keep the quantized files here (not registered); default: a temporary "
            "directory, removed.")] = None,
        chart: Annotated[Optional[Path], typer.Option(
            help="Write a quality-against-speed chart here (.svg).")] = None,
        window: Annotated[int, typer.Option(help="Perplexity window, tokens.")] = 512,
        windows: Annotated[int, typer.Option(help="Most perplexity windows scored.")] = 8,
        streams: Annotated[int, typer.Option(help="Concurrent streams timed.")] = 8,
        speed_tokens: Annotated[int, typer.Option(
            help="Tokens generated per request in the speed runs.")] = 32,
        speed_rounds: Annotated[int, typer.Option(
            help="Speed rounds (one stream, then all streams), interleaved across the "
            "files; medians are reported.")] = 3,
        config: Config = None) -> None:
    """Quantize a GGUF model to each type and report, per file: size, perplexity (and its
    change against the source), tokens/s for one stream and for several, and time to
    first token through the embedded engine. Figures are relative to the source file."""
    from autoglm.evaluate.chart import svg_chart
    from autoglm.evaluate.report import to_json, to_markdown, to_table
    from autoglm.evaluate.runner import Plan, evaluate, parse_types
    from autoglm.evaluate.speed import SpeedConfig
    from autoglm.evaluate.text import file_text, reference_text
    from autoglm.settings import load_settings

    steps: _Steps | None = None
    try:
        form = _format(fmt)
        if chart is not None and chart.suffix.lower() != ".svg":
            raise ConfigError(f"--chart {chart}: only SVG charts are written (name it .svg)")
        plan = Plan(types=parse_types(types), window=window, windows=windows,
                    speed=SpeedConfig(streams, speed_tokens, speed_rounds), output_dir=output_dir)
        settings = load_settings(config)
        source = file_text(text) if text is not None else reference_text()
        steps = _Steps()
        report = evaluate(settings, name, source, plan, progress=steps)
    except AutoGLMError as exc:
        raise fail(exc.message) from None
    finally:
        if steps is not None:
            steps.stop()
    if chart is not None:
        chart.write_text(svg_chart(report), encoding="utf-8")
    if form == "json":
        print(json.dumps(to_json(report), indent=2))
    elif form == "markdown":
        print(to_markdown(report), end="")
    else:
        (Console() if sys.stdout.isatty() else Console(width=160)).print(to_table(report))
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    if chart is not None:
        err.print(f"chart written to {chart}")
    if output_dir is not None:
        err.print(f"quantized files kept in {output_dir} (not registered; `autoglm model "
                  f"quantize {name} --type TYPE` registers one to serve)")


def _format(fmt: str) -> Literal["table", "json", "markdown"]:
    if fmt not in ("table", "json", "markdown"):
        raise ConfigError(f"unknown --format '{fmt}': table, json or markdown")
    return fmt  # type: ignore[return-value]
