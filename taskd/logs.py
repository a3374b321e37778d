"""structlog setup, run once per process tree before forking.

One event per line on stderr, in one of three forms:

- the journal (stderr is the stream ``$JOURNAL_STREAM`` names, as systemd sets it for a
  service): ``<3>child_exited child=2 signal=SIGKILL``. The ``<N>`` prefix is the syslog
  priority, which journald strips and stores as the entry's PRIORITY, so ``journalctl -p
  warning`` filters and errors stand out; the journal keeps the time, unit and host itself,
  and ``key=value`` pairs read at a glance yet still parse (a value with spaces, quotes or
  newlines is a quoted JSON string, so a traceback stays on its one line).
- JSON objects with ``timestamp`` and ``level`` when stderr is anything else that is not a
  terminal (files, pipes, container logs).
- readable console lines on a terminal.

Each line goes out in a single ``write`` so lines from forked children never interleave, to
a copy of stderr's descriptor made at the first ``configure``: a task that closes fd 2, or
opens a file that takes its number, leaves the daemon's logs where they were.

The standard library's logging (a task's own ``logging.getLogger(...)``, a library's, Python's
warnings) goes the same way at the same level, with the same context (the running task's id):
a plain line in a stream of JSON would break whatever reads it. Libraries that talk at info
about every connection (boto3...) are held to warnings, and pika, whose errors repeat each
lost connection that taskd reports once per outage, is silenced.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import orjson
import structlog

from taskd.terminal import shown


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


def _json_bytes(event: Any, **_kwargs: Any) -> bytes:
    try:
        return orjson.dumps(event, default=str)
    except TypeError:  # a lone surrogate (a task's error naming a file by its raw bytes...),
        # which orjson refuses: the stdlib escapes it (\\udce9), and a log line never fails
        # (it would take its child down, its task's outcome with it)
        return json.dumps(event, default=str).encode()


# syslog priorities (sd-daemon(3)'s SD_ERR...) of structlog's levels
PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2, "exception": 3}


def is_journal(fd: int, env: Mapping[str, str] = os.environ) -> bool:
    """Whether ``fd`` is the journal stream systemd connected (``$JOURNAL_STREAM`` is its
    ``device:inode``; a descriptor redirected elsewhere no longer matches)."""
    device, _, inode = env.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        stat = os.fstat(fd)
    except OSError:
        return False
    return (stat.st_dev, stat.st_ino) == (int(device), int(inode))


def _journal_line(_logger: Any, method: str, event: dict[str, Any]) -> str:
    """``<priority>event key=value ...`` for journald."""
    priority = PRIORITIES.get(event.pop("level", method), 6)
    name = _logfmt(str(event.pop("event", "")))  # a message with spaces too stays one token
    pairs = "".join(f" {key}={_logfmt(value)}" for key, value in event.items())
    return f"<{priority}>{name}{pairs}"


def _shown_values(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """On a terminal, control characters in values (a task's error, a message's body) are
    shown as escapes, not obeyed (``taskd.terminal``)."""
    return {key: shown(v) if isinstance(v, str) else v for key, v in event.items()}


def _logfmt(value: Any) -> str:
    if isinstance(value, list | tuple) and all(isinstance(v, str | int) for v in value):
        value = ",".join(map(str, value))  # tasks=add,sum: a list of names reads as one
    text = value if isinstance(value, str) else _json_bytes(value).decode()
    if not text or not text.isprintable() or any(c in text for c in ' "='):
        return _json_bytes(text).decode()  # quoted, newlines escaped
    return text


# Libraries whose info and debug are about their own workings (each connection, each request).
QUIET_LIBRARIES = ("pika", "botocore", "boto3", "s3transfer", "urllib3", "pymongo", "pymemcache")


class _StdlibHandler(logging.Handler):
    """Standard-library log records rendered as structlog events: the message as ``event``,
    the logger's name as ``logger``, through the same processors to the same descriptor."""

    def __init__(self, processors: list[Any], fd: int) -> None:
        super().__init__()
        self._processors, self._out = processors, _FdLogger(fd)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            event: Any = {"event": record.getMessage(), "logger": record.name}
            if record.exc_info:
                event["exc_info"] = record.exc_info
            method = record.levelname.lower()
            for processor in self._processors:
                event = processor(None, method, event)
            self._out.msg(event)
        except Exception:
            self.handleError(record)


_copies: dict[tuple[int, int, int], int] = {}  # (descriptor, its file) -> the copy


def _own_copy(fd: int) -> int:
    """A descriptor of this module's for the file ``fd`` names now, made once per file (the
    daemon reconfigures on reload); ``fd`` itself where it cannot be copied (closed)."""
    try:
        found = os.fstat(fd)
        key = (fd, found.st_dev, found.st_ino)
        if key not in _copies:
            _copies[key] = os.dup(fd)  # not inherited across exec; forked children share it
    except OSError:
        return fd
    return _copies[key]


def _route_stdlib(level: int, processors: list[Any], fd: int) -> None:
    root = logging.getLogger()
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    root.addHandler(_StdlibHandler(processors, fd))
    root.setLevel(level)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    # pika logs each lost connection as errors, several per attempt to reconnect; taskd
    # reports an outage itself, once (and every 30 s while it lasts).
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    logging.captureWarnings(True)  # warnings.warn(...) as records of the logger py.warnings


def configure(level: str = "info", *, json: bool | None = None, fd: int = 2) -> None:
    """Route structlog to ``fd`` (through a copy of it): journal lines when it is the
    journal, else JSON lines unless it is a terminal (``json`` forces one of the last two)."""
    fd = _own_copy(fd)
    journal = json is None and is_journal(fd)
    if json is None:
        json = not os.isatty(fd)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
    ]
    if not journal:  # the journal stamps entries itself
        shared.append(structlog.processors.TimeStamper(fmt="iso", utc=True))
    if journal:
        renderer: list[Any] = [structlog.processors.format_exc_info, _journal_line]
    elif json:
        renderer = [
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(serializer=_json_bytes),
        ]
    else:
        renderer = [
            structlog.processors.format_exc_info,
            _shown_values,
            structlog.dev.ConsoleRenderer(colors=True),
        ]
    threshold = logging.getLevelNamesMapping()[level.upper()]
    filtering = structlog.make_filtering_bound_logger(threshold)
    TaskdLogger.configured = structlog.wrap_logger(
        _FdLogger(fd), processors=[*shared, *renderer], wrapper_class=filtering
    ).bind()
    # The same for structlog's global configuration: what tasks log through it comes out
    # alike, with the running task's id (unless their application configures it otherwise).
    structlog.configure(
        processors=[*shared, *renderer],
        wrapper_class=filtering,
        logger_factory=_fd_logger_factory(fd),
        cache_logger_on_first_use=True,
    )
    _route_stdlib(threshold, [*shared, *renderer], fd)


def _to_target(method: str) -> Callable[..., Any]:
    def log(self: TaskdLogger, event: str, **values: Any) -> Any:
        own = self.configured
        return getattr(self._app if own is None else own, method)(event, **values)

    log.__name__ = method
    return log


class TaskdLogger:
    """taskd's own logger (``get_logger``). Once ``configure`` ran (``taskd``, ``taskctl``),
    it renders through taskd's configuration whatever a task's module then does to
    structlog's global one (an application configuring structlog at import took the daemon's
    lines to its own stdout, in its own form, without the running task's id); before that (an
    application using the client API), through the global one: the application's."""

    __slots__ = ("_app",)
    configured: Any = None  # taskd's own configuration, bound (``configure``)

    def __init__(self, name: str) -> None:
        self._app = structlog.get_logger(name)

    debug, info, warning, error, critical, exception = (
        _to_target(method)
        for method in ("debug", "info", "warning", "error", "critical", "exception")
    )


def get_logger(name: str) -> TaskdLogger:
    return TaskdLogger(name)
