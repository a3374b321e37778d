"""Signatures from YAML or JSON documents, for ``taskctl chain|group|chord FILE``.

Each signature is either machinery's own JSON object, any subset of its fields in any key
case (``{"Name": "add", "Args": [{"Type": "int64", "Value": 1}]}``), or the short form
``{name: add, args: ["int64:1", "int64:2"], retry_count: 3, ...}``, or just the text
``"add int64:1 int64:2"``. Every argument is checked against its type before anything is sent,
and every key must be known (machinery's in any case, as Go matches them): a misspelt key is an
error naming it, never a field silently left empty.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import yaml

from taskd.client import check_eta, signature
from taskd.errors import ArgumentError, DecodeError, DocumentError
from taskd.wire import Arg, Signature
from taskd.wire.signature import ARG_FIELDS, SIGNATURE_FIELDS, decode_signature_object

SHORT_FORM_KEYS = {
    "name": "name of the task",
    "args": "list of TYPE:VALUE",
    "queue": "queue to send to",
    "eta": "ISO 8601 time not to run before",
    "countdown": "seconds to wait before running",
    "retry_count": "retries left",
    "retry_timeout": "seconds of the last retry delay (Fibonacci from here)",
    "immutable": "do not append results to callbacks",
    "priority": "0-255",
    "on_success": "signatures run with the results",
    "on_error": "signatures run with the error",
}


def load(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)  # YAML is a superset of JSON
    except yaml.YAMLError as exc:
        raise DocumentError(f"{source}: not valid YAML or JSON: {exc}") from None


def parse_signature(item: Any, where: str) -> Signature:
    """One signature in any of the three forms; DocumentError names ``where`` it went wrong."""
    try:
        if isinstance(item, str):
            return from_text(item)
        if not isinstance(item, Mapping):
            raise DocumentError(f"{where}: a signature is a mapping or text, got {item!r}")
        if _is_short_form(item):
            return _from_short_form(item, where)
        _check_machinery_keys(item, where)
        sig = decode_signature_object(dict(item))
        for arg in sig.args or ():
            arg.python_value()  # checked before anything is sent
        if not sig.name:
            raise DocumentError(f"{where}: Name is missing")
        check_eta(sig.eta)
        return sig
    except (ArgumentError, DecodeError, ValueError) as exc:  # ValueError: shlex quoting
        raise DocumentError(f"{where}: {exc}") from None
    except RecursionError:  # YAML can nest a mapping in itself (an anchor inside its alias)
        raise DocumentError(f"{where}: nested too deeply, or nested in itself") from None


def from_text(text: str) -> Signature:
    """``"add int64:1 int64:2"``: a task name and its TYPE:VALUE arguments (shell quoting)."""
    words = shlex.split(text)
    if not words:
        raise DocumentError("an empty signature")
    return signature(words[0], *(Arg.parse(word) for word in words[1:]))


def _is_short_form(item: Mapping[str, Any]) -> bool:
    """Lower-case keys, none of them machinery's alone, and args as TYPE:VALUE text."""
    args = item.get("args")
    keys = {str(key) for key in item}
    return (
        keys == {key.lower() for key in keys}
        and not any(key in SIGNATURE_FIELDS and key not in SHORT_FORM_KEYS for key in keys)
        and not (isinstance(args, list) and any(isinstance(arg, Mapping) for arg in args))
    )


def _unknown_key(key: Any, known: list[str], where: str) -> DocumentError:
    import difflib

    match = difflib.get_close_matches(str(key).lower(), [k.lower() for k in known], n=1)
    hint = (
        f"did you mean {next(k for k in known if k.lower() == match[0])!r}?"
        if match
        else f"known: {', '.join(known)}"
    )
    return DocumentError(f"{where}: unknown key {key!r} ({hint})")


def _check_machinery_keys(item: Mapping[str, Any], where: str) -> None:
    """machinery's form, nested signatures and Args included: every key known, in any case."""
    for key, value in item.items():
        field = SIGNATURE_FIELDS.get(str(key).lower())
        if field is None:
            if str(key) in SHORT_FORM_KEYS:
                raise DocumentError(
                    f"{where}: {key!r} is a key of the short form, which takes lower-case keys"
                    " only: write the signature in one form (see taskctl chain --help)"
                )
            raise _unknown_key(key, sorted(SIGNATURE_FIELDS.values()), where)
        if field == "Args" and isinstance(value, list):
            for i, arg in enumerate(value):
                for arg_key in arg if isinstance(arg, Mapping) else ():
                    if str(arg_key).lower() not in ARG_FIELDS:
                        known = sorted(ARG_FIELDS.values())
                        raise _unknown_key(arg_key, known, f"{where}.Args[{i}]")
        elif field in ("OnSuccess", "OnError") and isinstance(value, list):
            for i, nested in enumerate(value):
                if isinstance(nested, Mapping):
                    _check_machinery_keys(nested, f"{where}.{field}[{i}]")
        elif field == "ChordCallback" and isinstance(value, Mapping):
            _check_machinery_keys(value, f"{where}.ChordCallback")


def _from_short_form(item: Mapping[str, Any], where: str) -> Signature:
    for key in item:
        if key not in SHORT_FORM_KEYS:
            raise _unknown_key(key, sorted(SHORT_FORM_KEYS), where)
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise DocumentError(f"{where}: name must be a task name")
    args = item.get("args") or []
    if not isinstance(args, list) or not all(isinstance(arg, str) for arg in args):
        raise DocumentError(f"{where}: args must be a list of TYPE:VALUE strings")
    eta = item.get("eta")
    if eta is not None:
        try:
            eta = eta if isinstance(eta, datetime) else datetime.fromisoformat(str(eta))
        except ValueError:
            raise DocumentError(f"{where}: eta {eta!r} is not an ISO 8601 time") from None
        if eta.tzinfo is None:
            raise DocumentError(f"{where}: eta {eta} needs a timezone (Z or +hh:mm)")
    return signature(
        name,
        *(Arg.parse(arg) for arg in args),
        queue=_typed(item, "queue", str, "", where),
        eta=eta,
        countdown=_typed(item, "countdown", float, None, where),
        retry_count=_in_range(
            _typed(item, "retry_count", int, 0, where), 0, None, "retry_count", where
        ),
        retry_timeout=_in_range(
            _typed(item, "retry_timeout", int, 0, where), 0, None, "retry_timeout", where
        ),
        immutable=_typed(item, "immutable", bool, False, where),
        priority=_in_range(_typed(item, "priority", int, 0, where), 0, 255, "priority", where),
        on_success=_signatures(item.get("on_success"), f"{where}.on_success"),
        on_error=_signatures(item.get("on_error"), f"{where}.on_error"),
    )


def _typed(item: Mapping[str, Any], key: str, kind: type, default: Any, where: str) -> Any:
    """``item[key]`` if it is of ``kind`` (an int counts as a float, a bool as nothing else)."""
    value = item.get(key, default)
    if value is default:
        return value
    if isinstance(value, bool) == (kind is bool) and isinstance(
        value, int if kind is float else kind
    ):
        return value
    if kind is float and isinstance(value, float):
        return value
    raise DocumentError(f"{where}.{key}: {SHORT_FORM_KEYS[key]}, got {value!r}")


def _in_range(value: int, low: int, high: int | None, key: str, where: str) -> int:
    if value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise DocumentError(f"{where}.{key}: must be {bound}, got {value}")
    return value


def _signatures(value: Any, where: str) -> list[Signature] | None:
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    return [parse_signature(item, f"{where}[{i}]") for i, item in enumerate(items)]


def parse_list(document: Any, source: str) -> list[Signature]:
    """A chain or group document: a list of signatures."""
    if not isinstance(document, list) or not document:
        raise DocumentError(f"{source}: expected a non-empty list of signatures")
    return [parse_signature(item, f"{source}[{i}]") for i, item in enumerate(document)]


def parse_chord(document: Any, source: str) -> tuple[list[Signature], Signature, Signature | None]:
    """A chord document: ``{group: [...], callback: ..., error_callback: ...}``."""
    if not isinstance(document, Mapping):
        raise DocumentError(f"{source}: expected a mapping with group and callback")
    unknown = set(document) - {"group", "callback", "error_callback"}
    if unknown:
        raise DocumentError(
            f"{source}: unknown keys {sorted(unknown)} (group, callback, error_callback)"
        )
    if "callback" not in document:
        raise DocumentError(f"{source}: callback is missing")
    members = parse_list(document.get("group"), f"{source}.group")
    callback = parse_signature(document["callback"], f"{source}.callback")
    error_callback = document.get("error_callback")
    return (
        members,
        callback,
        None
        if error_callback is None
        else parse_signature(error_callback, f"{source}.error_callback"),
    )
