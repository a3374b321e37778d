"""What both command lines share: the config option, typed-argument parsing, error mapping."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from taskd import logs
from taskd.checks import check_drivers
from taskd.config import Config, load_config
from taskd.errors import (
    ArgumentError,
    BackendUnavailable,
    BrokerUnavailable,
    ConfigError,
    TaskdError,
)
from taskd.exitcodes import EXIT_FAILURE, EXIT_UNAVAILABLE, EXIT_USAGE
from taskd.wire import Arg
from taskd.wire.args import require_type


class ConfigFailure(click.ClickException):
    """A configuration error: exit 2, message names the file (or variable) and key."""

    exit_code = EXIT_USAGE


class Failure(click.ClickException):
    """Something went wrong that is not the user's typing: an exit status that says what,
    no traceback."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def config_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "-c",
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        default=None,
        help="YAML config file (default: $TASKD_CONFIG, else built-in defaults).",
    )(fn)


def load(
    config_path: str | None,
    queues: Sequence[str] = (),
    *,
    log_level: str | None = None,
    writes: bool = True,
    serves: bool = False,
) -> Config:
    """The effective config with its drivers resolvable and the broker able to serve the
    default queue and ``queues``, or exit 2 naming file and key. From the checks on, logs go
    to stderr at ``log_level`` (default: the config's), never to stdout, which carries a
    command's output (structlog's own default). ``writes``, ``serves``: see
    ``check_drivers``."""
    try:
        config = load_config(config_path)
        logs.configure(log_level or config.log_level)
        check_drivers(config, queues, writes=writes, serves=serves)
    except ConfigError as exc:
        raise ConfigFailure(str(exc)) from None
    return config


def as_click_error(exc: TaskdError, unexpected: int = EXIT_FAILURE) -> click.ClickException:
    """Config errors exit 2; an unreachable broker or backend 69; other errors ``unexpected``."""
    if isinstance(exc, ConfigError):
        return ConfigFailure(str(exc))
    if isinstance(exc, BrokerUnavailable | BackendUnavailable):
        return Failure(str(exc), EXIT_UNAVAILABLE)
    return Failure(str(exc), unexpected)


class TypedArg(click.ParamType):
    """``TYPE:VALUE``: VALUE is JSON (bare text for string), checked against TYPE.

    ``TYPE:@FILE`` takes VALUE from a file (``@-``: standard input), for values too large
    for a command line: a string is the file's text as is; ``@@`` starts a VALUE with ``@``.
    """

    name = "TYPE:VALUE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Arg:
        if isinstance(value, Arg):
            return value
        type_name, _, raw = value.partition(":")
        try:
            if raw.startswith("@@"):
                value = f"{type_name}:{raw[1:]}"
            elif raw.startswith("@"):
                text = self._read(raw[1:], param, ctx)
                if type_name == "string":
                    require_type(type_name)
                    return Arg(type_name, text)
                value = f"{type_name}:{text}"
            return Arg.parse(value)
        except ArgumentError as exc:
            self.fail(str(exc), param, ctx)

    def _read(self, path: str, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            if path == "-":
                return sys.stdin.buffer.read().decode("utf-8")
            return Path(path).read_bytes().decode("utf-8")
        except OSError as exc:
            self.fail(f"cannot read {path}: {exc.strerror}", param, ctx)
        except UnicodeDecodeError:
            self.fail(f"{path} is not UTF-8 text", param, ctx)


TYPED_ARG = TypedArg()


class IsoTime(click.ParamType):
    """An ISO 8601 time with its zone: ``2026-11-27T10:00:00Z``, ``...T11:00:00+01:00``."""

    name = "ISO8601"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            self.fail(f"{value!r} is not an ISO 8601 time", param, ctx)
        if moment.tzinfo is None:
            self.fail(f"{value!r} needs a timezone (Z or +hh:mm)", param, ctx)
        return moment


ISO_TIME = IsoTime()
