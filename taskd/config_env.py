"""``TASKD_*`` environment variables over the config: one per key, found from the schema;
an unknown one is an error, as an unknown key is."""

from __future__ import annotations

import contextlib
import difflib
import typing
from collections.abc import Callable, Mapping
from dataclasses import fields, is_dataclass, replace
from typing import Any

import yaml

from taskd.errors import ConfigError

ENV_PREFIX = "TASKD_"
CONFIG_ENV = "TASKD_CONFIG"
STATE_DIR_ENV = "TASKD_STATE_DIR"
# Variables of taskd's own that are not config keys; TASKD_TEST_* belong to the test suite.
OTHER_VARIABLES = frozenset({CONFIG_ENV, STATE_DIR_ENV})
TEST_PREFIX = "TASKD_TEST_"

Coerce = Callable[[Any, Any, str, "str | None", Any], Any]  # (hint, value, key, source, spec)


def public_fields(cls: type) -> list[Any]:
    return [f for f in fields(cls) if not f.metadata.get("internal")]


def leaves(cls: type, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every key of a schema dataclass, as a path and its field."""
    hints = typing.get_type_hints(cls)
    out = []
    for spec in public_fields(cls):
        path = (*prefix, spec.name)
        if is_dataclass(hints[spec.name]):
            out.extend(leaves(hints[spec.name], path))
        else:
            out.append((path, spec))
    return out


def env_names(root: type) -> dict[str, tuple[str, ...]]:
    return {ENV_PREFIX + "_".join(path).upper(): path for path, _ in leaves(root)}


def check_names(env: Mapping[str, str], known: Mapping[str, Any]) -> None:
    """A misspelt variable is an error, as a misspelt key is: it would be silently ignored."""
    for name in env:
        if not name.startswith(ENV_PREFIX) or name in known or name in OTHER_VARIABLES:
            continue
        if name.startswith(TEST_PREFIX):
            continue
        match = difflib.get_close_matches(name, [*known, *OTHER_VARIABLES], n=1)
        hint = f" (did you mean {match[0]}?)" if match else " (see taskd check-config)"
        raise ConfigError(name, f"unknown variable{hint}", "environment")


def apply_env(config: Any, env: Mapping[str, str], coerce: Coerce) -> Any:
    """``config`` with each ``TASKD_*`` variable's value, checked by ``coerce``."""
    names = env_names(type(config))
    check_names(env, names)
    for name, path in names.items():
        if name not in env:
            continue
        text = env[name]
        hint = _hint_at(type(config), path)
        value: Any = text
        if hint is int or hint is float:
            with contextlib.suppress(ValueError):  # YAML 1.1 reads "1e3" as a string
                value = hint(text)
        elif hint is not str:
            try:
                value = yaml.safe_load(text) if text.strip() else None
            except yaml.YAMLError:
                value = text
        config = _set_path(config, path, value, name, coerce)
    return config


def _hint_at(root: type, path: tuple[str, ...]) -> Any:
    cls: Any = root
    for name in path:
        cls = typing.get_type_hints(cls)[name]
    return cls


def _set_path(obj: Any, path: tuple[str, ...], value: Any, env_name: str, coerce: Coerce) -> Any:
    name = path[0]
    if len(path) > 1:
        inner = _set_path(getattr(obj, name), path[1:], value, env_name, coerce)
        return replace(obj, **{name: inner})
    spec = next(f for f in fields(obj) if f.name == name)
    hint = typing.get_type_hints(type(obj))[name]
    return replace(obj, **{name: coerce(hint, value, env_name, "environment", spec)})
