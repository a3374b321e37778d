"""machinery's stored records: ``TaskState`` (with ``TaskResult``s) and ``GroupMeta``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from taskd.errors import ArgumentError, DecodeError
from taskd.wire import args as typed
from taskd.wire import gojson
from taskd.wire.fields import want_int, want_str, want_time
from taskd.wire.gotime import ZERO_TIME, GoTime
from taskd.wire.records import builder


class State(StrEnum):
    PENDING = "PENDING"  # written by the sender before publishing
    RECEIVED = "RECEIVED"  # a worker took the message
    STARTED = "STARTED"  # arguments decoded, the function is about to run
    RETRY = "RETRY"  # failed, scheduled to run again
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"

    @property
    def is_completed(self) -> bool:
        return self in (State.SUCCESS, State.FAILURE)


@dataclass(frozen=True, slots=True)
class TaskResult:
    """One return value: a machinery type name and its wire value (``{"Type","Value"}``)."""

    type: str
    value: Any

    @classmethod
    def of(cls, type_name: str, value: Any) -> TaskResult:
        """A checked result from a Python value: ``TaskResult.of("uint8", 5)``."""
        return cls(type_name, typed.to_wire(type_name, typed.check(type_name, value)))

    @classmethod
    def infer(cls, value: Any) -> TaskResult:
        if isinstance(value, TaskResult):
            return value
        return cls.of(typed.infer(value), value)

    def python_value(self) -> Any:
        """The value, checked as its machinery type says; a value of another type (a Go
        task's struct or map, which machinery's own reader cannot reflect) as its JSON
        decodes, so a result is never unreadable."""
        if self.type not in typed.TYPE_NAMES:
            return self.value
        return typed.check(self.type, self.value)

    def encode(self) -> str:
        value = typed.encode(self.type, self.value)
        return f'{{"Type":{gojson.encode_name(self.type)},"Value":{value}}}'


@dataclass(frozen=True, slots=True)
class TaskState:
    """What a result backend stores for a task, field for field machinery's ``TaskState``."""

    task_uuid: str
    state: State
    task_name: str = ""
    results: tuple[TaskResult, ...] | None = None
    error: str = ""
    created_at: GoTime = ZERO_TIME
    ttl: int = 0

    @property
    def is_completed(self) -> bool:
        return self.state.is_completed

    def with_changes(self, **changes: Any) -> TaskState:
        return replace(self, **changes)

    def python_results(self) -> list[Any]:
        return [result.python_value() for result in self.results or ()]

    def human_readable(self) -> str:
        types = [result.type for result in self.results or ()]
        return typed.human_readable(self.python_results(), types)

    def encode(self) -> bytes:
        results = (
            "null"
            if self.results is None
            else "[" + ",".join(result.encode() for result in self.results) + "]"
        )
        s = gojson.encode_str
        # A state's name and an RFC 3339 time are ASCII letters, digits and "-:.+": JSON
        # strings as they are, quoted without the escaper (run for every state written).
        return (
            f'{{"TaskUUID":{s(self.task_uuid)},"TaskName":{gojson.encode_name(self.task_name)},'
            f'"State":"{self.state.value}","Results":{results},"Error":{s(self.error)},'
            f'"CreatedAt":"{self.created_at.format()}","TTL":{self.ttl}}}'
        ).encode()


def merged(new: TaskState, stored: TaskState | None) -> TaskState:
    """machinery's merge rule: a state after PENDING keeps the stored TaskName and CreatedAt.

    PENDING (written by a sender) replaces the record as given. Where the stored record has
    no name or a zero time, the new state's are kept.
    """
    if stored is None or new.state is State.PENDING:
        return new
    return replace(
        new,
        task_name=stored.task_name or new.task_name,
        created_at=new.created_at if stored.created_at.is_zero else stored.created_at,
    )


_STATE_FIELDS = {
    name.lower(): name
    for name in ("TaskUUID", "TaskName", "State", "Results", "Error", "CreatedAt", "TTL")
}
_RESULT_FIELDS = {"type": "Type", "value": "Value"}


_new_result = builder(TaskResult)  # (type, value)
build_state = builder(TaskState)  # every field, in the order TaskState declares them
_STATES: dict[str, State] = {state.value: state for state in State}


def _decode_result(obj: Any, index: int) -> TaskResult:
    fields = gojson.fold_keys(obj, _RESULT_FIELDS, f"Results[{index}]")
    return _new_result(want_str(fields.get("Type"), f"Results[{index}].Type"), fields.get("Value"))


def want_state(value: object, key: str) -> State:
    """A stored state's name as a State; DecodeError naming ``key`` for anything else."""
    name = want_str(value, key)
    state = _STATES.get(name)
    if state is None:
        raise DecodeError(f"{key} {name!r} is not a machinery task state")
    return state


def decode_state(raw: bytes | str) -> TaskState:
    f = gojson.fold_keys(gojson.loads(raw), _STATE_FIELDS, "TaskState")
    state = want_state(f.get("State"), "State")
    raw_results = f.get("Results")
    if raw_results is not None and not isinstance(raw_results, list):
        raise DecodeError(f"Results must be an array, got {gojson.json_type(raw_results)}")
    task_uuid = want_str(f.get("TaskUUID"), "TaskUUID")  # named first where it is wrong too
    return build_state(  # TaskState's fields, in order
        task_uuid,
        state,
        want_str(f.get("TaskName"), "TaskName"),
        None
        if raw_results is None
        else tuple([_decode_result(item, i) for i, item in enumerate(raw_results)]),
        want_str(f.get("Error"), "Error"),
        want_time(f.get("CreatedAt"), "CreatedAt") or ZERO_TIME,
        want_int(f.get("TTL"), "TTL"),
    )


def results_from_return(value: Any, declared: Sequence[str | None] = ()) -> tuple[TaskResult, ...]:
    """A task's return value as TaskResults: a tuple gives several, None gives none.

    ``declared`` holds a machinery type per result where the task's return annotation says
    one; other results are typed after their values. Raises ArgumentError for a value that
    machinery's wire format cannot carry (a dict, a NaN...).
    """
    if value is None:
        return ()
    values = value if isinstance(value, tuple) else (value,)
    results = []
    for index, item in enumerate(values):
        type_name = declared[index] if index < len(declared) else None
        try:
            if isinstance(item, TaskResult):
                result = item
                result.encode()  # built by the task: its value may have no JSON form
            elif type_name is not None:
                result = TaskResult.of(type_name, item)
            else:
                result = TaskResult.infer(item)
            if "float" in result.type:  # NaN and infinity have no JSON form: fail the task
                result.encode()  # here, not the write of its state
        except (ArgumentError, ValueError, TypeError) as exc:
            raise ArgumentError(f"return value {index + 1} cannot be stored: {exc}") from None
        results.append(result)
    return tuple(results)


@dataclass(frozen=True, slots=True)
class GroupMeta:
    """A group's members in order, and whether its chord callback was triggered."""

    group_uuid: str
    task_uuids: tuple[str, ...]
    chord_triggered: bool = False
    lock: bool = False
    created_at: GoTime = ZERO_TIME
    ttl: int = 0

    def encode(self) -> bytes:
        s = gojson.encode_str
        return (
            f'{{"GroupUUID":{s(self.group_uuid)},'
            f'"TaskUUIDs":[{",".join(s(task_id) for task_id in self.task_uuids)}],'
            f'"ChordTriggered":{gojson.encode_value(self.chord_triggered)},'
            f'"Lock":{gojson.encode_value(self.lock)},'
            f'"CreatedAt":{s(self.created_at.format())},"TTL":{self.ttl}}}'
        ).encode()


_GROUP_FIELDS = {
    name.lower(): name
    for name in ("GroupUUID", "TaskUUIDs", "ChordTriggered", "Lock", "CreatedAt", "TTL")
}


def decode_group(raw: bytes | str) -> GroupMeta:
    f = gojson.fold_keys(gojson.loads(raw), _GROUP_FIELDS, "GroupMeta")
    task_ids = f.get("TaskUUIDs") or []
    if not isinstance(task_ids, list) or not all(isinstance(t, str) for t in task_ids):
        raise DecodeError("TaskUUIDs must be an array of strings")
    chord_triggered, lock = f.get("ChordTriggered"), f.get("Lock")
    for key, value in (("ChordTriggered", chord_triggered), ("Lock", lock)):
        if value is not None and not isinstance(value, bool):
            raise DecodeError(f"{key} must be a boolean")
    return GroupMeta(
        group_uuid=want_str(f.get("GroupUUID"), "GroupUUID"),
        task_uuids=tuple(task_ids),
        chord_triggered=bool(chord_triggered),
        lock=bool(lock),
        created_at=want_time(f.get("CreatedAt"), "CreatedAt") or ZERO_TIME,
        ttl=want_int(f.get("TTL"), "TTL"),
    )
