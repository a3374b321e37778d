"""machinery's task message: ``Signature`` and ``Arg``, encoded exactly as Go encodes them.

Go's ``encoding/json`` writes a ``tasks.Signature`` with its Go field names, in declaration
order, every field present and nil as ``null`` (it has no json tags). Decoding is as tolerant
as Go's (unknown keys ignored, key case ignored) and as strict about value types.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from taskd.errors import DecodeError
from taskd.wire import args as typed
from taskd.wire import gojson
from taskd.wire.fields import want_bool, want_int, want_str, want_time
from taskd.wire.gotime import GoTime
from taskd.wire.records import builder


def new_id(prefix: str = "task") -> str:
    """A machinery id: ``task_<uuid4>``, ``group_<uuid4>`` or ``chord_<uuid4>``."""
    # uuid.uuid4()'s text from the same 16 random bytes, without building a UUID object (a
    # third of the cost; one per send): version 4, and the variant's top bits 10.
    h = os.urandom(16).hex()
    variant = "89ab"[int(h[16], 16) & 3]
    return f"{prefix}_{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:]}"


# Headers taskd reads (Go producers set them too): a task's limits in seconds, a number or its
# decimal text (taskd.worker.limits).
TIME_LIMIT_HEADER = "time_limit"
SOFT_TIME_LIMIT_HEADER = "soft_time_limit"


@dataclass(frozen=True, slots=True)
class Arg:
    """One positional argument: a machinery type name and its value as JSON carries it.

    ``value`` is the wire value (``[]byte`` as a base64 string); ``python_value()`` checks it
    against the type and converts it. Decoding never checks values, so a message whose
    argument does not fit its type still yields a Signature the worker can fail cleanly.
    """

    type: str
    value: Any
    name: str = ""

    @classmethod
    def of(cls, type_name: str, value: Any, name: str = "") -> Arg:
        """A checked argument from a Python value: ``Arg.of("[]int64", [1, 2])``."""
        return cls(type_name, typed.to_wire(type_name, typed.check(type_name, value)), name)

    @classmethod
    def infer(cls, value: Any) -> Arg:
        """An argument typed after its Python value (int -> int64, list[str] -> []string)."""
        if isinstance(value, Arg):
            return value
        return cls.of(typed.infer(value), value)

    @classmethod
    def parse(cls, text: str) -> Arg:
        """An argument from ``TYPE:VALUE`` text (``[]int64:[1,2,3]``, ``string:hello``)."""
        return cls.of(*typed.parse_typed(text))

    def python_value(self) -> Any:
        """The value as Python sees it; raises ArgumentError when it does not fit the type."""
        return typed.check(self.type, self.value)

    def encode(self) -> str:
        return (
            f'{{"Name":{gojson.encode_name(self.name)},"Type":{gojson.encode_name(self.type)},'
            f'"Value":{typed.encode(self.type, self.value)}}}'
        )


@dataclass(frozen=True, slots=True)
class Signature:
    """A task invocation, field for field machinery's ``tasks.Signature``."""

    name: str
    uuid: str = ""
    routing_key: str = ""
    eta: GoTime | None = None
    group_uuid: str = ""
    group_task_count: int = 0
    args: tuple[Arg, ...] | None = None
    headers: Mapping[str, Any] | None = None
    priority: int = 0
    immutable: bool = False
    retry_count: int = 0
    retry_timeout: int = 0
    on_success: tuple[Signature, ...] | None = None
    on_error: tuple[Signature, ...] | None = None
    chord_callback: Signature | None = None
    broker_message_group_id: str = ""
    sqs_receipt_handle: str = ""
    stop_task_deletion_on_error: bool = False
    ignore_when_task_not_registered: bool = False

    def with_changes(self, **changes: Any) -> Signature:
        return replace(self, **changes)

    def encode(self) -> bytes:
        return _encode_signature(self).encode()


def _encode_list(items: tuple[Any, ...] | None, encode_item: Callable[[Any], str]) -> str:
    if items is None:
        return "null"
    return "[" + ",".join(encode_item(item) for item in items) + "]"


def _nested(sig: Signature) -> list[Signature]:
    nested = [*(sig.on_success or ()), *(sig.on_error or ())]
    return nested if sig.chord_callback is None else [*nested, sig.chord_callback]


def _encode_signature(top: Signature) -> str:
    # The signatures nested in it (a chain's later links, callbacks) are written innermost
    # first, without recursion: a chain may be hundreds of links deep.
    if top.on_success is None and top.on_error is None and top.chord_callback is None:
        return _encode_fields(top, {})
    order, pending = [], [top]
    while pending:
        sig = pending.pop()
        order.append(sig)
        pending.extend(_nested(sig))
    written: dict[int, str] = {}
    for sig in reversed(order):  # each after the signatures nested in it
        written[id(sig)] = _encode_fields(sig, written)
    return written[id(top)]


def _encode_fields(sig: Signature, written: Mapping[int, str]) -> str:
    """``sig`` as JSON, the signatures nested in it taken from ``written`` (by id)."""
    s, name, nested = gojson.encode_str, gojson.encode_name, lambda n: written[id(n)]
    return (
        f'{{"UUID":{s(sig.uuid)},"Name":{name(sig.name)},"RoutingKey":{name(sig.routing_key)},'
        f'"ETA":{"null" if sig.eta is None else s(sig.eta.format())},'
        f'"GroupUUID":{s(sig.group_uuid)},"GroupTaskCount":{sig.group_task_count},'
        f'"Args":{_encode_list(sig.args, Arg.encode)},'
        f'"Headers":{gojson.encode_value(sig.headers)},"Priority":{sig.priority},'
        f'"Immutable":{_bool(sig.immutable)},"RetryCount":{sig.retry_count},'
        f'"RetryTimeout":{sig.retry_timeout},'
        f'"OnSuccess":{_encode_list(sig.on_success, nested)},'
        f'"OnError":{_encode_list(sig.on_error, nested)},'
        f'"ChordCallback":'
        f"{'null' if sig.chord_callback is None else nested(sig.chord_callback)},"
        f'"BrokerMessageGroupId":{s(sig.broker_message_group_id)},'
        f'"SQSReceiptHandle":{s(sig.sqs_receipt_handle)},'
        f'"StopTaskDeletionOnError":{_bool(sig.stop_task_deletion_on_error)},'
        f'"IgnoreWhenTaskNotRegistered":{_bool(sig.ignore_when_task_not_registered)}}}'
    )


def _bool(value: bool) -> str:
    return "true" if value else "false"


# -- decoding -------------------------------------------------------------------------------

ARG_FIELDS = {"name": "Name", "type": "Type", "value": "Value"}


_new_arg = builder(Arg)  # (type, value, name)
build_signature = builder(Signature)  # every field, in the order Signature declares them


def _decode_arg(obj: Any, index: int) -> Arg:
    try:  # the field's path is joined on error only: arguments are read on every task
        fields = gojson.fold_keys(obj, ARG_FIELDS, "")
        return _new_arg(
            want_str(fields.get("Type"), "Type"),
            fields.get("Value"),
            want_str(fields.get("Name"), "Name"),
        )
    except DecodeError as exc:
        separator = "" if exc.reason.startswith(" ") else "."
        raise DecodeError(f"Args[{index}]{separator}{exc.reason}", exc.raw) from None


SIGNATURE_FIELDS = {
    name.lower(): name
    for name in (
        "UUID Name RoutingKey ETA GroupUUID GroupTaskCount Args Headers Priority Immutable "
        "RetryCount RetryTimeout OnSuccess OnError ChordCallback BrokerMessageGroupId "
        "SQSReceiptHandle StopTaskDeletionOnError IgnoreWhenTaskNotRegistered"
    ).split()
}


def _decoded_list(
    value: Any, key: str, decoded: Mapping[int, Signature]
) -> tuple[Signature, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise DecodeError(f"{key} must be an array, got {gojson.json_type(value)}")
    return tuple(decoded[id(item)] for item in value)


MAX_NESTED = 100_000  # far more than JSON's depth lets a message hold, and a loop's end


def decode_signature_object(obj: Any, path: str = "") -> Signature:
    """A Signature from decoded JSON; DecodeError names the offending field by its path
    (``Priority``, ``OnSuccess[0].Args[1].Type``)."""
    top = gojson.fold_keys(obj, SIGNATURE_FIELDS, path or "signature")
    on_success, on_error, chord = top.get("OnSuccess"), top.get("OnError"), top.get("ChordCallback")
    if on_success is None and on_error is None and chord is None:  # most messages
        return _signature_of_at(top, {}, lambda: path)
    # The signatures nested in it (a chain's later links, callbacks) are decoded innermost
    # first, without recursion: a chain may be hundreds of links deep. Each is found as
    # (JSON object, its fields, the index of the one it is nested in, its key there); a path
    # is joined only for an error.
    found: list[tuple[Any, dict[str, Any], int, str]] = []

    def path_of(index: int, key: str = "") -> str:
        keys = [key] if key else []
        while index > 0:
            _raw, _fields, index, nested_as = found[index]
            keys.append(nested_as)
        return ".".join([path, *reversed(keys)] if path else reversed(keys))

    pending: list[tuple[Any, int, str]] = [(obj, -1, "")]
    while pending:
        raw, parent, key = pending.pop()
        if len(found) >= MAX_NESTED:  # a YAML document can nest a signature in itself
            raise DecodeError(f"more than {MAX_NESTED} signatures nested in one")
        try:  # its path before the reason (" must be a JSON object..."), joined on error only
            fields = top if parent < 0 else gojson.fold_keys(raw, SIGNATURE_FIELDS, "")
        except DecodeError as exc:
            raise DecodeError(f"{path_of(parent, key)}{exc.reason}", exc.raw) from None
        index = len(found)
        found.append((raw, fields, parent, key))
        for name in ("OnSuccess", "OnError"):
            value = fields.get(name)
            if isinstance(value, list):
                pending += [(item, index, f"{name}[{i}]") for i, item in enumerate(value)]
        if fields.get("ChordCallback") is not None:
            pending.append((fields["ChordCallback"], index, "ChordCallback"))
    decoded: dict[int, Signature] = {}
    for index in range(len(found) - 1, -1, -1):  # each after the signatures nested in it
        raw, fields, _parent, _key = found[index]
        decoded[id(raw)] = _signature_of_at(fields, decoded, lambda at=index: path_of(at))
    return decoded[id(obj)]


def _signature_of_at(
    fields: dict[str, Any], decoded: Mapping[int, Signature], path: Callable[[], str]
) -> Signature:
    try:
        return _signature_of(fields, decoded)
    except DecodeError as exc:
        where = path()
        if not where:
            raise
        # The path is joined here, on error only: a message is decoded on every task.
        raise DecodeError(f"{where}.{exc.reason}", exc.raw) from None


def _signature_of(f: dict[str, Any], decoded: Mapping[int, Signature]) -> Signature:
    """A Signature from an object's canonical fields, those nested in it already ``decoded``
    (by the id of their JSON objects); errors name fields from here."""
    raw_args = f.get("Args")
    args: tuple[Arg, ...] | None = None
    if raw_args is not None:
        if not isinstance(raw_args, list):
            raise DecodeError(f"Args must be an array, got {gojson.json_type(raw_args)}")
        args = tuple([_decode_arg(item, i) for i, item in enumerate(raw_args)])
    headers = f.get("Headers")
    if headers is not None and not isinstance(headers, dict):
        raise DecodeError(f"Headers must be an object, got {gojson.json_type(headers)}")
    chord = f.get("ChordCallback")
    uuid = want_str(f.get("UUID"), "UUID")  # named first where both it and Name are wrong
    return build_signature(  # Signature's fields, in order
        want_str(f.get("Name"), "Name"),
        uuid,
        want_str(f.get("RoutingKey"), "RoutingKey"),
        want_time(f.get("ETA"), "ETA"),
        want_str(f.get("GroupUUID"), "GroupUUID"),
        want_int(f.get("GroupTaskCount"), "GroupTaskCount"),
        args,
        headers,
        want_int(f.get("Priority"), "Priority", 0, 255),
        want_bool(f.get("Immutable"), "Immutable"),
        want_int(f.get("RetryCount"), "RetryCount"),
        want_int(f.get("RetryTimeout"), "RetryTimeout"),
        _decoded_list(f.get("OnSuccess"), "OnSuccess", decoded),
        _decoded_list(f.get("OnError"), "OnError", decoded),
        None if chord is None else decoded[id(chord)],
        want_str(f.get("BrokerMessageGroupId"), "BrokerMessageGroupId"),
        want_str(f.get("SQSReceiptHandle"), "SQSReceiptHandle"),
        want_bool(f.get("StopTaskDeletionOnError"), "StopTaskDeletionOnError"),
        want_bool(f.get("IgnoreWhenTaskNotRegistered"), "IgnoreWhenTaskNotRegistered"),
    )


def decode_signature(body: bytes) -> Signature:
    """A Signature from a message body; raises DecodeError naming the offending field."""
    return decode_signature_object(gojson.loads(body))


# Go and taskd write UUID and Name first: found there when the JSON as a whole cannot be read
# (nested deeper than any JSON reader here takes, or cut short).
_LEADING_IDENTITY = re.compile(rb'\s*\{"UUID":"([^"\\]*)","Name":"([^"\\]*)"')


def identity_of(body: bytes) -> tuple[str, str]:
    """The UUID and Name of a message that may not decode as a whole ("" where unreadable),
    so that its sender can be told why it was set aside."""
    try:
        fields = gojson.fold_keys(gojson.loads(body), SIGNATURE_FIELDS, "signature")
    except DecodeError:
        found = _LEADING_IDENTITY.match(body)
        if found is None:
            return "", ""
        uuid, name = (part.decode("utf-8", "replace") for part in found.groups())
        return uuid, name
    uuid, name = fields.get("UUID"), fields.get("Name")
    return (uuid if isinstance(uuid, str) else "", name if isinstance(name, str) else "")


def peek_routing_key(body: bytes) -> str | None:
    """The RoutingKey of a message body, or None when the body is not a machinery message."""
    try:
        obj = gojson.loads(body)
        fields = gojson.fold_keys(obj, SIGNATURE_FIELDS, "signature")
        return want_str(fields.get("RoutingKey"), "RoutingKey") or None
    except DecodeError:
        return None
