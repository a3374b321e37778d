"""machinery v2's MongoDB documents as taskd's records, and back: task states and group
metas as Go's driver writes them (dates as BSON dates, integer results as int64, ``[]byte`` as
binary), with ``created_at_ns`` keeping the nanoseconds a BSON date drops, and the
``delete_at`` that taskd's reads honour before MongoDB's TTL monitor does."""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Iterator
from typing import Any

from taskd.errors import DecodeError
from taskd.wire import GoTime, GroupMeta, TaskResult, TaskState
from taskd.wire import args as typed
from taskd.wire.fields import want_bool, want_int, want_str
from taskd.wire.gojson import encode_value
from taskd.wire.gotime import ZERO_TIME
from taskd.wire.state import want_state


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def live(doc: dict[str, Any], now_ms: int) -> bool:
    """False once a record is past its ``delete_at``, whether or not MongoDB has removed it."""
    from bson import DatetimeMS

    delete_at = doc.get("delete_at")
    return not isinstance(delete_at, DatetimeMS) or int(delete_at) > now_ms


def created_fields(created_at: GoTime) -> dict[str, Any]:
    from bson import DatetimeMS, Int64

    ns = created_at.unix_ns  # past int64 (before 1678, as Go's zero time) a date says it all
    exact = Int64(ns) if typed.INT64_MIN <= ns <= typed.INT64_MAX else None
    return {"created_at": DatetimeMS(ns // 1_000_000), "created_at_ns": exact}


def created_of(doc: dict[str, Any]) -> GoTime:
    """CreatedAt from a BSON date (as Go writes it), to the nanosecond when taskd wrote it."""
    from bson import DatetimeMS

    created = doc.get("created_at")
    if created is None:
        return ZERO_TIME
    if not isinstance(created, DatetimeMS):
        raise DecodeError(f"created_at must be a date, got {type(created).__name__}")
    nanos = doc.get("created_at_ns")
    if isinstance(nanos, int) and nanos // 1_000_000 == int(created):
        return GoTime(int(nanos))
    return GoTime(int(created) * 1_000_000)  # written by Go, or by a Go PENDING since


def state_of(doc: dict[str, Any]) -> TaskState:
    state = want_state(doc.get("state"), "state")
    results = doc.get("results")
    if results is not None and not isinstance(results, list):
        raise DecodeError(f"results must be an array, got {type(results).__name__}")
    return TaskState(
        task_uuid=want_str(doc.get("_id"), "_id"),
        state=state,
        task_name=want_str(doc.get("task_name"), "task_name"),
        results=None if results is None else tuple(_results_of(results)),
        error=want_str(doc.get("error"), "error"),
        created_at=created_of(doc),
        ttl=want_int(wire_value(doc.get("ttl")), "ttl"),
    )


def _results_of(items: list[Any]) -> Iterator[TaskResult]:
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise DecodeError(f"results[{index}] must be a document")
        type_name = want_str(item.get("type"), f"results[{index}].type")
        value = wire_value(item.get("value"))
        if type_name == "json":  # machinery's form of a string holding a JSON object
            yield TaskResult("string", encode_value(value))
        else:
            yield TaskResult(type_name, value)


def group_of(doc: dict[str, Any]) -> GroupMeta:
    task_ids = doc.get("task_uuids") or []
    if not isinstance(task_ids, list) or not all(isinstance(t, str) for t in task_ids):
        raise DecodeError("task_uuids must be an array of strings")
    return GroupMeta(
        group_uuid=want_str(doc.get("_id"), "_id"),
        task_uuids=tuple(task_ids),
        chord_triggered=want_bool(doc.get("chord_triggered"), "chord_triggered"),
        lock=want_bool(doc.get("lock"), "lock"),
        created_at=created_of(doc),
        ttl=want_int(wire_value(doc.get("ttl")), "ttl"),
    )


def bson_value(type_name: str, value: Any) -> Any:
    """A result's wire value as Go's driver stores the Go value: ints as int64, floats as
    doubles, ``[]byte`` as binary (taskd's wire form is base64 text)."""
    from bson import Decimal128, Int64

    if type_name not in typed.TYPE_NAMES:
        return value
    if type_name in typed.BYTES_TYPES and isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except binascii.Error:
            return value  # not valid, and kept as it came: a reader sees the same fault
    is_float = typed.kind_of(type_name) == "float"

    def scalar(item: Any) -> Any:
        if isinstance(item, bool) or not isinstance(item, int):
            return item
        if is_float:
            return float(item)
        in_range = typed.INT64_MIN <= item <= typed.INT64_MAX
        return Int64(item) if in_range else Decimal128(str(item))  # uint64 past int64

    return [scalar(item) for item in value] if isinstance(value, list) else scalar(value)


def wire_value(value: Any) -> Any:
    """A BSON value as taskd's wire form: binary as base64, Int64 and Decimal128 as int."""
    from bson import DatetimeMS, Decimal128

    if isinstance(value, bool | float | str) or value is None:
        return value
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, int):
        return int(value)  # Int64 too
    if isinstance(value, DatetimeMS):  # Go writes a time.Time result as a date
        return GoTime(int(value) * 1_000_000).format()
    if isinstance(value, Decimal128):
        number = value.to_decimal()
        return int(number) if number == number.to_integral_value() else float(number)
    if isinstance(value, list):
        return [wire_value(item) for item in value]
    if isinstance(value, dict):
        return {key: wire_value(item) for key, item in value.items()}
    raise DecodeError(f"a stored {type(value).__name__} is not a machinery value")
