"""What the Redis broker verifies before it serves queues (``Broker.check``), besides what
every Redis driver does (``redis_checks.refuse_unusable``): that no two roles share a key, that
the keys already in Redis hold what taskd will write there, and whether Redis may evict what
taskd keeps there (a warning: Redis's configuration is the operator's).

machinery keeps a queue (a list), its ETA tasks (one sorted set) and task states (strings)
side by side, named by the user; a queue named like the delayed set turns into a sorted set
at the first ETA task, and every later send fails with WRONGTYPE. Here that is a config error
naming the key, before the first message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from taskd import logs
from taskd.brokers.base import queue_setting
from taskd.brokers.redis.keys import RedisKeys
from taskd.errors import ConfigError

log = logs.get_logger("taskd.redis")

DELAYED_KEY = "redis.delayed_tasks_key"
PREFIX_KEY = "redis.key_prefix"


def check_names(keys: RedisKeys, queues: Sequence[str], source: str | None) -> None:
    """Collisions between the configured names, found without asking Redis."""
    for queue in queues:
        where = source if queue == keys.default_queue else None
        if queue == keys.delayed:
            raise ConfigError(
                DELAYED_KEY,
                f"{keys.delayed!r} is also a queue's name: the first ETA task would turn the"
                " queue into a sorted set, and every later send would fail (WRONGTYPE);"
                " choose another key (machinery's default is 'delayed_tasks')",
                source,
            )
        if keys.owned(queue):
            raise ConfigError(
                queue_setting(queue, keys.default_queue),
                f"{queue!r} is the name of one of taskd's own keys (under {PREFIX_KEY}"
                f" {keys.prefix!r}): choose another queue name",
                where,
            )
    if keys.owned(keys.delayed):
        raise ConfigError(
            DELAYED_KEY,
            f"{keys.delayed!r} is the name of one of taskd's own keys (under {PREFIX_KEY}"
            f" {keys.prefix!r}): choose another key",
            source,
        )


def expected_types(keys: RedisKeys, queues: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Redis key -> (the type taskd writes there, the setting that names the key)."""
    wanted = {keys.delayed: ("zset", DELAYED_KEY)}
    for queue in queues:
        wanted[queue] = ("list", queue_setting(queue, keys.default_queue))
        wanted[keys.dead(queue)] = ("list", PREFIX_KEY)
    wanted[keys.consumers] = ("zset", PREFIX_KEY)
    wanted[keys.consumer_queues] = ("hash", PREFIX_KEY)
    wanted[keys.deliveries] = ("hash", PREFIX_KEY)
    return wanted


def check_types(client: Any, keys: RedisKeys, queues: Sequence[str], source: str | None) -> None:
    """Keys already in Redis of another type than taskd writes there, in one round trip."""
    wanted = expected_types(keys, queues)
    pipe = client.pipeline(transaction=False)
    for name in wanted:
        pipe.type(name)
    for (name, (kind, setting)), reply in zip(wanted.items(), pipe.execute(), strict=True):
        found = _text(reply)
        if found not in ("none", kind):
            where = None if setting == "--queue" else source
            raise ConfigError(
                setting,
                f"the Redis key {name!r} holds a {found}, where taskd keeps a {kind}: delete"
                " or rename that key, or configure another name",
                where,
            )


def warn_of_eviction(client: Any) -> None:
    """A warning when Redis, once at ``maxmemory``, may evict taskd's keys: with an
    ``allkeys-*`` policy any key (queued messages lost without a trace), with a
    ``volatile-*`` one those with an expiry (results, before ``results_expire_in``).
    Nothing where CONFIG is not allowed (managed services often rename it)."""
    import redis

    try:
        found = client.config_get("maxmemory*")
    except redis.ResponseError:  # CONFIG disabled or renamed
        return
    config = {_text(key): _text(value) for key, value in found.items()}
    policy, limit = config.get("maxmemory-policy", "noeviction"), config.get("maxmemory", "0")
    if policy == "noeviction" or limit == "0":
        return
    loses = "queued messages and results" if policy.startswith("allkeys") else "results"
    log.warning(
        "redis_may_evict",
        maxmemory_policy=policy,
        maxmemory=int(limit),
        loses=loses,
        fix="CONFIG SET maxmemory-policy noeviction (and in redis.conf): a full Redis then"
        " refuses writes, which taskd reports and retries, instead of dropping keys",
    )


def warn_of_no_persistence(client: Any) -> None:
    """A warning when Redis keeps nothing on disk (no append-only file, no snapshots): a
    restart of Redis then loses every queued message, whatever taskd's acks promise.
    Nothing where CONFIG is not allowed (managed services persist as they are set up)."""
    import redis

    try:
        found = client.config_get("appendonly") | client.config_get("save")
    except redis.ResponseError:  # CONFIG disabled or renamed
        return
    config = {_text(key): _text(value) for key, value in found.items()}
    if config.get("appendonly") != "no" or config.get("save", "").strip():
        return
    log.warning(
        "redis_not_persistent",
        loses="every queued message, ETA task and result it holds, on a restart of Redis",
        fix="CONFIG SET appendonly yes (and in redis.conf; appendfsync everysec loses at most"
        " the last second of them), or save points (what came after the last snapshot)",
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
