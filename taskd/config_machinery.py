"""machinery's config keys that are not taskd's own, and how taskd treats each.

A config file written for machinery (v1 or v2, ``config/config.go``) loads unchanged. Most of
its keys are taskd keys of the same name and meaning (``taskd.config``); every other key of
machinery's is listed in ``MACHINERY_KEYS`` below, with the reason for its treatment:

- mapped: the value sets a taskd key (``redis.normal_tasks_poll_period``, in ms, sets
  ``worker.poll_interval``, in seconds);
- ignored: accepted, checked for its type, and reported once with the reason (``taskd start``
  logs ``config_key_ignored``; ``taskd check-config`` says it on stderr);
- refused: a config error naming the key where the value asks for what taskd cannot do
  (Redis Cluster, several brokers, TLS settings); with an empty or false value the
  key is ignored.

A few taskd keys keep machinery's name and are accepted without being used
(``amqp.prefetch_count``...); they are listed as ignored too, and stay keys of taskd's (with
their ``TASKD_*`` variables). Broker and backend URLs of machinery's that taskd has no driver
for are refused with the reason (``UNSUPPORTED_URLS``).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from taskd.errors import ConfigError

if TYPE_CHECKING:
    from taskd.config import Config

Refusal = Callable[[Any, "Config"], str]  # value, effective config -> why not ("": fine)


@dataclass(frozen=True, slots=True)
class MachineryKey:
    """How taskd treats one of machinery's keys."""

    reason: str  # why it is ignored (or refused, when ``refuse`` says so), or what it sets
    kind: type | tuple[type, ...] = object  # what machinery's YAML takes; null is always fine
    maps_to: str = ""  # the taskd key its value sets, divided by ``per``
    per: int = 1
    low: float | None = None  # bounds of the value as machinery takes it, for a mapped key
    high: float | None = None
    refuse: Refusal | None = None
    taskd_key: bool = False  # also a taskd key (kept for compatibility), so left in place


def _when_set(reason: str) -> Refusal:
    return lambda value, _config: reason if value else ""


def _several_brokers(separator: Any, config: Config) -> str:
    if separator and separator in config.broker:
        return (
            f"broker lists several URLs (separated by {separator!r}), which machinery tries in"
            " turn; taskd connects to one broker: give one URL (a DNS name or load balancer"
            " in front of the nodes for failover)"
        )
    return ""


_TLS = (
    "taskd takes TLS from the URL (rediss://, amqps://, sqs+https://, mongodb's tls=true)"
    " and verifies with the system's CA certificates; settings of a Go tls.Config are not"
    " supported"
)
_CLUSTER = (
    "Redis Cluster is not supported: taskd moves messages between keys in one script, which"
    " a cluster refuses across nodes; use a single Redis (with replicas) instead"
)
_NO_CLUSTER = "taskd has no Redis Cluster support (true is refused)"
_DYNAMODB = "used only by machinery's DynamoDB result backend, which taskd does not have"
_PUBSUB = "used only by machinery's GCP Pub/Sub broker, which taskd does not have"
_GO_CLIENT = "a Go client object, set in code only; taskd builds its own from the URL"
_DELAYS = "configures machinery's AMQP delay queues; taskd delays through its own ladder"

MACHINERY_KEYS: dict[str, MachineryKey] = {
    "lock": MachineryKey("taskd runs no periodic tasks, the only users of machinery's lock", str),
    "multiple_broker_separator": MachineryKey(
        "taskd connects to one broker URL (several are refused)", str, refuse=_several_brokers
    ),
    "no_unix_signals": MachineryKey(
        "taskd start always handles its signals (TERM drains, HUP reloads); the switch is for"
        " Go programs that embed a worker",
        bool,
    ),
    "tls": MachineryKey(_TLS, object, refuse=_when_set(_TLS)),
    "tlsconfig": MachineryKey(_TLS, object, refuse=_when_set(_TLS)),  # yaml.v2's name of it
    "redis.max_idle": MachineryKey(
        "redis-py's pool does not limit idle connections; redis.max_active bounds the pool",
        int,
    ),
    "redis.normal_tasks_poll_period": MachineryKey(
        "sets worker.poll_interval, the longest blocking wait for a message (ms -> s)",
        int,
        maps_to="worker.poll_interval",
        per=1000,
        low=10,
        high=30_000,
    ),
    "redis.cluster_enabled": MachineryKey(_NO_CLUSTER, bool, refuse=_when_set(_CLUSTER)),
    "redis.cluster_mode": MachineryKey(_NO_CLUSTER, bool, refuse=_when_set(_CLUSTER)),
    "amqp.prefetch_count": MachineryKey(
        "basic.qos follows worker.prefetch (adaptive by default)", int, taskd_key=True
    ),
    "amqp.auto_delete": MachineryKey(_DELAYS, bool, taskd_key=True),
    "amqp.delayed_queue": MachineryKey(_DELAYS, str, taskd_key=True),
    "sqs.visibility_hearth_beat": MachineryKey(  # sic, machinery v2's spelling
        "sets sqs.visibility_heartbeat", bool, maps_to="sqs.visibility_heartbeat"
    ),
    "sqs.client": MachineryKey(_GO_CLIENT),
    "dynamodb.task_states_table": MachineryKey(_DYNAMODB, str),
    "dynamodb.group_metas_table": MachineryKey(_DYNAMODB, str),
    "dynamodb.client": MachineryKey(_GO_CLIENT),
    "gcppubsub.client": MachineryKey(_GO_CLIENT),
    "gcppubsub.max_extension": MachineryKey(_PUBSUB, (int, str)),
    "mongodb.client": MachineryKey(_GO_CLIENT),
}

# Sections of machinery's that taskd has no use for at all (only the keys above go in them).
FOREIGN_SECTIONS = ("dynamodb", "gcppubsub")

# URL prefixes of machinery's drivers that taskd does not have: (key, prefix) -> why.
UNSUPPORTED_URLS: dict[tuple[str, str], str] = {
    ("broker", "gcppubsub://"): "machinery's GCP Pub/Sub broker is not supported by taskd",
    ("broker", "eager"): "machinery's in-process eager mode is not supported; leave broker"
    " empty for the embedded SQLite database",
    ("result_backend", "https://dynamodb"): "machinery's DynamoDB result backend is not"
    " supported by taskd",
    ("result_backend", "eager"): "machinery's in-process eager mode is not supported; leave"
    " result_backend empty for the broker's server or the embedded SQLite database",
    ("result_backend", "null"): "machinery's null backend is not supported: taskd keeps every"
    " task's state (leave result_backend empty)",
}


def names_under(prefix: str) -> list[str]:
    """machinery's own key names in one section (``"redis."``; ``""``: the top level), for
    the hints of unknown keys."""
    names = [] if prefix else list(FOREIGN_SECTIONS)
    for path in MACHINERY_KEYS:
        section, _, name = path.rpartition(".")
        if f"{section}." == prefix or (not prefix and not section):
            names.append(name)
    return names


def take(data: dict[str, Any], source: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a config file's data into what taskd's schema reads (mapped values moved to
    their taskd keys) and machinery's keys found (path -> value), each checked for its type.

    Raises ConfigError naming the key for a wrong type, a mapped value out of range or in
    conflict with the taskd key it sets, and an unknown key in a section of machinery's own.
    """
    data = {key: dict(value) if isinstance(value, dict) else value for key, value in data.items()}
    found: dict[str, Any] = {}
    for path, spec in MACHINERY_KEYS.items():
        section, _, name = path.rpartition(".")
        holder = data.get(section) if section else data
        if not isinstance(holder, dict) or name not in holder:
            continue
        value = holder[name] if spec.taskd_key else holder.pop(name)
        if value is not None and not _fits(value, spec.kind):
            raise ConfigError(path, f"must be {_kind_name(spec.kind)}, got {value!r}", source)
        found[path] = value
        if spec.maps_to and value is not None:
            _map(data, path, value, spec, source)
    for section in FOREIGN_SECTIONS:
        if section in data:
            rest = data.pop(section)
            if rest is not None and not isinstance(rest, dict):
                raise ConfigError(section, "must be a mapping of keys", source)
            for key in rest or {}:
                known = names_under(f"{section}.")
                match = difflib.get_close_matches(str(key), known, n=1)
                hint = (
                    f" (did you mean {match[0]!r}?)" if match else f" (known: {', '.join(known)})"
                )
                raise ConfigError(f"{section}.{key}", f"unknown key{hint}", source)
    return data, found


def _fits(value: Any, kind: type | tuple[type, ...]) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        return False  # YAML's true is not a number
    return isinstance(value, kinds)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {bool: "true or false", int: "a whole number", str: "a string", dict: "a mapping"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _map(
    data: dict[str, Any], path: str, value: Any, spec: MachineryKey, source: str | None
) -> None:
    if spec.low is not None and value < spec.low:
        raise ConfigError(path, f"must be at least {spec.low}, got {value!r}", source)
    if spec.high is not None and value > spec.high:
        raise ConfigError(path, f"must be at most {spec.high}, got {value!r}", source)
    section, _, name = spec.maps_to.rpartition(".")
    target = data.setdefault(section, {}) if section else data
    if target is None:
        target = data[section] = {}
    if not isinstance(target, dict):
        return  # the schema reports the section's own type error
    mapped = value / spec.per if spec.per != 1 else value
    if name in target and target[name] != mapped:
        raise ConfigError(
            path,
            f"sets {spec.maps_to} to {mapped!r}, which is also given as {target[name]!r}",
            source,
        )
    target[name] = mapped


def settle(config: Config, found: Mapping[str, Any]) -> Config:
    """Refuse what taskd cannot honour (ConfigError naming the key), and record on the
    config the machinery keys it ignores, with why, for ``taskd start`` and check-config."""
    source = config.source
    for path, value in found.items():
        spec = MACHINERY_KEYS[path]
        why = spec.refuse(value, config) if spec.refuse else ""
        if why:
            raise ConfigError(path, why, source)
    for (key, prefix), why in UNSUPPORTED_URLS.items():
        if getattr(config, key).startswith(prefix):
            raise ConfigError(key, why, source)
    for key in ("broker", "result_backend"):
        url = getattr(config, key)
        scheme, _, rest = url.partition("://")
        several = "," in rest.partition("/")[0].rpartition("@")[2]
        if scheme in ("redis", "rediss") and several and not config.redis.master_name:
            raise ConfigError(
                key,
                "several Redis addresses: Sentinels need redis.master_name; as machinery's"
                f" cluster form, {_CLUSTER}",
                source,
            )
    ignored = tuple(
        (path, MACHINERY_KEYS[path].reason) for path in found if not MACHINERY_KEYS[path].maps_to
    )
    return replace(config, ignored=ignored)
