"""structlog setup, run once per process tree before forking.

One event per line on stderr: JSON when stderr is not a terminal (journald, files, pipes),
readable console lines when it is. Each line goes out in a single ``write`` so lines from
forked children never interleave.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import orjson
import structlog


class _FdLogger:
    """Writes each rendered event to a file descriptor in one call."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def msg(self, message: str | bytes) -> None:
        data = (message if isinstance(message, bytes) else message.encode()) + b"\n"
        while data:
            try:
                written = os.write(self._fd, data)
            except InterruptedError:
                continue
            except OSError:
                return  # stderr closed: logging must never take the daemon down
            data = data[written:]

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


def _fd_logger_factory(fd: int) -> Any:
    def factory(*_args: Any) -> _FdLogger:
        return _FdLogger(fd)

    return factory


def _orjson_dumps(event: Any, **_kwargs: Any) -> bytes:
    return orjson.dumps(event, default=str)


def configure(level: str = "info", *, json: bool | None = None, fd: int = 2) -> None:
    """Route structlog to ``fd``: JSON lines unless it is a terminal (or ``json`` says)."""
    if json is None:
        json = not os.isatty(fd)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if json:
        renderer: list[Any] = [
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(serializer=_orjson_dumps),
        ]
    else:
        renderer = [structlog.dev.ConsoleRenderer(colors=True)]
    structlog.configure(
        processors=[*shared, *renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=_fd_logger_factory(fd),
        cache_logger_on_first_use=True,
    )
