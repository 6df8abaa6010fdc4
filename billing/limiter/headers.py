"""`RateLimit` and `RateLimit-Policy` response fields, as in draft-ietf-httpapi-ratelimit-headers-11
(May 2026).

Both fields are Structured Field Lists whose members are sf-strings naming a policy, with parameters:
policy `q` (quota), `qu` (quota unit, default "requests"), `w` (window, integer seconds); current state `r`
(remaining quota) and `t` (seconds until quota frees up). Example for one user::

    RateLimit-Policy: "rpm";q=60;w=60, "tpm";q=40000;qu="tokens";w=60,
                      "concurrency";q=4;qu="concurrent-requests"
    RateLimit: "rpm";r=59;t=60, "tpm";r=38000;t=60, "concurrency";r=3

(shown on two lines here; it is one field value)

"tokens" is not one of the draft's three registered units (requests, content-bytes, concurrent-requests); the
draft leaves the registry open ("Specification Required") and leaving `qu` out would tell clients the token
budgets count requests, which is worse. The concurrency policy has no window, so it carries no `w` and no `t`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from billing.limiter.service import LimitState


def _sf_string(value: str) -> str:
    if any(ord(ch) < 0x20 or ord(ch) > 0x7E for ch in value):
        raise ValueError(f"policy name {value!r} is not a printable ASCII sf-string")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def ratelimit_headers(states: Iterable[LimitState] | Mapping[str, LimitState]) -> dict[str, str]:
    """Both fields for every limited policy in `states` (unlimited ones are left out); {} if none is."""
    if isinstance(states, Mapping):
        states = states.values()
    policies: list[str] = []
    current: list[str] = []
    for state in states:
        if state.limit is None:
            continue
        name = _sf_string(state.name)
        policy = f"{name};q={state.limit}"
        if state.unit != "requests":
            policy += f";qu={_sf_string(state.unit)}"
        if state.window_seconds:
            policy += f";w={state.window_seconds}"
        policies.append(policy)
        item = f"{name};r={state.remaining}"
        if state.reset_seconds is not None and state.unit != "concurrent-requests":
            item += f";t={state.reset_seconds}"
        current.append(item)
    if not policies:
        return {}
    return {"RateLimit-Policy": ", ".join(policies), "RateLimit": ", ".join(current)}
