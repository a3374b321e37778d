"""What both command lines share: the config option, typed-argument parsing, error mapping."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import click

from taskd.checks import check_drivers
from taskd.config import Config, load_config
from taskd.errors import ArgumentError, ConfigError, TaskdError
from taskd.exitcodes import EXIT_FAILURE, EXIT_USAGE
from taskd.wire import Arg


class ConfigFailure(click.ClickException):
    """A configuration error: exit 2, message names the file (or variable) and key."""

    exit_code = EXIT_USAGE


class Failure(click.ClickException):
    """Something went wrong that is not the user's typing: exit 1, no traceback."""

    exit_code = EXIT_FAILURE


def config_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "-c",
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        default=None,
        help="YAML config file (default: $TASKD_CONFIG, else built-in defaults).",
    )(fn)


def load(config_path: str | None) -> Config:
    """The effective config with its drivers resolvable, or exit 2 naming file and key."""
    try:
        config = load_config(config_path)
        check_drivers(config)
    except ConfigError as exc:
        raise ConfigFailure(str(exc)) from None
    return config


def as_click_error(exc: TaskdError) -> click.ClickException:
    if isinstance(exc, ConfigError):
        return ConfigFailure(str(exc))
    return Failure(str(exc))


class TypedArg(click.ParamType):
    """``TYPE:VALUE``: VALUE is JSON (bare text for string), checked against TYPE."""

    name = "TYPE:VALUE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Arg:
        if isinstance(value, Arg):
            return value
        try:
            return Arg.parse(value)
        except ArgumentError as exc:
            self.fail(str(exc), param, ctx)


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
