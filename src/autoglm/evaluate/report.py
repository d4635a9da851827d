"""The evaluation's result: one row per file (the source first), as JSON and as a table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.table import Table

from autoglm.evaluate.text import EvalText


@dataclass(frozen=True)
class Row:
    type: str  # "q8_0", ...; the source's own quantization for the source row
    file: str
    size_bytes: int
    perplexity: float
    tokens_per_s_1: float
    tokens_per_s_n: float
    ttft_ms: float
    is_source: bool = False
    ppl_delta_pct: float | None = None  # against the source row

    @property
    def label(self) -> str:
        return f"{self.type} (source)" if self.is_source else self.type


@dataclass
class Report:
    model: str
    source_file: str
    source_type: str
    text: EvalText
    window: int
    windows: int
    scored_tokens: int
    streams: int
    max_tokens: int
    rounds: int
    threads: int
    output_dir: str | None  # where the quantized files were kept; None: deleted
    rows: list[Row] = field(default_factory=list)

    @property
    def requantized(self) -> bool:
        """The source is already quantized: every variant was made from its weights."""
        return self.source_type.lower() not in ("f32", "f16", "bf16", "unknown")

    def note(self) -> str:
        if not self.requantized:
            return f"Every type quantized from the {self.source_type.upper()} source"
        found = ("The source's type is not in its file name; if it is already quantized, "
                 if self.source_type == "unknown" else
                 f"The source is already quantized ({self.source_type.upper()}): ")
        return (found + "every type was requantized from it (llama.cpp allow_requantize), so "
                "the figures say how each compares with the source file, not with the original "
                "full-precision model")


def to_json(report: Report) -> dict[str, Any]:
    return {
        "model": report.model,
        "source": {"file": report.source_file, "type": report.source_type},
        "text": report.text.describe(),
        "perplexity": {"window_tokens": report.window, "windows": report.windows,
                       "scored_tokens": report.scored_tokens,
                       "scheme": "non-overlapping windows; first half context, second half "
                                 "scored; exp(mean negative log-likelihood)"},
        "speed": {"engine": "embedded llama.cpp engine (autoglm serve's), prefix cache off",
                  "streams": report.streams, "max_tokens": report.max_tokens,
                  "rounds": report.rounds, "threads": report.threads},
        "requantized": report.requantized,
        "note": report.note(),
        "output_dir": report.output_dir,
        "rows": [{"type": r.type, "source": r.is_source, "file": r.file,
                  "file_size_bytes": r.size_bytes, "perplexity": round(r.perplexity, 4),
                  "ppl_delta_pct": None if r.ppl_delta_pct is None else round(r.ppl_delta_pct, 2),
                  "tokens_per_s_1": round(r.tokens_per_s_1, 2),
                  "tokens_per_s_concurrent": round(r.tokens_per_s_n, 2),
                  "ttft_ms": round(r.ttft_ms, 1)} for r in report.rows],
    }


def to_table(report: Report) -> Table:
    table = Table(title=f"{report.model}: quantization report",
                  caption=f"perplexity on {report.text.source}, {report.scored_tokens:,} "
                          f"tokens scored; speed through the embedded engine, "
                          f"{report.threads} thread(s). {report.note()}.")
    for col, justify in (("type", "left"), ("file size", "right"), ("perplexity", "right"),
                         ("Δ ppl vs source", "right"), ("tok/s 1 stream", "right"),
                         (f"tok/s {report.streams} streams", "right"),
                         ("TTFT ms", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in report.rows:
        delta = "-" if r.ppl_delta_pct is None else f"{r.ppl_delta_pct:+.2f} %"
        table.add_row(r.label, f"{r.size_bytes / 1e6:.1f} MB", f"{r.perplexity:.3f}", delta,
                      f"{r.tokens_per_s_1:.1f}", f"{r.tokens_per_s_n:.1f}", f"{r.ttft_ms:.0f}")
    return table


def to_markdown(report: Report) -> str:
    """The table as Markdown (the README's)."""
    head = ["type", "file size", "perplexity", "Δ ppl vs source", "tok/s 1 stream",
            f"tok/s {report.streams} streams", "TTFT ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report.rows:
        delta = "-" if r.ppl_delta_pct is None else f"{r.ppl_delta_pct:+.2f} %"
        lines.append(f"| {r.label} | {r.size_bytes / 1e6:.1f} MB | {r.perplexity:.3f} | "
                     f"{delta} | {r.tokens_per_s_1:.1f} | {r.tokens_per_s_n:.1f} | "
                     f"{r.ttft_ms:.0f} |")
    return "\n".join(lines) + "\n"
