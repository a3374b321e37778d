"""What the Redis broker verifies before it serves queues (``Broker.check``), besides what
every Redis driver does (``taskd.redis_checks``): that no two roles share a key, and that the
keys already in Redis hold what taskd will write there.

machinery keeps a queue (a list), its ETA tasks (one sorted set) and task states (strings)
side by side, named by the user; a queue named like the delayed set turns into a sorted set
at the first ETA task, and every later send fails with WRONGTYPE. Here that is a config error
naming the key, before the first message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from taskd.brokers.base import queue_setting
from taskd.brokers.redis.keys import RedisKeys
from taskd.errors import ConfigError
from taskd.redis_checks import as_text

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
        found = as_text(reply)
        if found not in ("none", kind):
            where = None if setting == "--queue" else source
            raise ConfigError(
                setting,
                f"the Redis key {name!r} holds a {found}, where taskd keeps a {kind}: delete"
                " or rename that key, or configure another name",
                where,
            )
