"""Per-user limit overrides: the JSON object stored in users.limits and carried as `limits_json`.

The contract, shared with the gateway (which holds the per-role defaults and enforces the limits):

- a JSON object whose keys are some of LIMIT_KEYS; a key that is absent means "the role's default";
- each value is a JSON integer: 1 to MAX_LIMIT is that limit, UNLIMITED (-1) means no limit;
- anything else (other keys, 0, other negatives, floats, booleans, strings, null, duplicate keys) is
  refused. 0 is refused rather than read as "no access": disabling the user is the way to deny access.

Written out compactly with sorted keys (``{"requests_per_minute":60}``), ``{}`` when there are none.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

LIMIT_KEYS = ("requests_per_minute", "tokens_per_minute", "concurrent_requests", "tokens_per_day")
UNLIMITED = -1
MAX_LIMIT = 10**9
# Four keys with ten-digit values fit many times over; the cap keeps the parser off hostile input.
MAX_JSON_LENGTH = 1024


class InvalidLimits(ValueError):
    """Limit overrides that break the contract; the message is meant for the caller."""


def check_limits(limits: Mapping[str, Any]) -> dict[str, int]:
    """Return the overrides to store, in key order; raises InvalidLimits naming the first problem."""
    unknown = sorted(set(limits) - set(LIMIT_KEYS))
    if unknown:
        raise InvalidLimits(f"unknown limit {unknown[0]!r}; known limits: {', '.join(LIMIT_KEYS)}")
    checked: dict[str, int] = {}
    for key in LIMIT_KEYS:
        if key not in limits:
            continue
        value = limits[key]
        # bool is an int in Python, but `true` is no limit anyone meant to set.
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidLimits(f"{key} must be an integer, not {json.dumps(value, default=repr)}")
        if value != UNLIMITED and not 1 <= value <= MAX_LIMIT:
            raise InvalidLimits(f"{key} must be 1 to {MAX_LIMIT}, or {UNLIMITED} for unlimited; got {value}")
        checked[key] = value
    return checked


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidLimits(f"limit {key!r} given twice")
        result[key] = value
    return result


def _no_constant(name: str) -> None:
    raise InvalidLimits(f"limits_json may not contain {name}")


def parse_limits(text: str) -> dict[str, int]:
    """The overrides in a limits_json string; raises InvalidLimits if it breaks the contract."""
    if not text.strip():
        # Refused rather than read as {}: an unset proto field must not wipe a user's overrides.
        raise InvalidLimits("limits_json is empty; send {} to clear the overrides")
    if len(text) > MAX_JSON_LENGTH:
        raise InvalidLimits(f"limits_json must be at most {MAX_JSON_LENGTH} characters")
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise InvalidLimits(f"limits_json is not valid JSON ({exc.msg}); use {{}} for no overrides") from None
    if not isinstance(value, dict):
        raise InvalidLimits('limits_json must be a JSON object, such as {"requests_per_minute": 60}')
    return check_limits(value)


def dump_limits(limits: Mapping[str, int]) -> str:
    """The compact form carried in limits_json and stored in the database."""
    return json.dumps(dict(limits), separators=(",", ":"), sort_keys=True)
