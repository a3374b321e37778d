"""Configuration: YAML with machinery's keys, overridden by ``TASKD_*`` environment variables.

The schema is the dataclasses below: a key that is not a field is an error (machinery's other
keys are mapped, ignored or refused by ``taskd.config_machinery``), a value of the wrong type
is an error, and both name the file (or variable) and the key path. Every default lives here.
"""

from __future__ import annotations

import math
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, is_dataclass, replace
from pathlib import Path
from typing import Any

from taskd import config_env, config_machinery
from taskd.config_dump import dump, to_mapping  # noqa: F401 (re-exported)
from taskd.config_env import CONFIG_ENV, ENV_PREFIX, STATE_DIR_ENV  # noqa: F401
from taskd.config_env import public_fields as _public_fields
from taskd.config_yaml import read_yaml
from taskd.credentials import redact_url, with_secrets  # noqa: F401 (redact_url re-exported)
from taskd.errors import ConfigError

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
    connect_timeout: float = _opt(15.0, "seconds to connect; 0: no limit", min=0)
    read_timeout: float = _opt(15.0, "seconds to wait for a reply; 0: no limit", min=0)
    write_timeout: float = _opt(15.0, "seconds to send a command; 0: no limit", min=0)
    max_active: int = _opt(10, "connection pool size per process; 0: no limit", min=0)
    wait: bool = _opt(False, "when the pool is full, wait for a connection instead of failing")
    max_idle_timeout: int = _opt(
        30, "seconds a connection may sit idle before a PING checks it on next use; 0: never", min=0
    )
    client_name: str = _opt("", "CLIENT SETNAME for taskd's connections")
    master_name: str = _opt(
        "", "Redis Sentinel: the master's name; the URL's hosts are then its Sentinels"
    )
    sentinel_password: str = _opt("", "the Sentinels' password (the master's is in the URL)")


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
    concurrency: int = _opt(0, "child processes; 0 means one per CPU the daemon may use", min=0)
    prefetch: int = _opt(
        0, "messages a child takes per fetch; 0: up to 64 while its tasks are quick, else 1", min=0
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
    time_limit: float = _opt(0.0, "seconds a task runs before its child is killed; 0: none", min=0)
    soft_time_limit: float = _opt(0.0, "seconds until a task gets SoftTimeLimitExceeded", min=0)
    max_tasks_per_child: int = _opt(0, "tasks a child runs, then is replaced; 0: no limit", min=0)
    max_memory_per_child: int = _opt(0, "MiB resident that gets a child replaced; 0: none", min=0)
    dead_letters_max: int = _opt(
        10_000, "dead letters kept per queue, the oldest dropped first; 0: no cap", min=0
    )
    dead_letters_max_age: int = _opt(  # at most 10 years: RabbitMQ's longest x-message-ttl
        604_800,
        "seconds a dead letter is kept (default 7 days); 0: no limit",
        min=0,
        max=315_360_000,
    )


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: str = _opt(
        "", "host:port of taskd start's /metrics and /healthz; empty: no listener", hostport=True
    )


@dataclass(frozen=True, slots=True)
class ClientConfig:
    pipeline: int = _opt(
        64,
        "sends that may still await their broker's confirm when send returns; 0: none",
        min=0,
        max=100_000,
    )
    send_patience: float = _opt(
        5.0,
        "seconds a send keeps trying a broker or backend it cannot connect to; 0: none",
        min=0,
        max=3600,
    )


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
    metrics: MetricsConfig = _opt(MetricsConfig(), "the daemon's Prometheus endpoint")
    client: ClientConfig = _opt(ClientConfig(), "the Python client (taskctl always waits)")
    # Where the settings came from, for messages; not a key.
    source: str | None = field(default=None, compare=False, metadata={"internal": True})
    # machinery's keys found and ignored, with why (taskd.config_machinery); not a key.
    ignored: tuple[tuple[str, str], ...] = field(
        default=(), compare=False, metadata={"internal": True}
    )

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
        data = read_yaml(source)
    data, machinery_keys = config_machinery.take(data, source)
    config = _build(Config, data, "", source)
    config = with_secrets(_apply_env(config, env), env, source)  # {credential:...} passwords
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
        changes["result_backend"] = results_default(config.broker, env)
    return config_machinery.settle(replace(config, **changes), machinery_keys)


def results_default(broker: str, env: Mapping[str, str] = os.environ) -> str:
    """Where results go when ``result_backend`` is empty: the broker's server where a result
    backend driver serves its scheme (so ``TASKD_BROKER=redis://...`` alone keeps results next
    to the messages, where every worker and sender can read them), else the embedded file."""
    from taskd.drivers import BACKENDS_GROUP, installed, scheme_of

    if broker and scheme_of(broker) in installed(BACKENDS_GROUP):
        return broker
    return embedded_url(env)


def _build(cls: type, data: Any, prefix: str, source: str | None) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(prefix.rstrip("."), "must be a mapping of keys", source)
    known = {f.name: f for f in _public_fields(cls)}
    for key in data:
        if key not in known:
            hint = _closest(str(key), [*known, *config_machinery.names_under(prefix)])
            raise ConfigError(f"{prefix}{key}", f"unknown key{hint}", source)
    hints = typing.get_type_hints(cls)
    values = {}
    for name, spec in known.items():
        if name in data:
            values[name] = _coerce(hints[name], data[name], f"{prefix}{name}", source, spec)
    return cls(**values)


def _closest(key: str, known: list[str]) -> str:
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
        if spec.metadata.get("hostport") and value:
            try:
                split_host_port(value)
            except ValueError as exc:
                raise ConfigError(key, str(exc), source) from None
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


def split_host_port(text: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:9808`` for IPv6) as (host, port); ValueError saying why not."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"must be host:port, the port 1 to 65535 (127.0.0.1:9808), got {text!r}")
    return host, int(port)


def env_names() -> dict[str, tuple[str, ...]]:
    """Each overridable key's variable: ``TASKD_WORKER_CONCURRENCY`` -> (worker, concurrency)."""
    return config_env.env_names(Config)


def _apply_env(config: Config, env: Mapping[str, str]) -> Config:
    return config_env.apply_env(config, env, _coerce)
