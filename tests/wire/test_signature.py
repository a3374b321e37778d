"""Signature and Arg: the task message, byte for byte as machinery's Go producer writes it."""

from __future__ import annotations

import dataclasses
import re

import pytest

from taskd.errors import ArgumentError, DecodeError
from taskd.wire import Arg, GoTime, Signature, decode_signature, new_id
from taskd.wire.signature import peek_routing_key

# A nested signature with every field at its zero value except UUID/Name/Args/Headers/Immutable
# is spelled out in full below, field by field, as Go writes it.

FULL = Signature(
    uuid="task_7f0e4bd6-3c61-4b5e-9a55-0c4f2d7b8e91",
    name="add",
    routing_key="machinery_tasks",
    eta=GoTime.parse("2025-06-01T12:00:05.123456789Z"),
    group_uuid="group_5c1f3a2e-8d4b-4f6a-9e7c-1b2d3e4f5a6b",
    group_task_count=2,
    args=(
        Arg("int64", 1),
        Arg("float64", 2.5, "b"),
        Arg("string", "<é>"),
        Arg.of("[]byte", b"\x01\x02"),
        Arg("[]string", ["x", "y"]),
        Arg("float64", 2.0),
    ),
    headers={"z": 1, "a": "b", "n": None, "f": 2.0, "m": {"y": [1, "&"], "x": True}},
    priority=5,
    immutable=True,
    retry_count=3,
    retry_timeout=2,
    on_success=(Signature(name="multiply", uuid="task_aaa", args=(Arg("int64", 4),)),),
    on_error=(Signature(name="log_error", uuid="task_bbb", headers={}),),
    chord_callback=Signature(name="sum", uuid="chord_ccc", immutable=True),
    broker_message_group_id="mg-1",
    sqs_receipt_handle="AQEB+rh/==",
    stop_task_deletion_on_error=True,
    ignore_when_task_not_registered=True,
)

FULL_BYTES = (
    r'{"UUID":"task_7f0e4bd6-3c61-4b5e-9a55-0c4f2d7b8e91","Name":"add",'
    r'"RoutingKey":"machinery_tasks","ETA":"2025-06-01T12:00:05.123456789Z",'
    r'"GroupUUID":"group_5c1f3a2e-8d4b-4f6a-9e7c-1b2d3e4f5a6b","GroupTaskCount":2,'
    r'"Args":[{"Name":"","Type":"int64","Value":1},{"Name":"b","Type":"float64","Value":2.5},'
    r'{"Name":"","Type":"string","Value":"\u003cé\u003e"},'
    r'{"Name":"","Type":"[]byte","Value":"AQI="},'
    r'{"Name":"","Type":"[]string","Value":["x","y"]},'
    r'{"Name":"","Type":"float64","Value":2}],'
    r'"Headers":{"a":"b","f":2,"m":{"x":true,"y":[1,"\u0026"]},"n":null,"z":1},'
    r'"Priority":5,"Immutable":true,"RetryCount":3,"RetryTimeout":2,'
    r'"OnSuccess":[{"UUID":"task_aaa","Name":"multiply","RoutingKey":"","ETA":null,'
    r'"GroupUUID":"","GroupTaskCount":0,"Args":[{"Name":"","Type":"int64","Value":4}],'
    r'"Headers":null,"Priority":0,"Immutable":false,"RetryCount":0,"RetryTimeout":0,'
    r'"OnSuccess":null,"OnError":null,"ChordCallback":null,"BrokerMessageGroupId":"",'
    r'"SQSReceiptHandle":"","StopTaskDeletionOnError":false,'
    r'"IgnoreWhenTaskNotRegistered":false}],'
    r'"OnError":[{"UUID":"task_bbb","Name":"log_error","RoutingKey":"","ETA":null,'
    r'"GroupUUID":"","GroupTaskCount":0,"Args":null,"Headers":{},"Priority":0,'
    r'"Immutable":false,"RetryCount":0,"RetryTimeout":0,"OnSuccess":null,"OnError":null,'
    r'"ChordCallback":null,"BrokerMessageGroupId":"","SQSReceiptHandle":"",'
    r'"StopTaskDeletionOnError":false,"IgnoreWhenTaskNotRegistered":false}],'
    r'"ChordCallback":{"UUID":"chord_ccc","Name":"sum","RoutingKey":"","ETA":null,'
    r'"GroupUUID":"","GroupTaskCount":0,"Args":null,"Headers":null,"Priority":0,'
    r'"Immutable":true,"RetryCount":0,"RetryTimeout":0,"OnSuccess":null,"OnError":null,'
    r'"ChordCallback":null,"BrokerMessageGroupId":"","SQSReceiptHandle":"",'
    r'"StopTaskDeletionOnError":false,"IgnoreWhenTaskNotRegistered":false},'
    r'"BrokerMessageGroupId":"mg-1","SQSReceiptHandle":"AQEB+rh/==",'
    r'"StopTaskDeletionOnError":true,"IgnoreWhenTaskNotRegistered":true}'
).encode()

# What machinery's Go producer publishes for server.SendTask(add(1, 1)) (Redis broker).
GO_ADD = (
    b'{"UUID":"task_9d6c1a9e-6f2b-4a8e-b0d4-3c5e7f9a1b2c","Name":"add",'
    b'"RoutingKey":"machinery_tasks","ETA":null,"GroupUUID":"","GroupTaskCount":0,'
    b'"Args":[{"Name":"","Type":"int64","Value":1},{"Name":"","Type":"int64","Value":1}],'
    b'"Headers":{},"Priority":0,"Immutable":false,"RetryCount":0,"RetryTimeout":0,'
    b'"OnSuccess":null,"OnError":null,"ChordCallback":null,"BrokerMessageGroupId":"",'
    b'"SQSReceiptHandle":"","StopTaskDeletionOnError":false,"IgnoreWhenTaskNotRegistered":false}'
)

# A delayed chain head, add(1, 1) -> multiply(4) -> split("hé<"), with tracing headers.
GO_CHAIN = (
    b'{"UUID":"task_1b9f6a52-0c1d-4e2f-8a3b-4c5d6e7f8091","Name":"add",'
    b'"RoutingKey":"machinery_tasks","ETA":"2025-06-01T12:00:05.123456789Z","GroupUUID":"",'
    b'"GroupTaskCount":0,"Args":[{"Name":"","Type":"int64","Value":1},'
    b'{"Name":"","Type":"int64","Value":1}],"Headers":{"uber-trace-id":"5f3c:5f3c:0:1"},'
    b'"Priority":0,"Immutable":false,"RetryCount":3,"RetryTimeout":0,"OnSuccess":['
    b'{"UUID":"task_2c0a7b63-1d2e-4f30-9b4c-5d6e7f8091a2","Name":"multiply","RoutingKey":"",'
    b'"ETA":null,"GroupUUID":"","GroupTaskCount":0,'
    b'"Args":[{"Name":"","Type":"int64","Value":4}],"Headers":{},"Priority":0,'
    b'"Immutable":false,"RetryCount":0,"RetryTimeout":0,"OnSuccess":['
    b'{"UUID":"task_3d1b8c74-2e3f-4041-ac5d-6e7f8091a2b3","Name":"split","RoutingKey":"",'
    b'"ETA":null,"GroupUUID":"","GroupTaskCount":0,'
    b'"Args":[{"Name":"","Type":"string","Value":"h\xc3\xa9\\u003c"}],"Headers":null,'
    b'"Priority":0,"Immutable":true,"RetryCount":0,"RetryTimeout":0,"OnSuccess":null,'
    b'"OnError":null,"ChordCallback":null,"BrokerMessageGroupId":"","SQSReceiptHandle":"",'
    b'"StopTaskDeletionOnError":false,"IgnoreWhenTaskNotRegistered":false}],'
    b'"OnError":null,"ChordCallback":null,"BrokerMessageGroupId":"","SQSReceiptHandle":"",'
    b'"StopTaskDeletionOnError":false,"IgnoreWhenTaskNotRegistered":false}],'
    b'"OnError":null,"ChordCallback":null,"BrokerMessageGroupId":"","SQSReceiptHandle":"",'
    b'"StopTaskDeletionOnError":false,"IgnoreWhenTaskNotRegistered":false}'
)

# One member of a chord group: sum_floats([1.5, 2]) with the callback embedded.
GO_CHORD_MEMBER = (
    b'{"UUID":"task_4e2c9d85-3f40-4152-bd6e-7f8091a2b3c4","Name":"sum_floats",'
    b'"RoutingKey":"machinery_tasks","ETA":null,'
    b'"GroupUUID":"group_5f3d0e96-4051-4263-8e7f-8091a2b3c4d5","GroupTaskCount":2,'
    b'"Args":[{"Name":"","Type":"[]float64","Value":[1.5,2,1e+21,1.5e-7]}],"Headers":{},'
    b'"Priority":3,"Immutable":false,"RetryCount":0,"RetryTimeout":0,"OnSuccess":null,'
    b'"OnError":null,"ChordCallback":{"UUID":"chord_6a4e1fa7-5162-4374-9f80-91a2b3c4d5e6",'
    b'"Name":"sum_floats","RoutingKey":"","ETA":null,"GroupUUID":"","GroupTaskCount":0,'
    b'"Args":null,"Headers":null,"Priority":0,"Immutable":false,"RetryCount":0,'
    b'"RetryTimeout":0,"OnSuccess":null,"OnError":null,"ChordCallback":null,'
    b'"BrokerMessageGroupId":"","SQSReceiptHandle":"","StopTaskDeletionOnError":false,'
    b'"IgnoreWhenTaskNotRegistered":false},"BrokerMessageGroupId":"","SQSReceiptHandle":"",'
    b'"StopTaskDeletionOnError":false,"IgnoreWhenTaskNotRegistered":false}'
)

# SQS FIFO message with a receipt handle, []byte and uint8 args, and a non-UTC ETA.
GO_SQS = (
    b'{"UUID":"task_5f3e0a96-4051-4263-8e7f-8091a2b3c4d5","Name":"store","RoutingKey":"jobs.fifo",'
    b'"ETA":"2025-06-01T14:00:05.5+02:00","GroupUUID":"","GroupTaskCount":0,'
    b'"Args":[{"Name":"blob","Type":"[]byte","Value":"AAEC/w=="},'
    b'{"Name":"level","Type":"uint8","Value":255},{"Name":"ok","Type":"bool","Value":true}],'
    b'"Headers":{},"Priority":0,"Immutable":false,"RetryCount":1,"RetryTimeout":5,'
    b'"OnSuccess":null,"OnError":null,"ChordCallback":null,"BrokerMessageGroupId":"g1",'
    b'"SQSReceiptHandle":"AQEBzbVv+rh/1==","StopTaskDeletionOnError":true,'
    b'"IgnoreWhenTaskNotRegistered":true}'
)


def _zero_signature(uuid: str, name: str) -> str:
    """A nested signature with every other field zero, as Go writes it (test-side copy)."""
    return (
        f'{{"UUID":"{uuid}","Name":"{name}","RoutingKey":"","ETA":null,"GroupUUID":"",'
        '"GroupTaskCount":0,"Args":null,"Headers":null,"Priority":0,"Immutable":false,'
        '"RetryCount":0,"RetryTimeout":0,"OnSuccess":null,"OnError":null,"ChordCallback":null,'
        '"BrokerMessageGroupId":"","SQSReceiptHandle":"","StopTaskDeletionOnError":false,'
        '"IgnoreWhenTaskNotRegistered":false}'
    )


# -- encoding -------------------------------------------------------------------------------


def test_all_19_fields_encode_exactly_as_go() -> None:
    assert FULL.encode() == FULL_BYTES


def test_field_order_is_machinerys_declaration_order() -> None:
    keys = re.findall(rb'"(\w+)":', Signature(name="x").encode())
    assert [key.decode() for key in keys] == [
        "UUID",
        "Name",
        "RoutingKey",
        "ETA",
        "GroupUUID",
        "GroupTaskCount",
        "Args",
        "Headers",
        "Priority",
        "Immutable",
        "RetryCount",
        "RetryTimeout",
        "OnSuccess",
        "OnError",
        "ChordCallback",
        "BrokerMessageGroupId",
        "SQSReceiptHandle",
        "StopTaskDeletionOnError",
        "IgnoreWhenTaskNotRegistered",
    ]


def test_defaults_encode_as_go_zero_values() -> None:
    assert Signature(name="add").encode() == _zero_signature("", "add").encode()


def test_empty_args_and_headers_are_not_null() -> None:
    encoded = Signature(name="noop", args=(), headers={}).encode()
    assert b'"Args":[],"Headers":{},' in encoded


def test_nested_signature_is_spelled_out_in_full() -> None:
    sig = Signature(
        name="a",
        on_success=(Signature(name="b", uuid="task_b"), Signature(name="c", uuid="task_c")),
    )
    expected = (
        '"OnSuccess":['
        + _zero_signature("task_b", "b")
        + ","
        + _zero_signature("task_c", "c")
        + "],"
    )
    assert expected.encode() in sig.encode()


@pytest.mark.parametrize(
    ("name", "encoded"),
    [
        ("a<b>&c", r'"a\u003cb\u003e\u0026c"'),
        ("line\u2028sep\u2029", r'"line\u2028sep\u2029"'),
        ("café 日本", '"café 日本"'),
        ('q"\\', r'"q\"\\"'),
    ],
)
def test_strings_use_gos_escaping(name: str, encoded: str) -> None:
    assert f'"Name":{encoded},'.encode() in Signature(name=name).encode()


def test_eta_with_offset_is_written_with_its_offset() -> None:
    sig = Signature(name="x", eta=GoTime.parse("2025-06-01T14:00:05.50+02:00"))
    assert b'"ETA":"2025-06-01T14:00:05.5+02:00",' in sig.encode()


def test_int_fields_never_written_as_floats() -> None:
    sig = Signature(name="x", group_task_count=3, priority=255, retry_count=2, retry_timeout=13)
    encoded = sig.encode()
    for fragment in (
        b'"GroupTaskCount":3,',
        b'"Priority":255,',
        b'"RetryCount":2,',
        b'"RetryTimeout":13,',
    ):
        assert fragment in encoded


# -- Go-written fixtures: decode -> encode reproduces the bytes ------------------------------


@pytest.mark.parametrize("raw", [GO_ADD, GO_CHAIN, GO_CHORD_MEMBER, GO_SQS, FULL_BYTES])
def test_go_messages_round_trip_byte_for_byte(raw: bytes) -> None:
    assert decode_signature(raw).encode() == raw


def test_decoded_go_add() -> None:
    sig = decode_signature(GO_ADD)
    assert sig == Signature(
        uuid="task_9d6c1a9e-6f2b-4a8e-b0d4-3c5e7f9a1b2c",
        name="add",
        routing_key="machinery_tasks",
        args=(Arg("int64", 1), Arg("int64", 1)),
        headers={},
    )
    assert [arg.python_value() for arg in sig.args or ()] == [1, 1]


def test_decoded_go_chain() -> None:
    sig = decode_signature(GO_CHAIN)
    assert sig.eta == GoTime(1748779205_123456789)
    assert sig.retry_count == 3
    assert sig.headers == {"uber-trace-id": "5f3c:5f3c:0:1"}
    assert sig.on_success is not None
    (multiply,) = sig.on_success
    assert multiply.name == "multiply"
    assert multiply.routing_key == ""
    assert multiply.headers == {}
    assert multiply.args == (Arg("int64", 4),)
    assert multiply.on_success is not None
    (split,) = multiply.on_success
    assert split.name == "split"
    assert split.immutable is True
    assert split.headers is None
    assert split.args == (Arg("string", "hé<"),)


def test_decoded_go_chord_member() -> None:
    sig = decode_signature(GO_CHORD_MEMBER)
    assert sig.group_uuid == "group_5f3d0e96-4051-4263-8e7f-8091a2b3c4d5"
    assert sig.group_task_count == 2
    assert sig.priority == 3
    assert sig.args is not None
    assert sig.args[0].python_value() == [1.5, 2.0, 1e21, 1.5e-7]
    assert sig.chord_callback is not None
    assert sig.chord_callback.uuid == "chord_6a4e1fa7-5162-4374-9f80-91a2b3c4d5e6"
    assert sig.chord_callback.args is None


def test_decoded_go_sqs_message() -> None:
    sig = decode_signature(GO_SQS)
    assert sig.eta == GoTime(1748779205_500000000, 7200)
    assert sig.args is not None
    assert [arg.name for arg in sig.args] == ["blob", "level", "ok"]
    assert [arg.python_value() for arg in sig.args] == [b"\x00\x01\x02\xff", 255, True]
    assert sig.broker_message_group_id == "g1"
    assert sig.sqs_receipt_handle == "AQEBzbVv+rh/1=="
    assert sig.stop_task_deletion_on_error is True
    assert sig.ignore_when_task_not_registered is True
    assert (sig.retry_count, sig.retry_timeout) == (1, 5)


def test_full_signature_decodes_to_its_fields() -> None:
    sig = decode_signature(FULL_BYTES)
    assert sig.with_changes(headers=None) == FULL.with_changes(
        headers=None, args=(*(FULL.args or ())[:5], Arg("float64", 2))
    )
    assert sig.headers == {"a": "b", "f": 2, "m": {"x": True, "y": [1, "&"]}, "n": None, "z": 1}


@pytest.mark.parametrize("field", [field.name for field in dataclasses.fields(Signature)])
def test_each_field_decodes_into_its_own_place(field: str) -> None:
    """Decoding builds a Signature from its fields in order (not through its __init__): each
    field set alone, to a value unlike every other's zero, comes back where it was."""
    value = "only_name" if field == "name" else getattr(FULL, field)
    sig = Signature(**{"name": "n", field: value})
    assert decode_signature(sig.encode()) == sig


def test_escaped_input_is_re_encoded_the_go_way() -> None:
    # Another writer's \u00e9 and raw < come back as Go writes them: raw é, escaped <.
    sig = decode_signature(b'{"Name":"caf\\u00e9<","Headers":{"k":"\\u0026"}}')
    assert sig.name == "café<"
    encoded = sig.encode()
    assert '"Name":"café\\u003c",'.encode() in encoded
    assert b'"Headers":{"k":"\\u0026"},' in encoded


# -- tolerant decoding, as Go's --------------------------------------------------------------


def test_unknown_keys_are_ignored() -> None:
    sig = decode_signature(
        b'{"Name":"add","Unknown":1,"Extra":{"x":[1]},"Args":[{"Type":"int64","Value":1,'
        b'"Comment":"x"}]}'
    )
    assert sig == Signature(name="add", args=(Arg("int64", 1),))


def test_key_case_is_ignored() -> None:
    sig = decode_signature(
        b'{"uuid":"task_1","NAME":"add","routingkey":"q","eTa":"2025-06-01T12:00:05Z",'
        b'"args":[{"name":"n","TYPE":"int64","vAlUe":1}],"retrycount":2,"PRIORITY":1,'
        b'"immutable":true,"onsuccess":[{"name":"cb"}],"chordcallback":{"NAME":"ch"},'
        b'"sqsreceipthandle":"r","IGNOREWHENTASKNOTREGISTERED":true}'
    )
    assert sig == Signature(
        uuid="task_1",
        name="add",
        routing_key="q",
        eta=GoTime.parse("2025-06-01T12:00:05Z"),
        args=(Arg("int64", 1, "n"),),
        retry_count=2,
        priority=1,
        immutable=True,
        on_success=(Signature(name="cb"),),
        chord_callback=Signature(name="ch"),
        sqs_receipt_handle="r",
        ignore_when_task_not_registered=True,
    )


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        (b'{"Name":"first","Name":"second"}', "second"),
        (b'{"Name":"first","name":"second"}', "second"),
        (b'{"name":"first","Name":"second"}', "second"),
        (b'{"NAME":"first","nAmE":"second","Name":"third"}', "third"),
    ],
)
def test_later_duplicate_key_wins(raw: bytes, name: str) -> None:
    assert decode_signature(raw).name == name


def test_missing_fields_take_zero_values() -> None:
    assert decode_signature(b"{}") == Signature(name="")
    assert decode_signature(b'{"Name":"add"}') == Signature(name="add")


def test_null_leaves_a_field_at_its_zero_value() -> None:
    raw = (
        b'{"UUID":null,"Name":null,"RoutingKey":null,"ETA":null,"GroupUUID":null,'
        b'"GroupTaskCount":null,"Args":null,"Headers":null,"Priority":null,"Immutable":null,'
        b'"RetryCount":null,"RetryTimeout":null,"OnSuccess":null,"OnError":null,'
        b'"ChordCallback":null,"BrokerMessageGroupId":null,"SQSReceiptHandle":null,'
        b'"StopTaskDeletionOnError":null,"IgnoreWhenTaskNotRegistered":null}'
    )
    assert decode_signature(raw) == Signature(name="")


def test_older_machinery_message_without_newer_fields() -> None:
    # As logged by a 2017 machinery worker (issue #183): no Priority, SQS or Ignore fields.
    raw = (
        b'{"UUID":"task_ceac1f4e-ea23-4583-b003-82b8e24a5feb","Name":"delay_test",'
        b'"RoutingKey":"test_task","ETA":"2017-09-30T11:39:00.021728343Z","GroupUUID":"",'
        b'"GroupTaskCount":0,"Args":null,"Headers":null,"Immutable":false,"RetryCount":0,'
        b'"RetryTimeout":0,"OnSuccess":null,"OnError":null,"ChordCallback":null}'
    )
    sig = decode_signature(raw)
    assert sig.name == "delay_test"
    assert sig.eta is not None
    assert sig.eta.format() == "2017-09-30T11:39:00.021728343Z"
    assert sig.encode() == (
        b'{"UUID":"task_ceac1f4e-ea23-4583-b003-82b8e24a5feb","Name":"delay_test",'
        b'"RoutingKey":"test_task","ETA":"2017-09-30T11:39:00.021728343Z","GroupUUID":"",'
        b'"GroupTaskCount":0,"Args":null,"Headers":null,"Priority":0,"Immutable":false,'
        b'"RetryCount":0,"RetryTimeout":0,"OnSuccess":null,"OnError":null,"ChordCallback":null,'
        b'"BrokerMessageGroupId":"","SQSReceiptHandle":"","StopTaskDeletionOnError":false,'
        b'"IgnoreWhenTaskNotRegistered":false}'
    )


def test_decoding_does_not_check_arg_values() -> None:
    # A bad argument still gives a Signature, so the worker can fail the task cleanly.
    sig = decode_signature(
        b'{"Name":"add","Args":[{"Type":"int64","Value":"x"},{"Type":"complex128","Value":1},'
        b'{"Type":"int64","Value":2.0}]}'
    )
    assert sig.args is not None
    assert len(sig.args) == 3
    for arg in sig.args:
        with pytest.raises(ArgumentError):
            arg.python_value()


def test_uint64_max_arg_survives() -> None:
    raw = b'{"Name":"x","Args":[{"Name":"","Type":"uint64","Value":18446744073709551615}]}'
    sig = decode_signature(raw)
    assert sig.args is not None
    assert sig.args[0].python_value() == 2**64 - 1
    assert b'"Value":18446744073709551615}' in sig.encode()


def test_float_arg_out_of_float64_range_is_an_argument_error() -> None:
    sig = decode_signature(b'{"Name":"x","Args":[{"Name":"","Type":"float64","Value":1e400}]}')
    assert sig.args is not None
    with pytest.raises(ArgumentError):
        sig.args[0].python_value()


def test_invalid_utf8_becomes_replacement_character_as_in_go() -> None:
    assert decode_signature(b'{"Name":"a\xffb"}').name == "a\ufffdb"


# -- strict decoding: a DecodeError naming the field ------------------------------------------


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"GroupTaskCount":2.0}', "GroupTaskCount"),
        (b'{"GroupTaskCount":1e3}', "GroupTaskCount"),
        (b'{"GroupTaskCount":"2"}', "GroupTaskCount"),
        (b'{"GroupTaskCount":true}', "GroupTaskCount"),
        (b'{"Priority":300}', "Priority"),
        (b'{"Priority":256}', "Priority"),
        (b'{"Priority":-1}', "Priority"),
        (b'{"Priority":2.5}', "Priority"),
        (b'{"Immutable":"yes"}', "Immutable"),
        (b'{"Immutable":1}', "Immutable"),
        (b'{"StopTaskDeletionOnError":"true"}', "StopTaskDeletionOnError"),
        (b'{"IgnoreWhenTaskNotRegistered":0}', "IgnoreWhenTaskNotRegistered"),
        (b'{"ETA":""}', "ETA"),
        (b'{"ETA":5}', "ETA"),
        (b'{"ETA":"tomorrow"}', "ETA"),
        (b'{"ETA":"2025-06-01T12:00:05"}', "ETA"),
        (b'{"RetryCount":"1"}', "RetryCount"),
        (b'{"RetryCount":9223372036854775808}', "RetryCount"),
        (b'{"RetryTimeout":1.5}', "RetryTimeout"),
        (b'{"Name":5}', "Name"),
        (b'{"UUID":[]}', "UUID"),
        (b'{"RoutingKey":true}', "RoutingKey"),
        (b'{"GroupUUID":{}}', "GroupUUID"),
        (b'{"BrokerMessageGroupId":1}', "BrokerMessageGroupId"),
        (b'{"SQSReceiptHandle":{}}', "SQSReceiptHandle"),
        (b'{"Args":{}}', "Args"),
        (b'{"Args":"x"}', "Args"),
        (b'{"Args":[5]}', "Args[0]"),
        (b'{"Args":[{"Type":"int64","Value":1},null]}', "Args[1]"),
        (b'{"Args":[{"Type":5,"Value":1}]}', "Args[0].Type"),
        (b'{"Args":[{"Name":5,"Type":"int64","Value":1}]}', "Args[0].Name"),
        (b'{"Headers":[]}', "Headers"),
        (b'{"Headers":"x"}', "Headers"),
        (b'{"OnSuccess":{}}', "OnSuccess"),
        (b'{"OnSuccess":[5]}', "OnSuccess[0]"),
        (b'{"OnSuccess":[{"Name":"ok"},"x"]}', "OnSuccess[1]"),
        (b'{"OnSuccess":[{"Priority":300}]}', "Priority"),
        (b'{"OnError":"x"}', "OnError"),
        (b'{"OnError":[[]]}', "OnError[0]"),
        (b'{"ChordCallback":[]}', "ChordCallback"),
        (b'{"ChordCallback":5}', "ChordCallback"),
    ],
)
def test_wrong_value_types_are_rejected_naming_the_field(raw: bytes, field: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_signature(raw)
    assert field in str(caught.value)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            b'{"ChordCallback":{"OnSuccess":[{"Args":[{"Type":"x","Name":1}]}]}}',
            "ChordCallback.OnSuccess[0].Args[0].Name must be a string, got number",
        ),
        (b'{"OnSuccess":[{"Priority":300}]}', "OnSuccess[0].Priority 300 is out of range"),
        (b'{"ChordCallback":{"OnError":[5]}}', "ChordCallback.OnError[0] must be a JSON object"),
        (b'{"OnError":[{"Headers":[]}]}', "OnError[0].Headers must be an object, got array"),
    ],
)
def test_a_nested_field_is_named_by_its_whole_path(raw: bytes, message: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_signature(raw)
    assert str(caught.value).startswith(message)


def _nested_links(count: int) -> bytes:
    """A message whose OnSuccess nests ``count`` links in all, as any producer may write it."""
    body = b'{"UUID":"task_last","Name":"add"}'
    for index in range(count - 1):
        body = b'{"UUID":"task_%d","Name":"add","OnSuccess":[%s]}' % (index, body)
    return body


def test_a_chain_as_long_as_chains_go_round_trips_byte_for_byte() -> None:
    from taskd import chain
    from taskd.client import signature
    from taskd.workflows import MAX_CHAIN_LINKS, Chain

    sent = chain(*[signature("add", index) for index in range(MAX_CHAIN_LINKS)])
    body = sent.head.encode()
    decoded = decode_signature(body)
    assert decoded.encode() == body
    assert [link.uuid for link in Chain(decoded, sent.link_ids).links] == list(sent.link_ids)


def test_a_chain_longer_than_workers_can_read_is_refused_where_it_is_built() -> None:
    from taskd import chain
    from taskd.client import signature
    from taskd.workflows import MAX_CHAIN_LINKS

    with pytest.raises(
        ValueError, match=f"longer than workers can read \\(at most {MAX_CHAIN_LINKS}"
    ):
        chain(*[signature("add") for _ in range(MAX_CHAIN_LINKS + 1)])
    assert decode_signature(_nested_links(MAX_CHAIN_LINKS + 100)).uuid == "task_498"
    with pytest.raises(DecodeError, match="nested too deeply"):  # why there is a limit at all
        decode_signature(_nested_links(520))


def test_the_identity_of_a_message_too_deep_to_read_is_still_found() -> None:
    from taskd.wire.signature import identity_of

    assert identity_of(_nested_links(600)) == ("task_598", "add")
    assert identity_of(b'{"UUID":"task_cut","Name":"add","Args":[') == ("task_cut", "add")
    assert identity_of(b"not json") == ("", "")


def test_wrong_number_error_shows_the_value_as_sent() -> None:
    with pytest.raises(DecodeError, match=r"GroupTaskCount.*2\.0"):
        decode_signature(b'{"GroupTaskCount":2.0}')


@pytest.mark.parametrize("raw", [b"[]", b'"add"', b"null", b"5", b"true", b'[{"Name":"add"}]'])
def test_a_non_object_body_is_rejected(raw: bytes) -> None:
    with pytest.raises(DecodeError, match="signature must be a JSON object"):
        decode_signature(raw)


@pytest.mark.parametrize("raw", [b"", b"{", b'{"Name":"add"', b"not json", b'{"Name":"a",}'])
def test_invalid_json_is_rejected(raw: bytes) -> None:
    with pytest.raises(DecodeError, match="not valid JSON"):
        decode_signature(raw)


def test_decode_error_keeps_the_raw_body() -> None:
    with pytest.raises(DecodeError) as caught:
        decode_signature(b"{oops")
    assert caught.value.raw == b"{oops"


# -- helpers ----------------------------------------------------------------------------------

_UUID4 = "[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"


@pytest.mark.parametrize("prefix", ["task", "group", "chord"])
def test_new_id(prefix: str) -> None:
    first, second = new_id(prefix), new_id(prefix)
    assert re.fullmatch(f"{prefix}_{_UUID4}", first)
    assert first != second


def test_new_id_defaults_to_task() -> None:
    assert re.fullmatch(f"task_{_UUID4}", new_id())


def test_with_changes_returns_a_new_signature() -> None:
    original = Signature(name="add", retry_count=2)
    changed = original.with_changes(retry_count=1, routing_key="q")
    assert (changed.retry_count, changed.routing_key, changed.name) == (1, "q", "add")
    assert (original.retry_count, original.routing_key) == (2, "")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (GO_ADD, "machinery_tasks"),
        (GO_SQS, "jobs.fifo"),
        (b'{"routingkey":"q"}', "q"),
        (b'{"Name":"x"}', None),
        (b'{"RoutingKey":""}', None),
        (b'{"RoutingKey":5}', None),
        (b"[1]", None),
        (b"garbage", None),
    ],
)
def test_peek_routing_key(raw: bytes, expected: str | None) -> None:
    assert peek_routing_key(raw) == expected


def test_new_ids_are_uuid4_text_behind_their_prefix() -> None:
    import uuid

    from taskd.wire import new_id

    ids = {new_id("group") for _ in range(2000)}
    assert len(ids) == 2000
    variants = set()
    for made in ids:
        prefix, _, text = made.partition("_")
        parsed = uuid.UUID(text)
        assert prefix == "group" and str(parsed) == text
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        variants.add(text[19])
    assert variants == set("89ab")


def test_a_signature_nested_in_itself_is_refused_not_followed_for_ever() -> None:
    from taskd.wire.signature import MAX_NESTED, decode_signature_object

    looped: dict[str, object] = {"UUID": "task_loop", "Name": "add"}
    looped["OnSuccess"] = [looped]  # as a YAML anchor inside its own alias makes one
    with pytest.raises(DecodeError, match=f"more than {MAX_NESTED} signatures nested in one"):
        decode_signature_object(looped)
