"""Configuration: YAML with machinery's keys, overridden by ``TASKD_*`` environment variables.

The schema is the dataclasses below: a key that is not a field is an error, a value of the
wrong type is an error, and both name the file (or variable) and the key path. Every default
lives here.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from taskd.errors import ConfigError

ENV_PREFIX = "TASKD_"
CONFIG_ENV = "TASKD_CONFIG"
STATE_DIR_ENV = "TASKD_STATE_DIR"
DEFAULT_QUEUE = "machinery_tasks"  # machinery's default, so its example producers run unchanged
DEFAULT_RESULTS_EXPIRE_IN_S = 3600  # machinery's DefaultResultsExpireIn
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _opt(default: Any, doc: str, **checks: Any) -> Any:
    """A config field with its default, a one-line description and value checks."""
    if isinstance(default, dict | list):
        return field(
            default_factory=lambda: type(default)(default), metadata={"doc": doc, **checks}
        )
    return field(default=default, metadata={"doc": doc, **checks})


@dataclass(frozen=True, slots=True)
class RedisConfig:
    key_prefix: str = _opt("taskd:", "prefix of taskd's own keys (processing lists, dead letters)")
    delayed_tasks_key: str = _opt("delayed_tasks", "sorted set of ETA tasks, shared with machinery")
    delayed_tasks_poll_period: int = _opt(
        500, "ms between checks for due ETA tasks when none is known to be due sooner", min=1
    )
    connect_timeout: float = _opt(15.0, "seconds to connect", min=0.1)
    read_timeout: float = _opt(15.0, "seconds to wait for a reply", min=0.1)
    write_timeout: float = _opt(15.0, "seconds to send a command", min=0.1)
    max_active: int = _opt(10, "connection pool size per process", min=1)
    client_name: str = _opt("", "CLIENT SETNAME for taskd's connections")


@dataclass(frozen=True, slots=True)
class AMQPConfig:
    exchange: str = _opt("machinery_exchange", "exchange tasks are published to")
    exchange_type: str = _opt(
        "direct", "exchange type", choices=("direct", "topic", "fanout", "headers")
    )
    binding_key: str = _opt("machinery_task", "binding key of the task queue")
    queue_declare_args: dict[str, Any] = _opt({}, "extra queue arguments (x-max-priority...)")
    queue_binding_args: dict[str, Any] = _opt({}, "extra binding arguments")
    prefetch_count: int = _opt(3, "basic.qos prefetch per consumer", min=0)
    auto_delete: bool = _opt(False, "auto-delete delay queues")
    delayed_queue: str = _opt("", "one fixed delay queue instead of one per delay")


@dataclass(frozen=True, slots=True)
class SQSConfig:
    region: str = _opt(
        "", "AWS region; empty: the URL's (sqs.<region>.amazonaws.com), else boto3's"
    )
    receive_wait_time_seconds: int = _opt(20, "long-poll seconds", min=0, max=20)
    receive_visibility_timeout: int | None = _opt(
        None, "visibility timeout seconds; empty: worker.consumer_timeout", min=1, max=43_200
    )
    visibility_heartbeat: bool = _opt(True, "extend visibility while a task runs")
    max_delay_seconds: int = _opt(
        900, "longest DelaySeconds per hop; a later ETA is delayed again", min=1, max=900
    )
    create_queues: bool = _opt(True, "create a missing queue (FIFO for .fifo names) on first use")


@dataclass(frozen=True, slots=True)
class MongoDBConfig:
    database: str = _opt("", "database of tasks and group_metas; empty: the URL's, else machinery")


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    concurrency: int = _opt(0, "child processes; 0 means one per CPU", min=0)
    prefetch: int = _opt(
        0, "messages a child takes per fetch; 0: up to 32 while its tasks are quick, else 1", min=0
    )
    shutdown_timeout: float = _opt(30.0, "seconds running tasks get to finish on SIGTERM", min=0)
    poll_interval: float = _opt(
        1.0, "longest blocking wait for a message, seconds", min=0.01, max=30
    )
    heartbeat_interval: float = _opt(2.0, "seconds between consumer liveness beats", min=0.1)
    consumer_timeout: float = _opt(
        15.0, "seconds of silence before a consumer's messages go back to the queue", min=1
    )
    max_deliveries: int = _opt(
        5, "a message whose workers died this many times is set aside; 0: never", min=0
    )
    retry_jitter: float = _opt(0.0, "spread retry delays by up to this fraction either way", min=0)
    retry_max_delay: float = _opt(0.0, "longest retry delay in seconds; 0 means no cap", min=0)


@dataclass(frozen=True, slots=True)
class Lease:
    """How long a consumer may stay silent before the broker gives its messages to others:
    the one setting group every broker driver maps onto its own mechanism (see
    ``taskd.brokers.base``). Read from ``worker.heartbeat_interval`` and
    ``worker.consumer_timeout``."""

    heartbeat_interval_s: float  # a live consumer proves it is alive at least this often...
    consumer_timeout_s: float  # ...and loses its messages after this long without a sign


@dataclass(frozen=True, slots=True)
class Config:
    broker: str = _opt("", "broker URL; empty means the embedded SQLite database", secret_url=True)
    result_backend: str = _opt(
        "", "result backend URL; empty means the embedded SQLite database", secret_url=True
    )
    default_queue: str = _opt(DEFAULT_QUEUE, "queue tasks go to and workers read", nonempty=True)
    results_expire_in: int = _opt(
        DEFAULT_RESULTS_EXPIRE_IN_S,
        "seconds task states are kept; 0 means 3600",
        min=0,
        max=10 * 365 * 86_400,
    )
    imports: tuple[str, ...] = _opt((), "modules to load tasks from, besides entry points")
    log_level: str = _opt("info", "log level", choices=LOG_LEVELS)
    redis: RedisConfig = _opt(RedisConfig(), "Redis broker and backend")
    amqp: AMQPConfig = _opt(AMQPConfig(), "AMQP broker and backend")
    sqs: SQSConfig = _opt(SQSConfig(), "SQS broker")
    mongodb: MongoDBConfig = _opt(MongoDBConfig(), "MongoDB result backend")
    worker: WorkerConfig = _opt(WorkerConfig(), "the taskd daemon")
    # Where the settings came from, for messages; not a key.
    source: str | None = field(default=None, compare=False, metadata={"internal": True})

    @property
    def results_expire_in_s(self) -> int:
        return self.results_expire_in or DEFAULT_RESULTS_EXPIRE_IN_S

    @property
    def lease(self) -> Lease:
        return Lease(self.worker.heartbeat_interval, self.worker.consumer_timeout)


# -- loading --------------------------------------------------------------------------------


def state_dir(env: Mapping[str, str] = os.environ) -> Path:
    """Where the embedded database lives: $TASKD_STATE_DIR, $XDG_STATE_HOME/taskd, ~/.local/..."""
    if env.get(STATE_DIR_ENV):
        return Path(env[STATE_DIR_ENV]).expanduser()
    if env.get("XDG_STATE_HOME"):
        return Path(env["XDG_STATE_HOME"]).expanduser() / "taskd"
    return Path("~/.local/state/taskd").expanduser()


def embedded_url(env: Mapping[str, str] = os.environ) -> str:
    return f"sqlite://{(state_dir(env) / 'taskd.db').absolute()}"


def load_config(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Config:
    """The effective configuration: defaults, then the file, then ``TASKD_*`` variables.

    The file is ``path``, else ``$TASKD_CONFIG``, else none. Raises ConfigError naming the
    file or variable and the key path.
    """
    env = os.environ if env is None else env
    source = os.fspath(path) if path is not None else env.get(CONFIG_ENV) or None
    data: dict[str, Any] = {}
    if source is not None:
        data = _read_yaml(source)
    config = _build(Config, data, "", source)
    config = _apply_env(config, env)
    worker = config.worker
    if worker.consumer_timeout <= 2 * worker.heartbeat_interval:
        raise ConfigError(
            "worker.consumer_timeout",
            f"must be more than twice worker.heartbeat_interval ({worker.heartbeat_interval}s),"
            f" or live consumers look dead between beats; got {worker.consumer_timeout}",
            source,
        )
    changes: dict[str, Any] = {"source": source}
    if not config.broker:
        changes["broker"] = embedded_url(env)
    if not config.result_backend:
        changes["result_backend"] = embedded_url(env)
    return replace(config, **changes)


def _read_yaml(source: str) -> dict[str, Any]:
    try:
        text = Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read config file: {exc.strerror}", source) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError("", f"not valid YAML{where}: {problem}", source) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("", "the top level must be a mapping of keys", source)
    return data


def _public_fields(cls: type) -> list[Any]:
    return [f for f in fields(cls) if not f.metadata.get("internal")]


def _build(cls: type, data: Any, prefix: str, source: str | None) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(prefix.rstrip("."), "must be a mapping of keys", source)
    known = {f.name: f for f in _public_fields(cls)}
    for key in data:
        if key not in known:
            hint = _closest(str(key), known)
            raise ConfigError(f"{prefix}{key}", f"unknown key{hint}", source)
    hints = typing.get_type_hints(cls)
    values = {}
    for name, spec in known.items():
        if name in data:
            values[name] = _coerce(hints[name], data[name], f"{prefix}{name}", source, spec)
    return cls(**values)


def _closest(key: str, known: Mapping[str, Any]) -> str:
    import difflib

    match = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {match[0]!r}?)" if match else f" (known: {', '.join(known)})"


def _coerce(hint: Any, value: Any, key: str, source: str | None, spec: Any) -> Any:
    """Check one value against its field's type and constraints; return it in that type."""
    origin = typing.get_origin(hint)
    if is_dataclass(hint):
        return _build(hint, {} if value is None else value, f"{key}.", source)
    if origin in (types.UnionType, typing.Union):
        inner = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return None if value is None else _coerce(inner[0], value, key, source, spec)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, got {value!r}", source)
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"must be a whole number, got {value!r}", source)
        return _check_range(value, key, source, spec)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"must be a number, got {value!r}", source)
        return _check_range(float(value), key, source, spec)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"must be a string, got {value!r}", source)
        if spec.metadata.get("nonempty") and not value:
            raise ConfigError(key, "must not be empty", source)
        choices = spec.metadata.get("choices")
        if choices and value not in choices:
            raise ConfigError(key, f"must be one of {', '.join(choices)}, got {value!r}", source)
        return value
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            raise ConfigError(key, f"must be a list of strings, got {value!r}", source)
        return tuple(item.strip() for item in items if item.strip())
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"must be a mapping, got {value!r}", source)
        return dict(value)
    raise ConfigError(key, f"has an unsupported type {hint!r}", source)  # a schema bug


def _check_range(value: float, key: str, source: str | None, spec: Any) -> Any:
    low, high = spec.metadata.get("min"), spec.metadata.get("max")
    if not math.isfinite(value):
        raise ConfigError(key, f"must be a finite number, got {value!r}", source)
    if low is not None and value < low:
        raise ConfigError(key, f"must be at least {low}, got {value!r}", source)
    if high is not None and value > high:
        raise ConfigError(key, f"must be at most {high}, got {value!r}", source)
    return value


def _leaves(cls: type, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    hints = typing.get_type_hints(cls)
    out = []
    for spec in _public_fields(cls):
        path = (*prefix, spec.name)
        if is_dataclass(hints[spec.name]):
            out.extend(_leaves(hints[spec.name], path))
        else:
            out.append((path, spec))
    return out


def env_names() -> dict[str, tuple[str, ...]]:
    """Each overridable key's variable: ``TASKD_WORKER_CONCURRENCY`` -> (worker, concurrency)."""
    return {ENV_PREFIX + "_".join(path).upper(): path for path, _ in _leaves(Config)}


def _apply_env(config: Config, env: Mapping[str, str]) -> Config:
    for name, path in env_names().items():
        if name not in env:
            continue
        text = env[name]
        hint = _hint_at(path)
        value: Any = text
        if hint is int or hint is float:
            with contextlib.suppress(ValueError):  # YAML 1.1 reads "1e3" as a string
                value = hint(text)
        elif hint is not str:
            try:
                value = yaml.safe_load(text) if text.strip() else None
            except yaml.YAMLError:
                value = text
        config = _set_path(config, path, value, name)
    return config


def _hint_at(path: tuple[str, ...]) -> Any:
    cls: Any = Config
    for name in path:
        cls = typing.get_type_hints(cls)[name]
    return cls


def _set_path(obj: Any, path: tuple[str, ...], value: Any, env_name: str) -> Any:
    name = path[0]
    if len(path) > 1:
        return replace(obj, **{name: _set_path(getattr(obj, name), path[1:], value, env_name)})
    spec = next(f for f in fields(obj) if f.name == name)
    hint = typing.get_type_hints(type(obj))[name]
    return replace(obj, **{name: _coerce(hint, value, env_name, "environment", spec)})


# -- showing --------------------------------------------------------------------------------

_SECRET_KEY = re.compile(r"password|secret|token", re.IGNORECASE)


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


def to_mapping(obj: Any, *, redact: bool = True) -> dict[str, Any]:
    """The config as plain data, secrets redacted, for ``taskd check-config``."""
    out: dict[str, Any] = {}
    for spec in _public_fields(type(obj)):
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
