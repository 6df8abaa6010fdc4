"""Billing periods: pure date arithmetic, no database."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from billing.periods import add_months, period_containing


def _dt(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("start", "months", "expected"),
    [
        (_dt(2026, 1, 31, 9), 1, _dt(2026, 2, 28, 9)),
        (_dt(2028, 1, 31, 9), 1, _dt(2028, 2, 29, 9)),
        (_dt(2026, 1, 31, 9), 2, _dt(2026, 3, 31, 9)),
        (_dt(2026, 11, 15), 3, _dt(2027, 2, 15)),
        (_dt(2026, 3, 31), -1, _dt(2026, 2, 28)),
    ],
)
def test_add_months_clamps_to_the_end_of_short_months(start, months, expected):
    assert add_months(start, months) == expected


def test_period_of_an_anchor_on_the_31st_returns_to_the_31st_after_february():
    anchor = _dt(2026, 1, 31, 12)

    assert period_containing(anchor=anchor, moment=_dt(2026, 3, 1)) == (_dt(2026, 2, 28, 12), _dt(2026, 3, 31, 12))
    assert period_containing(anchor=anchor, moment=_dt(2026, 4, 2)) == (_dt(2026, 3, 31, 12), _dt(2026, 4, 30, 12))


def test_moment_before_the_anchor_day_in_its_month_belongs_to_the_previous_period():
    anchor = _dt(2026, 1, 20, 8)

    assert period_containing(anchor=anchor, moment=_dt(2026, 5, 20, 7, 59)) == (_dt(2026, 4, 20, 8),
                                                                                   _dt(2026, 5, 20, 8))
    assert period_containing(anchor=anchor, moment=_dt(2026, 5, 20, 8)) == (_dt(2026, 5, 20, 8), _dt(2026, 6, 20, 8))


def test_periods_tile_the_year_without_gaps_or_overlaps():
    anchor = _dt(2026, 1, 30, 23, 30)
    _, end = period_containing(anchor=anchor, moment=anchor)
    for _ in range(24):
        next_start, next_end = period_containing(anchor=anchor, moment=end)
        assert next_start == end
        assert next_end > next_start
        end = next_end
