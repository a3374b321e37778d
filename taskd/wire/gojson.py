"""JSON exactly as Go's ``encoding/json`` writes it, and tolerant decoding as Go reads it.

machinery producers and workers compare bytes (and Go decoders are picky about numbers), so
taskd's encoder copies Go's choices: compact separators, ``<`` ``>`` ``&`` U+2028 U+2029
escaped, non-ASCII as raw UTF-8, integral floats without ``.0``, exponent form only outside
[1e-6, 1e21), map keys sorted, ``[]byte`` as base64.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import re
import struct
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import orjson

from taskd.errors import DecodeError

_HTML_UNSAFE = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)
_UNSAFE_CHARS = frozenset("<>&\u2028\u2029")
_SURROGATE = re.compile("[\ud800-\udfff]")  # lone ones: no UTF-8 has them
# orjson turns integers beyond int64/uint64 into floats: a body with a run of 20 digits, or
# of 19 after a minus, goes to the stdlib parser. Digits are found by turning them all into
# "0" and looking for a run of zeros: a byte search, far quicker than a regular expression.
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_RUNS = (b"0" * 20, b"-" + b"0" * 19)


def encode_str(text: str) -> str:
    """A JSON string literal with Go's escaping."""
    if not text:  # most errors and many names: the commonest string of all
        return '""'
    try:
        out = orjson.dumps(text).decode()
    except orjson.JSONEncodeError:  # lone surrogates: Go writes U+FFFD for invalid UTF-8
        text = _SURROGATE.sub("\ufffd", text)
        out = orjson.dumps(text).decode()
    if _UNSAFE_CHARS.isdisjoint(text):
        return out
    return out.translate(_HTML_UNSAFE)


@functools.lru_cache(maxsize=1024)
def encode_name(text: str) -> str:
    """``encode_str`` for a string that recurs (a task or type name), remembered: one is
    written with every state."""
    return encode_str(text)


def _to_float32(value: float) -> float:
    return struct.unpack("<f", struct.pack("<f", value))[0]


# Go compares a float32 against the constants converted to float32.
_FLOAT32_1E_6 = _to_float32(1e-6)
_FLOAT32_1E21 = _to_float32(1e21)


def shortest_float32(value: float) -> str:
    """The fewest significant digits that read back as the same float32 (Go's bitSize 32)."""
    target = struct.pack("<f", value)
    for digits in range(1, 10):
        text = f"{value:.{digits}g}"
        try:
            if struct.pack("<f", float(text)) == target:
                return text
        except OverflowError:  # rounded up past float32's largest value
            continue
    return repr(value)


def encode_float(value: float, bits: int = 64) -> str:
    """A float as Go's ``strconv.AppendFloat(f, 'f' or 'e', -1, bits)`` plus json's cleanup."""
    if not math.isfinite(value):
        raise ValueError(f"json: unsupported value: {value!r}")
    if bits == 32:
        value = _to_float32(value)
        shortest, low, high = shortest_float32(value), _FLOAT32_1E_6, _FLOAT32_1E21
    else:
        shortest, low, high = repr(value), 1e-6, 1e21
    magnitude = abs(value)
    if magnitude != 0 and (magnitude < low or magnitude >= high):
        # Go's 'e' format: at least two exponent digits, then json trims "e-07" to "e-7".
        mantissa, _, exponent = f"{Decimal(shortest):e}".partition("e")
        if "." in mantissa:
            mantissa = mantissa.rstrip("0").rstrip(".")
        sign = "-" if exponent.startswith("-") else "+"
        digits = exponent.lstrip("+-").lstrip("0") or "0"
        if sign == "+" and len(digits) < 2:
            digits = digits.rjust(2, "0")
        return f"{mantissa}e{sign}{digits}"
    text = format(Decimal(shortest), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def encode_value(value: Any) -> str:
    """Any JSON-able Python value, the way Go encodes the matching ``interface{}`` value."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):  # a subclass's own __str__ (a task's int type) never writes it
        return int.__repr__(value)
    if isinstance(value, float):
        return encode_float(float.__float__(value))
    if isinstance(value, str):
        return encode_str(value)
    if isinstance(value, bytes | bytearray):
        return '"' + base64.b64encode(value).decode() + '"'
    if isinstance(value, Mapping):
        items = sorted((str(k), v) for k, v in value.items())
        return "{" + ",".join(f"{encode_str(k)}:{encode_value(v)}" for k, v in items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(encode_value(item) for item in value) + "]"
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads(raw: bytes | str) -> Any:
    """Parse JSON; integers stay exact, ``2.0`` stays a float (Go's UseNumber keeps both apart).

    Like Go's decoder, invalid UTF-8 becomes U+FFFD, and NaN or Infinity are refused.
    """
    data = raw.encode() if isinstance(raw, str) else raw
    zeroed = data.translate(_DIGITS_TO_ZERO)
    if _LONG_RUNS[0] not in zeroed and _LONG_RUNS[1] not in zeroed:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    # The stdlib parses what orjson refuses but Go reads: lone surrogates, huge integers.
    try:
        parsed = json.loads(data.decode("utf-8", "replace"), parse_constant=_not_json)
    except ValueError as exc:
        raise DecodeError(f"not valid JSON: {exc}", data) from exc
    except RecursionError:  # deeper than orjson takes (1,024) and than Python's stack allows
        raise DecodeError("not valid JSON: nested too deeply", data) from None
    return _go_strings(parsed)


def _go_strings(value: Any) -> Any:
    """Strings as Go's decoder reads them: an escape of a lone surrogate (``\\ud800``) is
    U+FFFD, where Python keeps the surrogate (which no UTF-8 encoder then takes). In place,
    without recursion (the parse may be nested as deep as Python's stack allowed)."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    pending = [value] if isinstance(value, dict | list) else []
    while pending:
        item = pending.pop()
        entries = list(item.items()) if isinstance(item, dict) else list(enumerate(item))
        for key, child in entries:
            if isinstance(child, dict | list):
                pending.append(child)
            elif isinstance(child, str) and _SURROGATE.search(child):
                item[key] = _SURROGATE.sub("\ufffd", child)
            if isinstance(key, str) and _SURROGATE.search(key):  # a dict's: as Go, later wins
                item[_SURROGATE.sub("\ufffd", key)] = item.pop(key)
    return value


_CANONICAL: dict[int, frozenset[str]] = {}  # id of a fields mapping -> its canonical names


def fold_keys(obj: Mapping[str, Any], fields: Mapping[str, str], what: str) -> dict[str, Any]:
    """Map a decoded JSON object's keys onto canonical field names, Go-style.

    ``fields`` maps lower-cased JSON names to canonical ones (a module-level constant: its
    canonical names are cached by identity). Names match in any case; unknown keys are
    ignored; a later key wins over an earlier one, as in Go. An object whose keys are all
    canonical is returned as it is, not copied.
    """
    if not isinstance(obj, dict):
        raise DecodeError(f"{what} must be a JSON object, got {json_type(obj)}")
    canonical = _CANONICAL.get(id(fields))
    if canonical is None:
        canonical = _CANONICAL[id(fields)] = frozenset(fields.values())
    if canonical.issuperset(obj):  # as Go and taskd write them: nothing to fold (the hot path)
        return obj
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = fields.get(key.lower())
        if name is not None:
            out[name] = value
    return out


def json_type(value: Any) -> str:
    """The JSON type name of a decoded value, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
