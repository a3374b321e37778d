"""The effective configuration as plain data and YAML, secrets redacted, for
``taskd check-config`` (re-exported by ``taskd.config``)."""

from __future__ import annotations

import re
from dataclasses import fields, is_dataclass
from typing import TYPE_CHECKING, Any

import yaml

from taskd.credentials import redact_url

if TYPE_CHECKING:
    from taskd.config import Config

_SECRET_KEY = re.compile(r"password|secret|token", re.IGNORECASE)


def to_mapping(obj: Any, *, redact: bool = True) -> dict[str, Any]:
    """The config as plain data, secrets redacted, for ``taskd check-config``."""
    out: dict[str, Any] = {}
    for spec in fields(obj):
        if spec.metadata.get("internal"):
            continue
        value = getattr(obj, spec.name)
        if is_dataclass(value):
            value = to_mapping(value, redact=redact)
        elif isinstance(value, tuple):
            value = list(value)
        elif redact and isinstance(value, str):
            if spec.metadata.get("secret_url"):
                value = redact_url(value)
            elif _SECRET_KEY.search(spec.name) and value:
                value = "***"
        out[spec.name] = value
    return out


def dump(config: Config) -> str:
    return yaml.safe_dump(to_mapping(config), sort_keys=False, default_flow_style=False)
