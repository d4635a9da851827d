"""A quality-against-speed chart as a small hand-written SVG: perplexity (lower is
better) against one-stream tokens/s (higher is better), one labelled point per row."""

from __future__ import annotations

import math
from xml.sax.saxutils import escape, quoteattr

from autoglm.evaluate.report import Report

WIDTH, HEIGHT = 640, 420
LEFT, RIGHT, TOP, BOTTOM = 70, 30, 50, 60


def _ticks(lo: float, hi: float, count: int = 5) -> tuple[float, float, list[float]]:
    """A padded axis range and round tick values inside it."""
    if hi <= lo:
        pad = abs(lo) * 0.05 or 1.0
        lo, hi = lo - pad, hi + pad
    pad = (hi - lo) * 0.1
    lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    ticks = [first + i * step for i in range(count + 2) if first + i * step <= hi + 1e-9]
    return lo, hi, ticks


def _fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"


def svg_chart(report: Report) -> str:
    rows = report.rows
    xlo, xhi, xt = _ticks(min(r.tokens_per_s_1 for r in rows), max(r.tokens_per_s_1 for r in rows))
    ylo, yhi, yt = _ticks(min(r.perplexity for r in rows), max(r.perplexity for r in rows))
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(v: float) -> float:
        return LEFT + (v - xlo) / (xhi - xlo) * pw

    def y(v: float) -> float:
        return TOP + (yhi - v) / (yhi - ylo) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
           f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
           f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
           f'<text x="{WIDTH / 2}" y="22" text-anchor="middle" font-size="15">'
           f'{escape(report.model)}: quality against speed</text>',
           f'<text x="{WIDTH / 2}" y="38" text-anchor="middle" fill="#555">'
           f'{escape(report.text.source)}</text>',
           f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>']
    for v in xt:
        out.append(f'<line x1="{x(v):.1f}" y1="{TOP}" x2="{x(v):.1f}" y2="{TOP + ph}" '
                   f'stroke="#ddd"/><text x="{x(v):.1f}" y="{TOP + ph + 16}" '
                   f'text-anchor="middle">{_fmt(v)}</text>')
    for v in yt:
        out.append(f'<line x1="{LEFT}" y1="{y(v):.1f}" x2="{LEFT + pw}" y2="{y(v):.1f}" '
                   f'stroke="#ddd"/><text x="{LEFT - 6}" y="{y(v) + 4:.1f}" '
                   f'text-anchor="end">{_fmt(v)}</text>')
    out.append(f'<text x="{LEFT + pw / 2}" y="{HEIGHT - 18}" text-anchor="middle">tokens/s, '
               'one stream (higher is better)</text>')
    out.append(f'<text transform="translate(18 {TOP + ph / 2}) rotate(-90)" '
               'text-anchor="middle">perplexity (lower is better)</text>')
    for r in rows:
        cx, cy = x(r.tokens_per_s_1), y(r.perplexity)
        colour = "#c0392b" if r.is_source else "#2c6fbb"
        out.append(f'<circle class="point" data-type={quoteattr(r.type)} cx="{cx:.1f}" '
                   f'cy="{cy:.1f}" r="5" fill="{colour}"/>')
        right = cx > LEFT + pw * 0.7  # label on the left of points near the right edge
        out.append(f'<text x="{cx - 8 if right else cx + 8:.1f}" y="{cy - 6:.1f}" '
                   f'text-anchor="{"end" if right else "start"}">{escape(r.label)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
