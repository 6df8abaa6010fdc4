"""The usage page's per-day chart, drawn on the server as inline SVG: no JavaScript, nothing from a CDN.

Tokens are bars against the left axis, cost is a line against the right one; every bar carries a <title> with
the day's exact figures (shown as a tooltip and read by screen readers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date
from decimal import Decimal

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from billing.selectors import DailyUsage

WIDTH, HEIGHT = 720, 260
LEFT, RIGHT, TOP, BOTTOM = 64, 72, 16, 40


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten that is >= value (1 for nothing to show)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * power * (1 + 1e-12):
            return step * power
    return 10 * power


def _tokens_label(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:g}M"
    if value >= 1_000:
        return f"{value / 1_000:g}k"
    return f"{value:g}"


def _cost_label(value: float) -> str:
    return f"${value:.2f}" if value >= 1 or value == 0 else f"${value:.4g}"


def daily_chart_svg(
    days: Sequence[DailyUsage], *, today: date | None = None, title: str = "Tokens and cost per day"
) -> SafeString:
    """The period's days on the x axis; the cost line stops at `today` (the rest has not happened yet)."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    count = max(1, len(days))
    max_tokens = nice_ceiling(max((d.tokens for d in days), default=0))
    max_cost = nice_ceiling(float(max((d.cost for d in days), default=Decimal(0))))
    slot = plot_w / count
    bar_w = max(1.0, slot * 0.7)
    total_tokens = sum(d.tokens for d in days)
    total_cost = sum((d.cost for d in days), Decimal(0))

    parts = [
        f'<svg class="usage-chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="100%" role="img" aria-labelledby="usage-chart-title usage-chart-desc">',
        f'<title id="usage-chart-title">{escape(title)}</title>',
        f'<desc id="usage-chart-desc">{len(days)} days, {total_tokens:,} tokens, '
        f"${total_cost:.4f} in total. Bars: tokens (left axis). Line: cost in USD (right axis).</desc>",
    ]
    for fraction in (0, 0.5, 1):
        y = TOP + plot_h * (1 - fraction)
        parts.append(f'<line class="grid" x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}"/>')
        parts.append(f'<text class="axis tokens" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
                     f"{escape(_tokens_label(max_tokens * fraction))}</text>")
        parts.append(f'<text class="axis cost" x="{LEFT + plot_w + 6}" y="{y + 4:.1f}">'
                     f"{escape(_cost_label(max_cost * fraction))}</text>")

    label_every = max(1, math.ceil(count / 10))
    points = []
    for index, day in enumerate(days):
        x = LEFT + slot * index + (slot - bar_w) / 2
        height = plot_h * day.tokens / max_tokens
        y = TOP + plot_h - height
        tip = f"{day.day:%b} {day.day.day}: {day.tokens:,} tokens, {day.requests:,} calls, ${day.cost:.6f}"
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{height:.1f}">'
            f"<title>{escape(tip)}</title></rect>"
        )
        center = LEFT + slot * index + slot / 2
        if today is None or day.day <= today:
                points.append(f"{center:.1f},{TOP + plot_h - plot_h * float(day.cost) / max_cost:.1f}")
        if index % label_every == 0:
            parts.append(f'<text class="axis" x="{center:.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">'
                         f"{day.day.day} {day.day:%b}</text>")
    if points:
        parts.append(f'<polyline class="cost-line" points="{" ".join(points)}"/>')
    parts.append(f'<text class="legend tokens" x="{LEFT}" y="{HEIGHT - 6}">■ tokens</text>')
    parts.append(f'<text class="legend cost" x="{LEFT + 90}" y="{HEIGHT - 6}">— cost (USD)</text>')
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - built from numbers and escaped text only
