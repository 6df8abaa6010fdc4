from __future__ import annotations

from django import template

register = template.Library()

_STATUS = {"active": "active", "trialing": "trialing", "past_due": "past due", "canceled": "canceled"}


@register.filter
def thousands(value: int | None) -> str:
    return "\u2013" if value is None else f"{int(value):,}"


@register.filter
def limit(value: int | None, unit: str = "") -> str:
    """A plan limit for people: None is unlimited."""
    if value is None:
        return "unlimited"
    return f"{int(value):,} {unit}".strip()


@register.filter
def percent_of(value: int, percent: int) -> int:
    return int(value) * int(percent) // 100


@register.filter
def status_label(value: str) -> str:
    return _STATUS.get(value, value)
