"""Secrets in URLs: passwords read from files or systemd credentials, and redaction.

The password of a ``broker`` or ``result_backend`` URL (any key whose field is marked
``secret_url``) may be a placeholder instead of the password itself:

- ``{credential:NAME}``: the file ``NAME`` in ``$CREDENTIALS_DIRECTORY``, where systemd puts
  what the unit's ``LoadCredential=NAME:/path`` names (readable by the service alone, even
  when the source file is root's);
- ``{file:PATH}``: the file at PATH (relative to the config file's directory).

For example ``amqp://taskd:{credential:broker-password}@rabbit:5672/`` or, in Redis's form,
``redis://:{file:/etc/taskd/redis.pass}@cache:6379/0``. The file's text, without its trailing
newline, is percent-encoded into the URL when the configuration is loaded (again on every
reload, so a rotated password is picked up by ``systemctl reload``). Only a password may be
a placeholder: anything that ``redact_url`` would not hide is refused, so a secret read from
a file never reaches a log line, an error message or ``taskd check-config``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from taskd.errors import ConfigError

CREDENTIALS_DIRECTORY_ENV = "CREDENTIALS_DIRECTORY"
PLACEHOLDER = re.compile(r"\{(credential|file):([^{}]*)\}")
_HIDDEN = "\0taskd-hidden\0"  # stands for a placeholder while checking it would be redacted

C = TypeVar("C")


def redact_url(url: str) -> str:
    """A URL with its password replaced by ``***`` (machinery's RedactURL).

    For Redis URLs a userinfo without a colon is a password, as machinery reads it.
    """
    scheme, sep, rest = url.partition("://")
    if scheme == "redis+socket":  # machinery: redis+socket://password@/path.sock:/db
        authority_end = rest.find("@/") + 1
    else:
        authority_end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    userinfo, at, host = rest[:authority_end].rpartition("@")
    location = host + rest[authority_end:]
    if not sep or not at or not userinfo:
        return url
    user, colon, _password = userinfo.partition(":")
    if colon:
        return f"{scheme}://{user}:***@{location}"
    if scheme.startswith("redis"):
        return f"{scheme}://***@{location}"
    return url


def with_secrets(config: C, env: Mapping[str, str], source: str | None) -> C:
    """``config`` with the placeholders in its secret URLs replaced by what they name.

    Raises ConfigError naming the key (the ``TASKD_*`` variable when the URL came from the
    environment) and the file or credential, never its content.
    """
    changes: dict[str, Any] = {}
    for spec in fields(config):  # type: ignore[arg-type]
        value = getattr(config, spec.name)
        if spec.metadata.get("secret_url") and isinstance(value, str) and "{" in value:
            variable = "TASKD_" + spec.name.upper()
            key, where = (variable, "environment") if variable in env else (spec.name, source)
            resolved = resolve_url(value, key, where, env)
            if resolved != value:
                changes[spec.name] = resolved
    return replace(config, **changes) if changes else config  # type: ignore[type-var]


def resolve_url(url: str, key: str, source: str | None, env: Mapping[str, str]) -> str:
    """``url`` with a password placeholder replaced by the percent-encoded password."""
    found = list(PLACEHOLDER.finditer(url))
    if not found:
        return url
    if len(found) > 1:
        raise ConfigError(key, "only one password placeholder is allowed", source)
    match = found[0]
    hidden = url[: match.start()] + _HIDDEN + url[match.end() :]
    if _HIDDEN in redact_url(hidden):
        raise ConfigError(
            key,
            f"{match.group(0)} may only stand for the URL's password"
            " (scheme://user:{...}@host, or redis://:{...}@host)",
            source,
        )
    kind, name = match.groups()
    path = _credential_path(name, key, source, env) if kind == "credential" else None
    if path is None:
        path = _file_path(name, key, source)
    password = _read_password(path, key, source)
    return url[: match.start()] + quote(password, safe="") + url[match.end() :]


def _credential_path(name: str, key: str, source: str | None, env: Mapping[str, str]) -> Path:
    if not name or "/" in name or name in (".", ".."):
        raise ConfigError(key, f"{name!r} is not a credential name", source)
    directory = env.get(CREDENTIALS_DIRECTORY_ENV)
    if not directory:
        raise ConfigError(
            key,
            f"credential {name!r} needs ${CREDENTIALS_DIRECTORY_ENV} (set by systemd for a"
            f" unit with LoadCredential={name}:...; outside systemd, point it at a directory"
            f" holding a file named {name})",
            source,
        )
    return Path(directory) / name


def _file_path(name: str, key: str, source: str | None) -> Path:
    if not name:
        raise ConfigError(key, "{file:} names no file", source)
    path = Path(name).expanduser()
    if not path.is_absolute() and source not in (None, "environment"):
        path = Path(os.fspath(source)).parent / path
    return path


def _read_password(path: Path, key: str, source: str | None) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            key, f"cannot read password file {path}: {exc.strerror}", source
        ) from None
    try:
        password = data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ConfigError(key, f"password file {path} is not UTF-8 text", source) from None
    if not password:
        raise ConfigError(key, f"password file {path} is empty", source)
    return password
