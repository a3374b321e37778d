"""TaskState, TaskResult and GroupMeta: what result backends store, as machinery stores it."""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

import pytest

from taskd.errors import ArgumentError, DecodeError
from taskd.wire import (
    ZERO_TIME,
    GoTime,
    GroupMeta,
    State,
    TaskResult,
    TaskState,
    decode_group,
    decode_state,
)
from taskd.wire.state import results_from_return

CREATED = GoTime.parse("2025-06-01T12:00:05.123456789Z")

# As machinery's Redis backend stores them (SET <uuid> <json>).
GO_SUCCESS = (
    b'{"TaskUUID":"task_9d6c1a9e-6f2b-4a8e-b0d4-3c5e7f9a1b2c","TaskName":"add",'
    b'"State":"SUCCESS","Results":[{"Type":"int64","Value":2}],"Error":"",'
    b'"CreatedAt":"2025-06-01T12:00:05.123456789Z","TTL":0}'
)
GO_PENDING = (
    b'{"TaskUUID":"task_1","TaskName":"add","State":"PENDING","Results":null,"Error":"",'
    b'"CreatedAt":"2025-06-01T12:00:05.1234Z","TTL":0}'
)
GO_FAILURE_UNMERGED = (  # memcache/AMQP: no merge with the PENDING record
    b'{"TaskUUID":"task_2","TaskName":"","State":"FAILURE","Results":null,'
    b'"Error":"oops \\u003cpanic\\u003e","CreatedAt":"0001-01-01T00:00:00Z","TTL":0}'
)
GO_MANY_RESULTS = (
    b'{"TaskUUID":"task_3","TaskName":"stats","State":"SUCCESS","Results":['
    b'{"Type":"float64","Value":2.5},{"Type":"[]string","Value":["a","b"]},'
    b'{"Type":"[]uint8","Value":"AQI="},{"Type":"bool","Value":true},'
    b'{"Type":"float64","Value":1e+21},{"Type":"uint64","Value":18446744073709551615}],'
    b'"Error":"","CreatedAt":"2025-06-01T14:00:05.000000001+02:00","TTL":1748782805}'
)
GO_EMPTY_RESULTS = (
    b'{"TaskUUID":"task_4","TaskName":"noop","State":"SUCCESS","Results":[],"Error":"",'
    b'"CreatedAt":"2025-06-01T12:00:05Z","TTL":0}'
)
GO_GROUP = (
    b'{"GroupUUID":"group_5f3d0e96-4051-4263-8e7f-8091a2b3c4d5",'
    b'"TaskUUIDs":["task_a","task_b","task_c"],"ChordTriggered":false,"Lock":false,'
    b'"CreatedAt":"2025-06-01T12:00:05.5Z","TTL":0}'
)


# -- TaskState encoding --------------------------------------------------------------------


def test_task_state_encodes_exactly_as_go() -> None:
    state = TaskState(
        task_uuid="task_1",
        task_name="add",
        state=State.SUCCESS,
        results=(TaskResult("int64", 6),),
        created_at=CREATED,
    )
    assert state.encode() == (
        b'{"TaskUUID":"task_1","TaskName":"add","State":"SUCCESS",'
        b'"Results":[{"Type":"int64","Value":6}],"Error":"",'
        b'"CreatedAt":"2025-06-01T12:00:05.123456789Z","TTL":0}'
    )


def test_results_null_versus_empty() -> None:
    pending = TaskState("task_1", State.PENDING, task_name="add", created_at=CREATED)
    assert b'"Results":null,' in pending.encode()
    none_returned = pending.with_changes(state=State.SUCCESS, results=())
    assert b'"Results":[],' in none_returned.encode()


def test_defaults_are_gos_zero_values() -> None:
    assert TaskState("task_1", State.FAILURE, error="boom").encode() == (
        b'{"TaskUUID":"task_1","TaskName":"","State":"FAILURE","Results":null,"Error":"boom",'
        b'"CreatedAt":"0001-01-01T00:00:00Z","TTL":0}'
    )


def test_strings_are_escaped_the_go_way() -> None:
    state = TaskState("t<1>", State.FAILURE, task_name="é", error="a & b\u2028")
    encoded = state.encode()
    assert '"TaskUUID":"t\\u003c1\\u003e","TaskName":"é",'.encode() in encoded
    assert b'"Error":"a \\u0026 b\\u2028",' in encoded


def test_names_and_times_encode_as_go_each_time() -> None:
    """Task and type names are remembered once encoded; times are quoted as they are."""
    east = GoTime(CREATED.unix_ns, 5 * 3600 + 30 * 60)
    west = GoTime(CREATED.unix_ns, -3600)
    for _ in range(2):  # the second time from what was remembered
        state = TaskState(
            "t",
            State.RETRY,
            task_name="a<b>&\u2029",
            created_at=east,
            results=(TaskResult("string", "x"),),
        )
        encoded = state.encode()
        assert b'"TaskName":"a\\u003cb\\u003e\\u0026\\u2029","State":"RETRY",' in encoded
        assert b'"Results":[{"Type":"string","Value":"x"}],' in encoded
        assert b'"CreatedAt":"2025-06-01T17:30:05.123456789+05:30",' in encoded
    assert (
        b'"CreatedAt":"2025-06-01T11:00:05.123456789-01:00",'
        in TaskState("t", State.PENDING, created_at=west).encode()
    )


def test_several_result_types_encode_as_go() -> None:
    state = TaskState(
        "task_3",
        State.SUCCESS,
        results=(
            TaskResult("float64", 2.0),
            TaskResult.of("[]uint8", b"\x01\x02"),
            TaskResult("[]string", ["a"]),
            TaskResult("float32", struct.unpack("<f", struct.pack("<f", 1.1))[0]),
        ),
        created_at=CREATED,
        ttl=60,
    )
    assert (
        b'"Results":[{"Type":"float64","Value":2},{"Type":"[]uint8","Value":"AQI="},'
        b'{"Type":"[]string","Value":["a"]},{"Type":"float32","Value":1.1}],'
    ) in state.encode()
    assert state.encode().endswith(b',"TTL":60}')


# -- TaskState decoding ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw", [GO_SUCCESS, GO_PENDING, GO_FAILURE_UNMERGED, GO_MANY_RESULTS, GO_EMPTY_RESULTS]
)
def test_go_states_round_trip_byte_for_byte(raw: bytes) -> None:
    assert decode_state(raw).encode() == raw


SAMPLE_FIELDS = {
    "task_uuid": "task_only",
    "state": State.RETRY,
    "task_name": "only_name",
    "results": (TaskResult("int64", 7),),
    "error": "only the error",
    "created_at": CREATED,
    "ttl": 42,
}


@pytest.mark.parametrize("field", list(SAMPLE_FIELDS))
def test_each_field_decodes_into_its_own_place(field: str) -> None:
    """Decoding builds a TaskState from its fields in order (not through its __init__): each
    field set alone, to a value unlike every other's, comes back where it was."""
    assert [each.name for each in dataclasses.fields(TaskState)] == list(SAMPLE_FIELDS)
    state = TaskState(**{"task_uuid": "t", "state": State.PENDING, field: SAMPLE_FIELDS[field]})
    assert decode_state(state.encode()) == state


def test_decoded_go_success() -> None:
    state = decode_state(GO_SUCCESS)
    assert state == TaskState(
        task_uuid="task_9d6c1a9e-6f2b-4a8e-b0d4-3c5e7f9a1b2c",
        task_name="add",
        state=State.SUCCESS,
        results=(TaskResult("int64", 2),),
        created_at=CREATED,
    )
    assert state.is_completed
    assert state.python_results() == [2]
    assert state.human_readable() == "2"


def test_created_at_nanoseconds_survive() -> None:
    state = decode_state(GO_SUCCESS)
    assert state.created_at.unix_ns % 1_000_000_000 == 123_456_789
    assert b'"CreatedAt":"2025-06-01T12:00:05.123456789Z"' in state.encode()


def test_decoded_go_many_results() -> None:
    state = decode_state(GO_MANY_RESULTS)
    assert state.ttl == 1748782805
    assert state.created_at == GoTime(1748779205_000000001, 7200)
    assert state.python_results() == [2.5, ["a", "b"], b"\x01\x02", True, 1e21, 2**64 - 1]
    assert state.human_readable() == "[2.5, [a b], [1 2], true, 1e+21, 18446744073709551615]"


def test_decoded_unmerged_failure_has_zero_created_at() -> None:
    state = decode_state(GO_FAILURE_UNMERGED)
    assert state.created_at == ZERO_TIME
    assert state.created_at.is_zero
    assert state.error == "oops <panic>"
    assert state.results is None
    assert state.python_results() == []


def test_results_null_and_empty_decode_differently() -> None:
    assert decode_state(GO_PENDING).results is None
    assert decode_state(GO_EMPTY_RESULTS).results == ()


def test_decoding_is_tolerant_like_go() -> None:
    state = decode_state(
        '{"taskuuid":"t","STATE":"STARTED","results":[{"type":"int64","VALUE":1,"x":0}],'
        '"Other":1,"createdat":null,"ttl":null,"TaskName":"a","TaskName":"b"}'
    )
    assert state == TaskState("t", State.STARTED, task_name="b", results=(TaskResult("int64", 1),))
    assert state.created_at == ZERO_TIME


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"TaskUUID":"t","State":"DONE"}', "State"),
        (b'{"TaskUUID":"t"}', "State"),
        (b'{"TaskUUID":"t","State":5}', "State"),
        (b'{"TaskUUID":5,"State":"SUCCESS"}', "TaskUUID"),
        (b'{"TaskName":[],"State":"SUCCESS"}', "TaskName"),
        (b'{"State":"SUCCESS","Results":{}}', "Results"),
        (b'{"State":"SUCCESS","Results":[5]}', "Results[0]"),
        (b'{"State":"SUCCESS","Results":[{"Type":1,"Value":1}]}', "Results[0].Type"),
        (b'{"State":"SUCCESS","Error":1}', "Error"),
        (b'{"State":"SUCCESS","CreatedAt":""}', "CreatedAt"),
        (b'{"State":"SUCCESS","CreatedAt":0}', "CreatedAt"),
        (b'{"State":"SUCCESS","TTL":1.5}', "TTL"),
        (b'{"State":"SUCCESS","TTL":"60"}', "TTL"),
        (b"[]", "TaskState"),
        (b"null", "TaskState"),
    ],
)
def test_bad_states_are_rejected_naming_the_field(raw: bytes, field: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_state(raw)
    assert field in str(caught.value)


def test_invalid_json_state_is_rejected() -> None:
    with pytest.raises(DecodeError, match="not valid JSON"):
        decode_state(b'{"State":')


def test_states() -> None:
    assert [state.value for state in State] == [
        "PENDING",
        "RECEIVED",
        "STARTED",
        "RETRY",
        "SUCCESS",
        "FAILURE",
    ]
    assert {state for state in State if state.is_completed} == {State.SUCCESS, State.FAILURE}
    assert not TaskState("t", State.RETRY).is_completed
    assert TaskState("t", State.FAILURE).is_completed


# -- TaskResult ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (TaskResult("int64", 6), '{"Type":"int64","Value":6}'),
        (TaskResult("float64", 6), '{"Type":"float64","Value":6}'),
        (TaskResult("float64", 1e-7), '{"Type":"float64","Value":1e-7}'),
        (TaskResult("string", "<>"), '{"Type":"string","Value":"\\u003c\\u003e"}'),
        (TaskResult("[]int64", None), '{"Type":"[]int64","Value":null}'),
        (TaskResult("[]uint8", b"hi"), '{"Type":"[]uint8","Value":"aGk="}'),
        (TaskResult.of("uint8", 5), '{"Type":"uint8","Value":5}'),
        (TaskResult.of("[]byte", b"hi"), '{"Type":"[]byte","Value":"aGk="}'),
    ],
)
def test_task_result_encode(result: TaskResult, expected: str) -> None:
    assert result.encode() == expected


def test_task_result_of_checks_and_infer_types() -> None:
    with pytest.raises(ArgumentError, match="out of range for uint8"):
        TaskResult.of("uint8", 300)
    assert TaskResult.infer(6) == TaskResult("int64", 6)
    assert TaskResult.infer(["a"]) == TaskResult("[]string", ["a"])
    existing = TaskResult("uint8", 1)
    assert TaskResult.infer(existing) is existing
    assert TaskResult.of("[]uint8", b"\x01").python_value() == b"\x01"


# -- results_from_return ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "declared", "expected"),
    [
        (6, (), (TaskResult("int64", 6),)),
        (None, (), ()),
        (None, ("int64",), ()),
        ((), (), ()),
        ((1, "a"), (), (TaskResult("int64", 1), TaskResult("string", "a"))),
        (
            (1, 2.5, True),
            (),
            (TaskResult("int64", 1), TaskResult("float64", 2.5), TaskResult("bool", True)),
        ),
        (6, ("float64",), (TaskResult("float64", 6.0),)),
        (6, ("uint8",), (TaskResult("uint8", 6),)),
        ((6, 7), ("int32",), (TaskResult("int32", 6), TaskResult("int64", 7))),
        ((6, 7), ("int32", None), (TaskResult("int32", 6), TaskResult("int64", 7))),
        ([1, 2], (), (TaskResult("[]int64", [1, 2]),)),
        ([], (), (TaskResult("[]string", []),)),
        ([], ("[]int64",), (TaskResult("[]int64", []),)),
        (b"\x01\x02", (), (TaskResult("[]uint8", "AQI="),)),
        ("x", ("string",), (TaskResult("string", "x"),)),
        (TaskResult("uint16", 3), ("int64",), (TaskResult("uint16", 3),)),
    ],
)
def test_results_from_return(value: Any, declared: tuple[str | None, ...], expected: Any) -> None:
    results = results_from_return(value, declared)
    assert results == expected
    assert [type(r.value) for r in results] == [type(r.value) for r in expected]


def test_results_from_return_float_declared_encodes_without_point() -> None:
    (result,) = results_from_return(6, ("float64",))
    assert result.encode() == '{"Type":"float64","Value":6}'


@pytest.mark.parametrize(
    ("value", "declared", "message"),
    [
        ({"a": 1}, (), "return value 1 cannot be stored"),
        ((1, {"a": 1}), (), "return value 2 cannot be stored"),
        (float("nan"), (), "return value 1 cannot be stored"),
        (float("inf"), (), "return value 1 cannot be stored"),
        ((1, [float("nan")]), (), "return value 2 cannot be stored"),
        (float("nan"), ("float64",), "return value 1 cannot be stored"),
        (300, ("uint8",), "out of range for uint8"),
        ("x", ("int64",), "is not int64"),
        (2**64, (), "does not fit in 64 bits"),
        (object(), (), "object has no machinery type"),
        ([1, "a"], (), "a list mixing ['int64', 'string'] has no machinery type"),
        ([[1, 2], [3]], (), "a list of list has no machinery type (only lists of bool, int"),
        ([{"a": 1}], (), "a list of dict has no machinery type"),
    ],
)
def test_results_from_return_rejects_what_the_wire_cannot_carry(
    value: Any, declared: tuple[str | None, ...], message: str
) -> None:
    with pytest.raises(ArgumentError) as caught:
        results_from_return(value, declared)
    assert message in str(caught.value)


# -- human_readable of stored results ----------------------------------------------------------


@pytest.mark.parametrize(
    ("results", "expected"),
    [
        ((TaskResult("int64", 6),), "6"),
        ((TaskResult("[]int64", [1, 2, 3]),), "[1 2 3]"),
        ((TaskResult("[]string", ["a", "b"]),), "[a b]"),
        ((TaskResult("string", "a"), TaskResult("string", "b")), "[a, b]"),
        ((TaskResult("float64", 1e6),), "1e+06"),
        ((TaskResult("float64", 4.2),), "4.2"),
        ((TaskResult("float64", 123456789.0),), "1.23456789e+08"),
        ((), "[]"),
    ],
)
def test_state_human_readable(results: tuple[TaskResult, ...], expected: str) -> None:
    assert TaskState("t", State.SUCCESS, results=results).human_readable() == expected


def test_state_human_readable_float32_like_go() -> None:
    state = TaskState("t", State.SUCCESS, results=(TaskResult.of("float32", 1.1),))
    assert state.human_readable() == "1.1"


# -- GroupMeta ---------------------------------------------------------------------------------


def test_group_meta_encodes_exactly_as_go() -> None:
    group = GroupMeta(
        group_uuid="group_1",
        task_uuids=("task_a", "task_b"),
        chord_triggered=True,
        lock=False,
        created_at=GoTime.parse("2025-06-01T12:00:05.5Z"),
    )
    assert group.encode() == (
        b'{"GroupUUID":"group_1","TaskUUIDs":["task_a","task_b"],"ChordTriggered":true,'
        b'"Lock":false,"CreatedAt":"2025-06-01T12:00:05.5Z","TTL":0}'
    )


def test_group_meta_defaults() -> None:
    assert GroupMeta("g", ()).encode() == (
        b'{"GroupUUID":"g","TaskUUIDs":[],"ChordTriggered":false,"Lock":false,'
        b'"CreatedAt":"0001-01-01T00:00:00Z","TTL":0}'
    )


def test_go_group_round_trips_byte_for_byte() -> None:
    group = decode_group(GO_GROUP)
    assert group.task_uuids == ("task_a", "task_b", "task_c")
    assert group.created_at == GoTime(1748779205_500000000)
    assert not group.chord_triggered
    assert group.encode() == GO_GROUP


def test_group_decoding_is_tolerant() -> None:
    group = decode_group(
        '{"groupuuid":"g","TASKUUIDS":null,"chordtriggered":true,"lock":null,"x":1,"ttl":5}'
    )
    assert group == GroupMeta("g", (), chord_triggered=True, lock=False, ttl=5)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"GroupUUID":"g","TaskUUIDs":"task_a"}', "TaskUUIDs"),
        (b'{"GroupUUID":"g","TaskUUIDs":[1]}', "TaskUUIDs"),
        (b'{"GroupUUID":"g","ChordTriggered":"yes"}', "ChordTriggered"),
        (b'{"GroupUUID":"g","Lock":1}', "Lock"),
        (b'{"GroupUUID":5}', "GroupUUID"),
        (b'{"GroupUUID":"g","CreatedAt":""}', "CreatedAt"),
        (b'{"GroupUUID":"g","TTL":2.5}', "TTL"),
        (b"[]", "GroupMeta"),
    ],
)
def test_bad_groups_are_rejected_naming_the_field(raw: bytes, field: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_group(raw)
    assert field in str(caught.value)


# -- results of types that are not machinery's (a Go task's struct or map) -------------------


GO_STRUCT_STATE = (
    b'{"TaskUUID":"task_p","TaskName":"point","State":"SUCCESS","Results":['
    b'{"Type":"main.Point","Value":{"X":1,"Y":[2.5,"z"]}},'
    b'{"Type":"map[string]int","Value":{"b":2,"a":1}},'
    b'{"Type":"[]main.Point","Value":[{"X":3}]}],'
    b'"Error":"","CreatedAt":"2026-11-30T16:42:57.976013507Z","TTL":0}'
)


def test_a_go_task_s_struct_and_map_results_read_as_their_json() -> None:
    """machinery records any Go type's name (reflect's String()) and its JSON value; such a
    value reads as it decodes and is written back unchanged (map keys sorted, as Go writes
    them), not refused or mangled (it was written back as a list of its keys)."""
    state = decode_state(GO_STRUCT_STATE)
    assert state.python_results() == [{"X": 1, "Y": [2.5, "z"]}, {"a": 1, "b": 2}, [{"X": 3}]]
    assert state.human_readable() == '[{"X":1,"Y":[2.5,"z"]}, {"a":1,"b":2}, [{"X":3}]]'
    again = decode_state(state.encode())
    assert again == state
    assert b'{"Type":"map[string]int","Value":{"a":1,"b":2}}' in state.encode()


def test_taskd_itself_writes_machinery_s_types_only() -> None:
    with pytest.raises(ArgumentError):
        TaskResult.of("main.Point", {"X": 1})  # taskd writes machinery's types only
