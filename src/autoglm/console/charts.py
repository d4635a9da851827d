"""Charts as inline SVG, drawn on the server: no chart library, no script, nothing that a
strict Content-Security-Policy would have to allow. Colours come from the stylesheet
(classes ``s0`` .. ``s7``), so the SVG carries no style attributes."""

from __future__ import annotations

import math
from collections.abc import Sequence

from markupsafe import Markup, escape

WIDTH, HEIGHT = 760, 260
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 12, 40
COLOURS = 8


def nice_max(value: float) -> float:
    """The top of the axis: 1, 2 or 5 times a power of ten, at least ``value``."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power:
            return float(step * power)
    return float(10 * power)


def _num(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:g}M"
    if value >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def stacked_bars(labels: Sequence[str], series: dict[str, Sequence[float]], *,
                 title: str, desc: str, chart_id: str = "chart") -> Markup:
    """One bar per label, stacked by series (in the order given), with a y axis, every
    n-th x label, a ``<title>`` per segment (hover, screen readers) and a legend."""
    n = max(len(labels), 1)
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    totals = [sum(s[i] for s in series.values()) for i in range(len(labels))]
    top = nice_max(max(totals, default=0))
    slot = inner_w / n
    bar = max(1.0, slot * 0.8)
    out = [(f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
            f'aria-labelledby="{chart_id}-t {chart_id}-d" xmlns="http://www.w3.org/2000/svg">'),
           f'<title id="{chart_id}-t">{escape(title)}</title>',
           f'<desc id="{chart_id}-d">{escape(desc)}</desc>']
    for k in range(5):  # grid and y labels
        v = top * k / 4
        y = TOP + inner_h - inner_h * k / 4
        out.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" '
                   f'y2="{y:.1f}"/>')
        out.append(f'<text class="axis" x="{LEFT - 6}" y="{y + 4:.1f}" '
                   f'text-anchor="end">{_num(v)}</text>')
    every = max(1, math.ceil(n / 12))
    for i, label in enumerate(labels):
        x = LEFT + slot * i + (slot - bar) / 2
        base = TOP + inner_h
        for j, (name, values) in enumerate(series.items()):
            v = values[i]
            if v <= 0:
                continue
            h = inner_h * v / top
            base -= h
            out.append(f'<rect class="s{j % COLOURS}" x="{x:.1f}" y="{base:.1f}" '
                       f'width="{bar:.1f}" height="{h:.1f}"><title>{escape(name)} · '
                       f'{escape(label)}: {_num(v)}</title></rect>')
        if i % every == 0:
            out.append(f'<text class="axis" x="{x + bar / 2:.1f}" y="{HEIGHT - BOTTOM + 16}" '
                       f'text-anchor="middle">{escape(label)}</text>')
    out.append("</svg>")
    legend = "".join(f'<li><svg class="swatch" viewBox="0 0 10 10" aria-hidden="true">'
                     f'<rect class="s{j % COLOURS}" width="10" height="10"/></svg>'
                     f'{escape(name)}</li>' for j, name in enumerate(series))
    return Markup("".join(out) + f'<ul class="legend">{legend}</ul>')
