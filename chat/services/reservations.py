"""The limiter's reservation as JSON on the answer row, for the worker that settles it."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from billing.limiter import LimiterConfig, Limits, Reservation

_RESERVATION_TYPES = {cls.__name__: cls for cls in (Reservation, Limits, LimiterConfig)}


def _to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: _to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"__type__": type(value).__name__, **fields}
    if isinstance(value, datetime):
        return {"__datetime__": value.isoformat()}
    if isinstance(value, list | tuple):
        return [_to_json(item) for item in value]
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if "__datetime__" in value:
            return datetime.fromisoformat(value["__datetime__"])
        cls = _RESERVATION_TYPES[value["__type__"]]
        return cls(**{name: _from_json(item) for name, item in value.items() if name != "__type__"})
    if isinstance(value, list):
        return tuple(_from_json(item) for item in value)
    return value


def reservation_dump(reservation: Reservation) -> dict[str, Any]:
    """The limiter reservation as JSON, stored on the answer row for the worker that settles it."""
    return _to_json(reservation)


def reservation_load(data: dict[str, Any]) -> Reservation:
    return _from_json(data)
