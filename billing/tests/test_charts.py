"""The server-drawn usage chart (no database)."""

from __future__ import annotations

import re
from datetime import date, timedelta
from decimal import Decimal

import pytest

from billing.charts import BOTTOM, HEIGHT, TOP, daily_chart_svg, nice_ceiling
from billing.selectors import DailyUsage


@pytest.mark.parametrize(("value", "expected"), [(0, 1), (7, 10), (1_234, 2_000), (2_400, 2_500), (0.0031, 0.005),
                                                  (5_000, 5_000)])
def test_axis_maximum_is_a_round_number_at_or_above_the_data(value, expected):
    assert nice_ceiling(value) == pytest.approx(expected)


def _days(tokens: list[int]) -> list[DailyUsage]:
    start = date(2026, 3, 1)
    return [DailyUsage(day=start + timedelta(days=i), requests=1 if t else 0, tokens=t,
                       cost=Decimal(t) / Decimal(1_000_000)) for i, t in enumerate(tokens)]


def test_bar_heights_are_proportional_to_tokens_against_a_round_axis():
    svg = daily_chart_svg(_days([0, 500, 1_000, 250]))

    heights = [float(h) for h in re.findall(r'<rect class="bar"[^>]* height="([\d.]+)"', svg)]
    assert len(heights) == 4
    assert heights[0] == 0
    assert heights[2] == pytest.approx(2 * heights[1], abs=0.11)
    assert heights[2] == pytest.approx(HEIGHT - TOP - BOTTOM, abs=0.11)  # 1,000 is the axis maximum: full height
    assert "Mar 3: 1,000 tokens, 1 calls" in svg


def test_chart_title_is_escaped():
    svg = daily_chart_svg(_days([1]), title="<b>usage</b>")

    assert "<b>" not in svg
    assert "&lt;b&gt;usage&lt;/b&gt;" in svg


def test_cost_line_stops_at_today():
    days = _days([100, 200, 300, 0, 0])

    svg = daily_chart_svg(days, today=days[2].day)

    points = re.search(r'<polyline class="cost-line" points="([^"]+)"', svg).group(1).split()
    assert len(points) == 3
