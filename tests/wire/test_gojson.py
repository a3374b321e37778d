"""gojson: bytes exactly as Go's encoding/json writes them, decoding as tolerant as Go's."""

from __future__ import annotations

import pytest

from taskd.errors import DecodeError
from taskd.wire import gojson

# -- strings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", '""'),
        ("hello", '"hello"'),
        ("<a href='x'>&</a>", "\"\\u003ca href='x'\\u003e\\u0026\\u003c/a\\u003e\""),
        ("1 < 2 && 3 > 2", '"1 \\u003c 2 \\u0026\\u0026 3 \\u003e 2"'),
        ("line\u2028para\u2029end", '"line\\u2028para\\u2029end"'),
        ("café", '"café"'),  # non-ASCII as raw UTF-8, never \u00e9
        ("日本語", '"日本語"'),
        ("\U0001f600", '"\U0001f600"'),  # astral plane raw, not a surrogate pair escape
        ('say "hi" \\ bye', '"say \\"hi\\" \\\\ bye"'),
        ("a/b", '"a/b"'),  # Go does not escape the solidus
        ("tab\tnl\ncr\r", '"tab\\tnl\\ncr\\r"'),
        ("\x00\x01\x1f", '"\\u0000\\u0001\\u001f"'),  # lower-case hex, as Go writes
        ("\b\f", '"\\b\\f"'),  # Go >= 1.22 short escapes
        ("del\x7f", '"del\x7f"'),  # DEL is not escaped by Go
        ("\u00a0\u2027\u202a", '"\u00a0\u2027\u202a"'),  # neighbours of U+2028/9 stay raw
    ],
)
def test_encode_str_matches_go(text: str, expected: str) -> None:
    assert gojson.encode_str(text) == expected


def test_encode_str_lone_surrogate_becomes_replacement_character() -> None:
    assert gojson.encode_str("a\ud800b") == '"a\ufffdb"'


# -- floats ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (2.0, "2"),
        (0.0, "0"),
        (-0.0, "-0"),
        (100.0, "100"),
        (1.5, "1.5"),
        (-2.5, "-2.5"),
        (0.1, "0.1"),
        (1 / 3, "0.3333333333333333"),
        (123456789.125, "123456789.125"),
        (9007199254740992.0, "9007199254740992"),
        (1e20, "100000000000000000000"),
        (1e21, "1e+21"),
        (-1e21, "-1e+21"),
        (1.5e21, "1.5e+21"),
        (1e100, "1e+100"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (0.000001, "0.000001"),
        (-0.000001, "-0.000001"),
        (1.2345e-5, "0.000012345"),
        (1.2345678901234567e-4, "0.00012345678901234567"),
        (9.999999999999997e-7, "9.999999999999997e-7"),  # just below the 1e-6 cutoff
        (1.5e-7, "1.5e-7"),
        (1e-7, "1e-7"),
        (1e-10, "1e-10"),
        (1.25e-100, "1.25e-100"),
        (5e-324, "5e-324"),
    ],
)
def test_encode_float64_matches_go(value: float, expected: str) -> None:
    assert gojson.encode_float(value) == expected
    assert gojson.encode_value(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.1, "1.1"),  # shortest float32 digits, not float64's 1.100000023841858
        (0.1, "0.1"),
        (1 / 3, "0.33333334"),
        (2.0, "2"),
        (2.5, "2.5"),
        (16777217.0, "16777216"),  # not representable in float32
        (1e20, "100000000000000000000"),
        (1e21, "1e+21"),
        (0.000001, "0.000001"),
        (1e-7, "1e-7"),
        (1.5e-7, "1.5e-7"),
    ],
)
def test_encode_float32_uses_shortest_float32_digits(value: float, expected: str) -> None:
    assert gojson.encode_float(value, 32) == expected


@pytest.mark.parametrize("value", [3.4028234663852886e38, -3.4028234663852886e38])
def test_encode_float32_max(value: float) -> None:
    expected = "3.4028235e+38" if value > 0 else "-3.4028235e+38"
    assert gojson.encode_float(value, 32) == expected


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("bits", [32, 64])
def test_encode_float_rejects_non_finite(value: float, bits: int) -> None:
    with pytest.raises(ValueError, match="unsupported value"):
        gojson.encode_float(value, bits)


# -- any value ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "null"),
        (True, "true"),
        (False, "false"),
        (0, "0"),
        (2, "2"),  # an int is never written as 2.0
        (-7, "-7"),
        (2**63 - 1, "9223372036854775807"),
        (2**64 - 1, "18446744073709551615"),
        ("x<y", '"x\\u003cy"'),
        (b"\x00\x01\x02\xff", '"AAEC/w=="'),  # []byte as standard base64
        (bytearray(b"hi"), '"aGk="'),
        (b"", '""'),
        ([], "[]"),
        ([1, 2.0, "a", None, True], '[1,2,"a",null,true]'),
        ((1, 2), "[1,2]"),
        ({}, "{}"),
        ({"b": 1, "a": 2, "Z": 3, "é": 4, "_": 5}, '{"Z":3,"_":5,"a":2,"b":1,"é":4}'),
        (
            {"outer": {"z": [1, 2.5, {"y": None, "x": "<"}], "a": {}}},
            '{"outer":{"a":{},"z":[1,2.5,{"x":"\\u003c","y":null}]}}',
        ),
        ({"k&": "v>"}, '{"k\\u0026":"v\\u003e"}'),  # keys escaped the same way
    ],
)
def test_encode_value_matches_go(value: object, expected: str) -> None:
    assert gojson.encode_value(value) == expected


def test_encode_value_rejects_unsupported_types() -> None:
    with pytest.raises(TypeError, match="set"):
        gojson.encode_value({1, 2})
    with pytest.raises(TypeError, match="object"):
        gojson.encode_value(object())


def test_encode_value_rejects_nan_inside_containers() -> None:
    with pytest.raises(ValueError, match="unsupported value"):
        gojson.encode_value({"a": [float("nan")]})


# -- decoding -------------------------------------------------------------------------------


def test_loads_keeps_ints_and_floats_apart() -> None:
    value = gojson.loads(b'{"i":2,"f":2.0,"e":1e3,"big":9223372036854775807}')
    assert value == {"i": 2, "f": 2.0, "e": 1000.0, "big": 9223372036854775807}
    assert type(value["i"]) is int
    assert type(value["f"]) is float
    assert type(value["e"]) is float


def test_loads_accepts_str_and_bytes() -> None:
    assert gojson.loads('{"a":"é"}') == {"a": "é"}
    assert gojson.loads('{"a":"é"}'.encode()) == {"a": "é"}
    assert gojson.loads(b'"\\u003c\\u2028"') == "<\u2028"


def test_loads_uint64_max_is_exact() -> None:
    assert gojson.loads(b"[18446744073709551615]") == [18446744073709551615]


def test_loads_integers_beyond_64_bits_stay_exact() -> None:
    value = gojson.loads(b"[18446744073709551616,-123456789012345678901234]")
    assert value == [18446744073709551616, -123456789012345678901234]
    assert all(type(item) is int for item in value)


def test_loads_integers_below_int64_min_stay_exact() -> None:
    value = gojson.loads(b'{"low":-9223372036854775809,"min":-9223372036854775808}')
    assert value == {"low": -9223372036854775809, "min": -(2**63)}
    assert all(type(item) is int for item in value.values())


def test_loads_long_digit_runs_in_strings_change_nothing() -> None:
    text = "1" * 30
    assert gojson.loads(f'{{"s":"{text}","n":-1.5e-7}}'.encode()) == {"s": text, "n": -1.5e-7}


@pytest.mark.parametrize("raw", [b"{", b"", b"[1,]", b"{'a':1}", b"\xff", b"tru"])
def test_loads_rejects_invalid_json(raw: bytes) -> None:
    with pytest.raises(DecodeError, match="not valid JSON"):
        gojson.loads(raw)


@pytest.mark.parametrize("depth", [2_000, 100_000])
def test_loads_refuses_json_nested_deeper_than_it_can_read(depth: int) -> None:
    """Past orjson's 1,024 levels the stdlib parser runs out of stack: a DecodeError, not
    a RecursionError that would take a worker down."""
    with pytest.raises(DecodeError, match="nested too deeply"):
        gojson.loads(b"[" * depth + b"]" * depth)
    with pytest.raises(DecodeError, match="nested too deeply"):  # with a huge integer too
        nested = b"[" * depth + b"]" * depth
        gojson.loads(b'{"a":123456789012345678901234567890,"b":' + nested + b"}")


@pytest.mark.parametrize("raw", [b"NaN", b"[Infinity]", b'{"a":-Infinity}'])
def test_loads_rejects_non_json_number_literals(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        gojson.loads(raw)


def test_loads_later_duplicate_key_wins() -> None:
    assert gojson.loads(b'{"a":1,"a":2}') == {"a": 2}


_FIELDS = {"uuid": "UUID", "name": "Name", "routingkey": "RoutingKey"}


def test_fold_keys_ignores_case_and_unknown_keys() -> None:
    folded = gojson.fold_keys(
        {"uuid": "u", "NAME": "n", "rOuTiNgKeY": "q", "Extra": 1}, _FIELDS, "signature"
    )
    assert folded == {"UUID": "u", "Name": "n", "RoutingKey": "q"}


def test_fold_keys_later_key_wins_whatever_its_case() -> None:
    assert gojson.fold_keys({"Name": "first", "name": "second"}, _FIELDS, "s") == {"Name": "second"}
    assert gojson.fold_keys({"name": "first", "Name": "second"}, _FIELDS, "s") == {"Name": "second"}


@pytest.mark.parametrize(
    ("value", "kind"), [([], "array"), ("x", "string"), (None, "null"), (1.5, "number")]
)
def test_fold_keys_rejects_non_objects_naming_what(value: object, kind: str) -> None:
    with pytest.raises(DecodeError, match=f"^Args\\[3\\] must be a JSON object, got {kind}$"):
        gojson.fold_keys(value, _FIELDS, "Args[3]")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (None, "null"),
        (True, "boolean"),
        (False, "boolean"),
        (0, "number"),
        (0.5, "number"),
        ("", "string"),
        ([], "array"),
        ({}, "object"),
    ],
)
def test_json_type_names(value: object, kind: str) -> None:
    assert gojson.json_type(value) == kind


def test_loads_reads_a_lone_surrogate_escape_as_go_does() -> None:
    """Go's decoder reads ``\\ud800`` alone as U+FFFD; Python kept the surrogate, which then
    failed every UTF-8 encoder that met it (a log line, a board post) far from the message."""
    raw = b'{"a\\ud800":"x\\udcffy","l":["\\ud800",{"k":"\\udfff"}],"pair":"\\ud83d\\ude00"}'
    assert gojson.loads(raw) == {
        "a\ufffd": "x\ufffdy",
        "l": ["\ufffd", {"k": "\ufffd"}],
        "pair": "\U0001f600",  # a valid pair stays one character
    }
    assert gojson.loads(b'"\\udc80"') == "\ufffd"
