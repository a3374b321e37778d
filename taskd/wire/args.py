"""machinery's typed values: ``Arg`` and ``TaskResult`` types, strict checks, and text forms.

A typed value is a machinery type name (``int64``, ``[]string``, ``[]byte`` ...) plus a value.
On the wire the value is JSON; in Python it is ``bool``, ``int``, ``float``, ``str``, ``bytes``
(for ``[]byte``/``[]uint8``) or a ``list`` of the scalar kind. Checks are as strict as Go's
``reflect`` conversion, and stricter where Go silently wraps: ``2.0`` is not an int64, a uint
is never negative, and a value out of range is an error.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from taskd.errors import ArgumentError, DecodeError
from taskd.wire import gojson

# kind, bit size
_SCALARS: dict[str, tuple[str, int]] = {
    "bool": ("bool", 0),
    "int": ("int", 64),
    "int8": ("int", 8),
    "int16": ("int", 16),
    "int32": ("int", 32),
    "int64": ("int", 64),
    "uint": ("uint", 64),
    "uint8": ("uint", 8),
    "uint16": ("uint", 16),
    "uint32": ("uint", 32),
    "uint64": ("uint", 64),
    "float32": ("float", 32),
    "float64": ("float", 64),
    "string": ("string", 0),
}
BYTES_TYPES = frozenset({"[]byte", "[]uint8"})
TYPE_NAMES: frozenset[str] = frozenset([*_SCALARS, *(f"[]{name}" for name in _SCALARS), "[]byte"])

INT64_MIN, INT64_MAX, UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1


def is_slice(type_name: str) -> bool:
    return type_name.startswith("[]")


def element_type(type_name: str) -> str:
    """``[]int64`` -> ``int64``; ``[]byte`` -> ``uint8``."""
    return "uint8" if type_name == "[]byte" else type_name[2:]


def kind_of(type_name: str) -> str:
    """``bool``, ``int``, ``uint``, ``float`` or ``string`` for a scalar or an element type."""
    return _SCALARS[element_type(type_name) if is_slice(type_name) else type_name][0]


def require_type(type_name: str) -> None:
    if type_name not in TYPE_NAMES:
        raise ArgumentError(f"{type_name!r} is not one of machinery's types")


def _show(value: Any) -> str:
    return gojson.encode_value(value) if isinstance(value, str | list | dict) else repr(value)


# -- checking decoded JSON values ---------------------------------------------------------


def _check_scalar(type_name: str, value: Any) -> Any:
    kind, bits = _SCALARS[type_name]
    if kind == "bool":
        if isinstance(value, bool):
            return value
    # A subclass's value is taken as the plain str, int or float it is: its own __str__ or
    # __repr__ (an IntEnum, a task's int type) must not write the JSON.
    elif kind == "string":
        if isinstance(value, str):
            return value if type(value) is str else str.__str__(value)
    elif isinstance(value, bool):
        pass  # JSON true is not a number
    elif kind == "int":
        if isinstance(value, int):
            value = value if type(value) is int else int.__int__(value)
            low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
            if not low <= value <= high:
                raise ArgumentError(f"{value} is out of range for {type_name}")
            return value
    elif kind == "uint":
        if isinstance(value, int):
            value = value if type(value) is int else int.__int__(value)
            if not 0 <= value < (1 << bits):
                raise ArgumentError(f"{value} is out of range for {type_name}")
            return value
    elif isinstance(value, int | float):  # float
        value = float.__float__(value) if isinstance(value, float) else int.__int__(value)
        number = float(value) if abs(value) < 2**1024 else math.inf
        if not math.isfinite(number):  # 1e400 parses to inf; Go's Float64() says out of range
            raise ArgumentError(f"{value} is out of range for {type_name}")
        if bits == 32:
            try:
                return struct.unpack("<f", struct.pack("<f", number))[0]
            except OverflowError:
                raise ArgumentError(f"{value} is out of range for float32") from None
        return number
    raise ArgumentError(f"{_show(value)} is not {type_name}")


def check(type_name: str, value: Any) -> Any:
    """Convert a JSON-decoded value of a machinery type to its Python value, strictly."""
    if not is_slice(type_name):
        if type_name not in _SCALARS:
            raise ArgumentError(f"{type_name!r} is not one of machinery's types")
        return _check_scalar(type_name, value)
    if type_name not in TYPE_NAMES:
        raise ArgumentError(f"{type_name!r} is not one of machinery's types")
    element = element_type(type_name)
    if type_name in BYTES_TYPES:
        return _check_bytes(type_name, value)
    if value is None:  # Go decodes a JSON null slice as an empty one
        return []
    if isinstance(value, str) and kind_of(element) == "uint":
        value = list(_b64decode(type_name, value))
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list):
        raise ArgumentError(f"{_show(value)} is not {type_name}")
    try:
        return [_check_scalar(element, item) for item in value]
    except ArgumentError as exc:
        raise ArgumentError(f"{type_name} element: {exc.reason}") from None


def _b64decode(type_name: str, text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ArgumentError(f"{_show(text)} is not base64 for {type_name}") from None


def _check_bytes(type_name: str, value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str):
        return _b64decode(type_name, value)
    if isinstance(value, list):
        try:
            return bytes(_check_scalar("uint8", item) for item in value)
        except ArgumentError as exc:
            raise ArgumentError(f"{type_name} element: {exc.reason}") from None
    raise ArgumentError(f"{_show(value)} is not {type_name}")


# -- encoding Python values -----------------------------------------------------------------


# Each encoder writes a value of its kind the Go way; a wire value of another kind (a bad
# message being passed along) is written as it came, so nothing is silently "fixed".


def _encode_int(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)  # "2.0" stays "2.0": a bad value is not quietly made good
    return gojson.encode_value(value)


def _encode_bool(value: Any) -> str:
    return gojson.encode_value(value)


def _encode_string(value: Any) -> str:
    return gojson.encode_str(value) if isinstance(value, str) else gojson.encode_value(value)


def _encode_float64(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return gojson.encode_float(float(value))
    return gojson.encode_value(value)


def _encode_float32(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return gojson.encode_float(float(value), 32)
    return gojson.encode_value(value)


_SCALAR_ENCODERS: dict[str, Callable[[Any], str]] = {
    "bool": _encode_bool,
    "string": _encode_string,
    "float32": _encode_float32,
    "float64": _encode_float64,
    **{name: _encode_int for name, (kind, _) in _SCALARS.items() if kind in ("int", "uint")},
}


def encode(type_name: str, value: Any) -> str:
    """The JSON text Go writes for a wire value of this type; a value of a type that is not
    machinery's (a Go task's struct or map result) as it was decoded."""
    encoder = _SCALAR_ENCODERS.get(type_name)
    if encoder is not None:
        return encoder(value)
    if value is None or isinstance(value, str) or type_name not in TYPE_NAMES:
        # nil slice; []byte already in base64; another type's JSON
        return gojson.encode_value(value)
    if type_name in BYTES_TYPES and isinstance(value, bytes | bytearray):
        return '"' + base64.b64encode(value).decode() + '"'
    element = _SCALAR_ENCODERS.get(element_type(type_name), gojson.encode_value)
    return "[" + ",".join(element(item) for item in value) + "]"


def to_wire(type_name: str, value: Any) -> Any:
    """A checked Python value as JSON carries it: ``[]byte`` becomes base64 text."""
    if type_name in BYTES_TYPES and isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode()
    return value


# -- Python values without a declared type --------------------------------------------------


def infer(value: Any) -> str:
    """The machinery type a Python value travels as, or ArgumentError if it has none.

    An empty list has no element to look at and travels as ``[]string`` unless the caller
    knows better (a task's return annotation, an explicit type).
    """
    scalar = _infer_scalar(value)
    if scalar is not None:
        return scalar
    if isinstance(value, bytes | bytearray):
        return "[]uint8"
    if isinstance(value, list | tuple):
        kinds = {_infer_scalar(item) for item in value}
        if not kinds:
            return "[]string"
        if None not in kinds:
            if len(kinds) == 1:
                return "[]" + kinds.pop()
            if kinds <= {"int64", "uint64"}:
                return "[]uint64"
            if kinds <= {"int64", "uint64", "float64"}:
                return "[]float64"
        else:  # an element that is no scalar: a list of lists, of dicts...
            other = next(item for item in value if _infer_scalar(item) is None)
            raise ArgumentError(
                f"a list of {type(other).__name__} has no machinery type (only lists of"
                " bool, int, float or str have one)"
            )
        raise ArgumentError(f"a list mixing {sorted(kinds)} has no machinery type")
    raise ArgumentError(f"{type(value).__name__} has no machinery type")


def _infer_scalar(value: Any) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        if INT64_MIN <= value <= INT64_MAX:
            return "int64"
        if 0 <= value <= UINT64_MAX:
            return "uint64"
        raise ArgumentError(f"{value} does not fit in 64 bits")
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    return None


# -- the TYPE:VALUE text form ---------------------------------------------------------------


def parse_typed(text: str) -> tuple[str, Any]:
    """Parse ``TYPE:VALUE`` (``[]int64:[1,2,3]``, ``int64:5``, ``string:hello``).

    VALUE is JSON, except for ``string`` where the bare text is taken as is (a JSON string
    literal is accepted too). The value is checked against its type.
    """
    type_name, sep, raw = text.partition(":")
    if not sep:
        raise ArgumentError(f"{text!r} is not TYPE:VALUE (for example int64:5)")
    require_type(type_name)
    if type_name == "string" and not (raw.startswith('"') and raw.endswith('"') and len(raw) > 1):
        return type_name, raw
    try:
        value = gojson.loads(raw)
    except DecodeError:
        raise ArgumentError(f"{raw!r} is not a JSON value for {type_name}") from None
    return type_name, check(type_name, value)


# -- Go's %v, as HumanReadableResults prints results ----------------------------------------


def _format_go_float(value: float, bits: int = 64) -> str:
    """Go's ``%v`` for a float: shortest digits, exponent form outside [1e-4, 1e6)."""
    if math.isnan(value):
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    shortest = gojson.shortest_float32(value) if bits == 32 else repr(value)
    sign, digits, exponent = Decimal(shortest).normalize().as_tuple()
    if not digits or digits == (0,):
        return "-0" if sign else "0"
    decimal_exponent = len(digits) + int(exponent) - 1
    if decimal_exponent < -4 or decimal_exponent >= 6:
        mantissa = str(digits[0]) + ("." + "".join(map(str, digits[1:])) if len(digits) > 1 else "")
        exp_sign = "-" if decimal_exponent < 0 else "+"
        text = f"{mantissa}e{exp_sign}{abs(decimal_exponent):02d}"
    else:
        text = format(abs(Decimal(shortest)), "f")
        if "." in text:
            text = text.rstrip("0").rstrip(".")
    return ("-" if sign else "") + text


def go_format(value: Any, float_bits: int = 64) -> str:
    """A Python value of a machinery type as Go's ``fmt`` ``%v`` shows it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _format_go_float(value, float_bits)
    if isinstance(value, bytes | bytearray | list | tuple):
        return "[" + " ".join(go_format(item, float_bits) for item in value) + "]"
    if isinstance(value, dict):  # a Go task's struct or map: its JSON
        return gojson.encode_value(value)
    return str(value)


def human_readable(values: Sequence[Any], types: Sequence[str] = ()) -> str:
    """machinery's ``HumanReadableResults``: ``6``; ``[1 2 3]``; ``[a, b]`` for two results.

    ``types`` (one per value) lets a float32 print with float32's shortest digits, as Go does.
    """
    shown = [
        go_format(value, 32 if index < len(types) and types[index].endswith("float32") else 64)
        for index, value in enumerate(values)
    ]
    return shown[0] if len(shown) == 1 else "[" + ", ".join(shown) + "]"
