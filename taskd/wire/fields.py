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


# Each reader tests for the usual case first: a message's fields are read on every task.


def want_str(value: Any, key: str) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    raise DecodeError(f"{key} must be a string, got {gojson.json_type(value)}")


def want_bool(value: Any, key: str) -> bool:
    if value is False or value is True:
        return value
    if value is None:
        return False
    raise DecodeError(f"{key} must be a boolean, got {gojson.json_type(value)}")


def want_int(value: Any, key: str, low: int = -_GO_INT_MAX - 1, high: int = _GO_INT_MAX) -> int:
    if value.__class__ is int and low <= value <= high:
        return value
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
