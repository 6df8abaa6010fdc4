"""Monthly billing periods counted from an anchor: period n runs from anchor + n months to anchor + n+1 months."""

from __future__ import annotations

import calendar
from datetime import datetime


def add_months(moment: datetime, months: int) -> datetime:
    """Same day and time `months` later, clamped to the month's last day (Jan 31 + 1 month = Feb 28/29)."""
    index = moment.year * 12 + moment.month - 1 + months
    year, month = divmod(index, 12)
    month += 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def period_containing(*, anchor: datetime, moment: datetime) -> tuple[datetime, datetime]:
    """The [start, end) period that holds `moment`; periods before the anchor are counted backwards."""
    months = (moment.year - anchor.year) * 12 + (moment.month - anchor.month)
    # The month difference is right or one too high (the anchor's day/time not reached yet this month).
    start = add_months(anchor, months)
    if start > moment:
        months -= 1
        start = add_months(anchor, months)
    return start, add_months(anchor, months + 1)
