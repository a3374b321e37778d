"""Typed values: Arg.parse / parse_typed, strict checks, inference, Go's %v text."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from taskd.errors import ArgumentError
from taskd.wire import Arg
from taskd.wire import args as typed


def _f32(value: float) -> float:
    return struct.unpack("<f", struct.pack("<f", value))[0]


# -- TYPE:VALUE parsing, every type family ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "type_name", "wire", "python"),
    [
        ("bool:true", "bool", True, True),
        ("bool:false", "bool", False, False),
        ("int:5", "int", 5, 5),
        ("int8:-128", "int8", -128, -128),
        ("int8:127", "int8", 127, 127),
        ("int16:32767", "int16", 32767, 32767),
        ("int32:-2147483648", "int32", -(2**31), -(2**31)),
        ("int64:9223372036854775807", "int64", 2**63 - 1, 2**63 - 1),
        ("int64:-9223372036854775808", "int64", -(2**63), -(2**63)),
        ("uint:0", "uint", 0, 0),
        ("uint8:255", "uint8", 255, 255),
        ("uint16:65535", "uint16", 65535, 65535),
        ("uint32:4294967295", "uint32", 2**32 - 1, 2**32 - 1),
        ("uint64:18446744073709551615", "uint64", 2**64 - 1, 2**64 - 1),
        ("float64:2.5", "float64", 2.5, 2.5),
        ("float64:2", "float64", 2.0, 2.0),
        ("float64:1e3", "float64", 1000.0, 1000.0),
        ("float64:-1.5e-7", "float64", -1.5e-7, -1.5e-7),
        ("float32:1.5", "float32", 1.5, 1.5),
        ("float32:1.1", "float32", _f32(1.1), _f32(1.1)),
        ("string:hello world", "string", "hello world", "hello world"),
        ('string:"quoted"', "string", "quoted", "quoted"),
        ('string:"a\\u003cb"', "string", "a<b", "a<b"),
        ("string:", "string", "", ""),
        ('string:""', "string", "", ""),
        ('string:"', "string", '"', '"'),
        ("string:a:b", "string", "a:b", "a:b"),
        ("string:5", "string", "5", "5"),
        ("[]bool:[true,false]", "[]bool", [True, False], [True, False]),
        ("[]int:[1,-2]", "[]int", [1, -2], [1, -2]),
        ("[]int8:[-128,127]", "[]int8", [-128, 127], [-128, 127]),
        ("[]int16:[1]", "[]int16", [1], [1]),
        ("[]int32:[1]", "[]int32", [1], [1]),
        ("[]int64:[1,2,3]", "[]int64", [1, 2, 3], [1, 2, 3]),
        ("[]int64:[]", "[]int64", [], []),
        ("[]int64:null", "[]int64", [], []),
        ("[]uint:[1]", "[]uint", [1], [1]),
        ("[]uint16:[1,65535]", "[]uint16", [1, 65535], [1, 65535]),
        ('[]uint16:"AQI="', "[]uint16", [1, 2], [1, 2]),  # base64 for any []uint*
        ("[]uint32:[4294967295]", "[]uint32", [2**32 - 1], [2**32 - 1]),
        ("[]uint64:[18446744073709551615]", "[]uint64", [2**64 - 1], [2**64 - 1]),
        ("[]float32:[1.5,2]", "[]float32", [1.5, 2.0], [1.5, 2.0]),
        ("[]float64:[1,2.5,1e3]", "[]float64", [1.0, 2.5, 1000.0], [1.0, 2.5, 1000.0]),
        ('[]string:["a","b"]', "[]string", ["a", "b"], ["a", "b"]),
        ("[]string:null", "[]string", [], []),
        ('[]byte:"AQL/"', "[]byte", "AQL/", b"\x01\x02\xff"),
        ("[]byte:[1,2,255]", "[]byte", "AQL/", b"\x01\x02\xff"),
        ('[]uint8:"aGk="', "[]uint8", "aGk=", b"hi"),
        ("[]uint8:[104,105]", "[]uint8", "aGk=", b"hi"),
        ('[]byte:""', "[]byte", "", b""),
    ],
)
def test_parse_every_type(text: str, type_name: str, wire: Any, python: Any) -> None:
    arg = Arg.parse(text)
    assert arg == Arg(type_name, wire)
    assert arg.name == ""
    value = arg.python_value()
    assert value == python
    assert type(value) is type(python)
    if isinstance(python, list) and python:
        assert [type(item) for item in value] == [type(item) for item in python]


def test_parse_typed_returns_python_values() -> None:
    assert typed.parse_typed("[]byte:[1,2]") == ("[]byte", b"\x01\x02")
    assert typed.parse_typed("int64:5") == ("int64", 5)
    assert typed.parse_typed("float64:5") == ("float64", 5.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("int64:2.0", "2.0 is not int64"),
        ("int64:1e3", "1000.0 is not int64"),
        ("int64:-0.5", "is not int64"),
        ('int64:"5"', '"5" is not int64'),
        ("int64:true", "True is not int64"),
        ("int64:null", "None is not int64"),
        ("int64:9223372036854775808", "out of range for int64"),
        ("int:-9223372036854775809", "int"),
        ("int8:128", "128 is out of range for int8"),
        ("int8:-129", "-129 is out of range for int8"),
        ("int16:32768", "out of range for int16"),
        ("int32:2147483648", "out of range for int32"),
        ("uint:-1", "-1 is out of range for uint"),
        ("uint64:-1", "-1 is out of range for uint64"),
        ("uint8:300", "300 is out of range for uint8"),
        ("uint8:256", "256 is out of range for uint8"),
        ("uint16:65536", "out of range for uint16"),
        ("uint32:4294967296", "out of range for uint32"),
        ("uint64:18446744073709551616", "uint64"),
        ("float32:1e39", "out of range for float32"),
        ("float32:-1e39", "out of range for float32"),
        ('float64:"1.5"', "is not float64"),
        ("float64:true", "is not float64"),
        ("bool:1", "1 is not bool"),
        ('bool:"true"', "is not bool"),
        ("[]int64:[1,2.5]", "[]int64 element: 2.5 is not int64"),
        ("[]int64:5", "5 is not []int64"),
        ('[]int64:"AQI="', "is not []int64"),
        ('[]int8:"AQI="', "is not []int8"),  # base64 only for unsigned slices
        ("[]uint8:[256]", "[]uint8 element: 256 is out of range for uint8"),
        ("[]byte:[-1]", "[]byte element: -1 is out of range for uint8"),
        ('[]byte:"!!not base64"', "is not base64 for []byte"),
        ('[]uint16:"A"', "is not base64 for []uint16"),
        ("[]byte:{}", "is not []byte"),
        ('[]string:["a",1]', "[]string element: 1 is not string"),
        ("[]uint:[-1]", "out of range for uint"),
        ("map[string]int:{}", "'map[string]int' is not one of machinery's types"),
        ("[][]int64:[[1]]", "'[][]int64' is not one of machinery's types"),
        ("Int64:5", "'Int64' is not one of machinery's types"),
        ("interface {}:5", "is not one of machinery's types"),
        ("int64", "is not TYPE:VALUE"),
        ("5", "is not TYPE:VALUE"),
        ("int64:", "is not a JSON value for int64"),
        ("int64:[1,", "is not a JSON value for int64"),
    ],
)
def test_parse_rejects(text: str, message: str) -> None:
    with pytest.raises(ArgumentError) as caught:
        Arg.parse(text)
    assert message in str(caught.value)


# -- check(): decoded JSON -> Python -----------------------------------------------------------


@pytest.mark.parametrize(
    ("type_name", "value", "expected"),
    [
        ("[]int64", None, []),
        ("[]string", None, []),
        ("[]byte", None, b""),
        ("[]uint8", None, b""),
        ("[]byte", b"raw", b"raw"),
        ("[]byte", bytearray(b"raw"), b"raw"),
        ("float64", 3, 3.0),
        ("float32", 3, 3.0),
        ("int64", 7, 7),
    ],
)
def test_check(type_name: str, value: Any, expected: Any) -> None:
    result = typed.check(type_name, value)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize("type_name", ["", "int128", "[]map", "[]", "[]int64 "])
def test_check_rejects_unknown_types(type_name: str) -> None:
    with pytest.raises(ArgumentError, match="is not one of machinery's types"):
        typed.check(type_name, 1)


def test_type_names_are_machinerys_set() -> None:
    scalars = {
        "bool",
        "int",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float32",
        "float64",
        "string",
    }
    assert scalars | {f"[]{name}" for name in scalars} | {"[]byte"} == typed.TYPE_NAMES


# -- Arg.of / python_value round trips ---------------------------------------------------------


@pytest.mark.parametrize(
    ("type_name", "value"),
    [
        ("bool", True),
        ("int64", -5),
        ("uint64", 2**64 - 1),
        ("float64", 2.5),
        ("float32", _f32(0.1)),
        ("string", "héllo <&>"),
        ("[]int64", [1, 2, 3]),
        ("[]float64", [0.5]),
        ("[]string", ["a", "b"]),
        ("[]bool", [False]),
        ("[]byte", b"\x00\x01\xfe\xff"),
        ("[]uint8", b""),
        ("[]uint32", [0, 7]),
    ],
)
def test_python_value_round_trips(type_name: str, value: Any) -> None:
    arg = Arg.of(type_name, value)
    assert arg.python_value() == value
    assert Arg.of(type_name, arg.python_value()) == arg


def test_arg_of_keeps_bytes_as_base64_on_the_wire() -> None:
    arg = Arg.of("[]byte", b"\x01\x02")
    assert arg.value == "AQI="
    assert arg.encode() == '{"Name":"","Type":"[]byte","Value":"AQI="}'


def test_arg_of_checks_the_value() -> None:
    with pytest.raises(ArgumentError, match="out of range for uint8"):
        Arg.of("uint8", 300)
    with pytest.raises(ArgumentError, match="is not int64"):
        Arg.of("int64", 2.0)


def test_arg_of_converts_float32_to_a_float32_value() -> None:
    arg = Arg.of("float32", 1.1)
    assert arg.value == _f32(1.1)
    assert arg.encode() == '{"Name":"","Type":"float32","Value":1.1}'


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        (Arg("int64", 2), '{"Name":"","Type":"int64","Value":2}'),
        (Arg("float64", 2.0), '{"Name":"","Type":"float64","Value":2}'),
        (Arg("float64", 2), '{"Name":"","Type":"float64","Value":2}'),
        (Arg("float64", 1e21), '{"Name":"","Type":"float64","Value":1e+21}'),
        (Arg("float64", 1.5e-7), '{"Name":"","Type":"float64","Value":1.5e-7}'),
        (Arg("float32", 1.1), '{"Name":"","Type":"float32","Value":1.1}'),
        (Arg("[]float32", [1.1, 0.1]), '{"Name":"","Type":"[]float32","Value":[1.1,0.1]}'),
        (Arg("[]float64", [1.0, 2]), '{"Name":"","Type":"[]float64","Value":[1,2]}'),
        (Arg("[]int64", None), '{"Name":"","Type":"[]int64","Value":null}'),
        (Arg("[]byte", b"\x00\xff"), '{"Name":"","Type":"[]byte","Value":"AP8="}'),
        (Arg("[]uint8", "AP8="), '{"Name":"","Type":"[]uint8","Value":"AP8="}'),
        (Arg("string", "<a&b>"), '{"Name":"","Type":"string","Value":"\\u003ca\\u0026b\\u003e"}'),
        (Arg("bool", False, "flag"), '{"Name":"flag","Type":"bool","Value":false}'),
        (Arg("int64", 1, "x<"), '{"Name":"x\\u003c","Type":"int64","Value":1}'),
        (Arg("uint64", 2**64 - 1), '{"Name":"","Type":"uint64","Value":18446744073709551615}'),
    ],
)
def test_arg_encode(arg: Arg, expected: str) -> None:
    assert arg.encode() == expected


@pytest.mark.parametrize(
    ("type_name", "value", "expected"),
    [
        ("int64", 3, "3"),
        ("uint8", 3, "3"),
        ("float64", 2.0, "2"),
        ("float64", 100, "100"),
        ("float32", 0.1, "0.1"),
        ("string", "é\u2028", '"é\\u2028"'),
        ("[]string", ["a", "<"], '["a","\\u003c"]'),
        ("[]int64", [], "[]"),
        ("[]int64", None, "null"),
        ("[]byte", b"hi", '"aGk="'),
        ("[]uint8", bytearray(b"hi"), '"aGk="'),
        ("[]bool", [True], "[true]"),
    ],
)
def test_encode_typed_values(type_name: str, value: Any, expected: str) -> None:
    assert typed.encode(type_name, value) == expected


# -- inference ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        (True, "bool"),
        (False, "bool"),
        (0, "int64"),
        (-5, "int64"),
        (2**63 - 1, "int64"),
        (-(2**63), "int64"),
        (2**63, "uint64"),
        (2**64 - 1, "uint64"),
        (1.5, "float64"),
        (2.0, "float64"),
        ("s", "string"),
        ("", "string"),
        (b"x", "[]uint8"),
        (bytearray(b"x"), "[]uint8"),
        ([1, 2], "[]int64"),
        ((1, 2), "[]int64"),
        (["a", "b"], "[]string"),
        ([True], "[]bool"),
        ([1.5, 2.5], "[]float64"),
        ([], "[]string"),
        ([1, 2**63], "[]uint64"),
        ([1, 2.5], "[]float64"),
        ([2**63, 2.5], "[]float64"),
    ],
)
def test_infer(value: Any, type_name: str) -> None:
    assert typed.infer(value) == type_name


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "NoneType has no machinery type"),
        ({}, "dict has no machinery type"),
        ({"a": 1}, "dict has no machinery type"),
        (object(), "object has no machinery type"),
        (2**64, "does not fit in 64 bits"),
        (-(2**63) - 1, "does not fit in 64 bits"),
        ([True, 1], "has no machinery type"),
        (["a", 1], "has no machinery type"),
        ([[1]], "has no machinery type"),
        ([None], "has no machinery type"),
        ([{"a": 1}], "has no machinery type"),
    ],
)
def test_infer_rejects(value: Any, message: str) -> None:
    with pytest.raises(ArgumentError, match=message):
        typed.infer(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (5, Arg("int64", 5)),
        ("x", Arg("string", "x")),
        (2.5, Arg("float64", 2.5)),
        ([1, 2.5], Arg("[]float64", [1.0, 2.5])),
        (b"\x01", Arg("[]uint8", "AQ==")),
    ],
)
def test_arg_infer(value: Any, expected: Arg) -> None:
    assert Arg.infer(value) == expected


@pytest.mark.parametrize(
    ("value", "type_name"), [((1, 2), "[]int64"), (("a", "b"), "[]string"), ((), "[]string")]
)
def test_arg_infer_accepts_tuples_as_slices(value: tuple[Any, ...], type_name: str) -> None:
    arg = Arg.infer(value)
    assert arg.type == type_name
    assert arg.python_value() == list(value)


def test_arg_infer_passes_an_arg_through() -> None:
    arg = Arg("uint8", 5, "n")
    assert Arg.infer(arg) is arg


def test_arg_infer_rejects_mixed_signs_beyond_int64() -> None:
    with pytest.raises(ArgumentError, match="out of range for uint64"):
        Arg.infer([-1, 2**63])


# -- Go's %v and HumanReadableResults ---------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([6], "6"),
        ([[1, 2, 3]], "[1 2 3]"),
        ([["a", "b"]], "[a b]"),
        (["a", "b"], "[a, b]"),
        ([1, "x", True], "[1, x, true]"),
        ([], "[]"),
        ([[]], "[]"),
        (["f o"], "f o"),
        ([b"\x01\x02"], "[1 2]"),
        ([False], "false"),
        ([[True, False]], "[true false]"),
        ([1e6], "1e+06"),
        ([4.2], "4.2"),
        ([123456789.0], "1.23456789e+08"),
        ([999999.0], "999999"),
        ([100000.5], "100000.5"),
        ([2.0], "2"),
        ([0.0], "0"),
        ([-0.0], "-0"),
        ([0.0001], "0.0001"),
        ([0.00001], "1e-05"),
        ([-1.5e-7], "-1.5e-07"),
        ([1e21], "1e+21"),
        ([1e100], "1e+100"),
        ([float("nan")], "NaN"),
        ([float("inf")], "+Inf"),
        ([float("-inf")], "-Inf"),
        ([[1.5, 1e6]], "[1.5 1e+06]"),
        ([1.5, 2.0], "[1.5, 2]"),
    ],
)
def test_human_readable_like_go(values: list[Any], expected: str) -> None:
    assert typed.human_readable(values) == expected


def test_slice_helpers() -> None:
    assert typed.is_slice("[]int64")
    assert not typed.is_slice("int64")
    assert typed.element_type("[]int64") == "int64"
    assert typed.element_type("[]byte") == "uint8"
    assert typed.kind_of("[]byte") == "uint"
    assert typed.kind_of("float32") == "float"
    assert typed.kind_of("[]string") == "string"


class _Code(int):  # a task's own int type, as an IntEnum is: its text is not its JSON
    def __str__(self) -> str:
        return "CODE"

    __repr__ = __str__


class _Ratio(float):
    def __repr__(self) -> str:
        return "RATIO"


class _Label(str):
    def __str__(self) -> str:
        return "LABEL"


def test_subclasses_of_int_float_and_str_are_written_as_their_plain_values() -> None:
    from taskd.client import signature
    from taskd.wire import State, TaskState, decode_signature
    from taskd.wire.state import decode_state, results_from_return

    sig = signature(
        "add", _Code(1), [_Code(2)], _Ratio(2.5), [_Label("x")], headers={"h": _Code(3)}
    )
    assert decode_signature(sig.encode()).args == (
        Arg("int64", 1),
        Arg("[]int64", [2]),
        Arg("float64", 2.5),
        Arg("[]string", ["x"]),
    )
    assert b'"Headers":{"h":3}' in sig.encode()
    results = results_from_return((_Code(5), [_Ratio(0.5)], _Label("y")))
    stored = decode_state(TaskState("t", State.SUCCESS, results=results).encode())
    assert [r.python_value() for r in stored.results or ()] == [5, [0.5], "y"]
