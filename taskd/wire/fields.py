"""Readers for the typed fields of machinery records, strict the way Go's decoder is.

A JSON ``null`` leaves a field at its zero value, as in Go; a value of the wrong JSON type is
a DecodeError naming the field.
"""

from __future__ import annotations

from typing import Any

from taskd.errors import DecodeError
from taskd.wire import gojson
from taskd.wire.gotime import GoTime

_GO_INT_MAX = 2**63 - 1


def want_str(value: Any, key: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DecodeError(f"{key} must be a string, got {gojson.json_type(value)}")
    return value


def want_bool(value: Any, key: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise DecodeError(f"{key} must be a boolean, got {gojson.json_type(value)}")
    return value


def want_int(value: Any, key: str, low: int = -_GO_INT_MAX - 1, high: int = _GO_INT_MAX) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        shown = repr(value) if isinstance(value, float) else gojson.encode_value(value)
        raise DecodeError(f"{key} must be an integer, got {shown}")
    if not low <= value <= high:
        raise DecodeError(f"{key} {value} is out of range [{low}, {high}]")
    return value


def want_time(value: Any, key: str) -> GoTime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise DecodeError(f"{key} must be an RFC 3339 string, got {gojson.json_type(value)}")
    try:
        return GoTime.parse(value)
    except DecodeError as exc:
        raise DecodeError(f"{key}: {exc.reason}") from None
