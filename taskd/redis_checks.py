"""What a Redis server, and the user taskd connects as, must offer taskd's Redis drivers:
checked before they serve (``Broker.check``, ``ResultBackend.check``), so that a server they
cannot use is a config error naming the setting, not workers that retry for good while the
daemon looks ready. And what such a server may lose of what each role keeps there (evicted
keys, nothing on disk): warnings naming the role, as Redis's configuration is the operator's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from taskd import logs, redisdb
from taskd.errors import ConfigError
from taskd.redis_scripts import NEVER_WRITTEN

log = logs.get_logger("taskd.redis")

SCRIPTING = ("EVALSHA", "EVAL")  # every Redis driver of taskd's runs Lua scripts

# Forms of the commands refuse_unusable looks for that change nothing (no script has a SHA-1
# of zeros, NEVER_WRITTEN holds nothing): only two replies tell anything, an unknown command
# (renamed, or not served by a proxy) and NOPERM (the user's ACL denies it).
_HARMLESS = {
    "EVALSHA": ("EVALSHA", "0" * 40, 0),
    "EVAL": ("EVAL", "return 0", 0),
    "LMOVE": ("LMOVE", NEVER_WRITTEN, NEVER_WRITTEN, "LEFT", "RIGHT"),
    "BLMOVE": ("BLMOVE", NEVER_WRITTEN, NEVER_WRITTEN, "LEFT", "RIGHT", 0.001),
}


def refuse_unusable(
    client: Any, key: str, source: str | None, needed: Sequence[str], *, writes: bool = True
) -> None:
    """ConfigError naming ``key`` for a server taskd cannot use as configured, which its
    workers would otherwise retry for good while the daemon looks ready: one that refuses the
    URL's credentials (a wrong or missing password, an unknown user); one in cluster mode
    (taskd's scripts touch keys of many hash slots at once: CROSSSLOT); one without a command
    ``needed`` (older than 6.2 for a broker, or one renamed or disabled, as some managed
    services do, or a proxy in front of Redis that does not serve them); a user whose ACL
    denies one of them, or the key each script deletes first (NEVER_WRITTEN), unless the
    caller only reads (not ``writes``). Harmless forms of the commands are run to tell;
    cluster mode is not checked where INFO is denied. A replica (the URL names one, or a
    failover is under way) is warned of, not refused: every write fails (READONLY), which
    the workers ride out as an outage, until it is promoted."""
    import redis

    try:
        enabled = client.info("cluster").get("cluster_enabled")
    except redis.exceptions.AuthenticationError as exc:
        raise ConfigError(key, f"Redis refused the connection: {exc}", source) from None
    except redis.ResponseError:
        enabled = False
    if enabled:
        raise ConfigError(
            key,
            "the Redis server runs in cluster mode, which taskd does not support (its"
            " scripts touch keys of many hash slots at once): use a standalone Redis, or"
            " Sentinel for failover (redis.master_name)",
            source,
        )
    probed = _probed(client, needed)
    missing = _missing(client, needed) or [
        name for name in needed if "unknown command" in str(probed.get(name, ""))
    ]  # COMMAND itself renamed, denied, or not served (a proxy): the probes tell
    if missing:
        try:
            version = client.info("server").get("redis_version", "unknown")
        except redis.ResponseError:
            version = "unknown"
        raise ConfigError(
            key,
            f"this Redis (version {version}) has no {', '.join(missing)}: taskd needs Redis"
            " 6.2 or later for a broker (BLMOVE and LMOVE take a message into a processing"
            " list in one step) and Lua scripts (EVAL, EVALSHA) for both roles, none of them"
            " renamed or disabled; upgrade or reconfigure Redis, or use another driver",
            source,
        )
    if not writes:  # a reader (taskctl result...) may be a user that may not write
        return
    denied = {
        name: reply
        for name, reply in probed.items()
        if isinstance(reply, redis.exceptions.NoPermissionError)
    }
    commands = [name for name, reply in denied.items() if "keys" not in str(reply)]
    if commands:
        raise ConfigError(
            key,
            f"this Redis user may not run {', '.join(commands)} ({denied[commands[0]]}):"
            " taskd needs Lua scripts (EVAL, EVALSHA) for both roles, and BLMOVE and LMOVE"
            " for a broker; allow them in the user's ACL, or use another user",
            source,
        )
    if isinstance(probed.get("DEL"), redis.exceptions.ReadOnlyError):
        log.warning(
            "redis_is_a_replica",
            key=key,
            error=str(probed["DEL"]),
            fix="point the URL at the master (or name it through Sentinel:"
            " redis.master_name); taskd waits until this server is promoted",
        )
    if "DEL" in denied:
        raise ConfigError(
            key,
            f"{denied['DEL']}: taskd keeps each task's state under the task's id, as machinery"
            f" does, not under redis.key_prefix, and each of its scripts first deletes"
            f" {NEVER_WRITTEN}; this user's ACL must allow such keys (task_*)",
            source,
        )


def _missing(client: Any, needed: Sequence[str]) -> list[str]:
    """The commands ``needed`` that COMMAND INFO does not know; none where it cannot tell."""
    import redis

    try:
        found = redisdb.command(client, ("COMMAND", "INFO", *needed))
    except redis.ResponseError:
        return []
    return [name for name, info in zip(needed, found, strict=True) if not info]


def _probed(client: Any, needed: Sequence[str]) -> dict[str, Exception]:
    """The error replies to the harmless forms of the commands ``needed`` and of the DEL each
    script begins with (by command); those that ran are left out."""
    probes = [("DEL", NEVER_WRITTEN), *(_HARMLESS[name] for name in needed)]
    replies = redisdb.send_packed(client, probes)()
    return {
        str(probe[0]): reply
        for probe, reply in zip(probes, replies, strict=True)
        if isinstance(reply, Exception)
    }


# What each role keeps in Redis, and so loses when Redis drops keys (redis_may_evict: any key
# under an allkeys-* policy, those with an expiry under volatile-*) or forgets them on a
# restart (redis_not_persistent). A result backend's group and chord records expire as its
# results do, and a chord whose record is gone does not fire its callback.
_BACKEND_KEEPS = (
    "results and the records of groups and chords (a chord whose record is gone does not fire"
    " its callback)"
)
_KEPT = {  # role: what it loses under an allkeys-* policy, and under a volatile-* one
    "broker": ("queued messages and results", "results"),
    "result_backend": (_BACKEND_KEEPS, _BACKEND_KEEPS),
}
_RESTART_LOSES = {
    "broker": "every queued message, ETA task and result it holds, on a restart of Redis",
    "result_backend": "every result and record of a group or chord it holds, on a restart of"
    " Redis (a chord whose record is gone does not fire its callback)",
}


def warn_of_eviction(client: Any, key: str) -> None:
    """A warning when Redis, once at ``maxmemory``, may evict what the role ``key`` keeps
    there: with an ``allkeys-*`` policy any key (queued messages lost without a trace), with
    a ``volatile-*`` one those with an expiry (results, before ``results_expire_in``).
    Nothing where CONFIG is not allowed (managed services often rename it)."""
    import redis

    try:
        found = client.config_get("maxmemory*")
    except redis.ResponseError:  # CONFIG disabled or renamed
        return
    config = {as_text(name): as_text(value) for name, value in found.items()}
    policy, limit = config.get("maxmemory-policy", "noeviction"), config.get("maxmemory", "0")
    if policy == "noeviction" or limit == "0":
        return
    any_key, expiring = _KEPT[key]
    log.warning(
        "redis_may_evict",
        key=key,
        maxmemory_policy=policy,
        maxmemory=int(limit),
        loses=any_key if policy.startswith("allkeys") else expiring,
        fix="CONFIG SET maxmemory-policy noeviction (and in redis.conf): a full Redis then"
        " refuses writes, which taskd reports and retries, instead of dropping keys",
    )


def warn_of_no_persistence(client: Any, key: str) -> None:
    """A warning when Redis keeps nothing on disk (no append-only file, no snapshots): a
    restart of Redis then loses all that the role ``key`` keeps there, whatever taskd's
    acks promise. Nothing where CONFIG is not allowed (managed services persist as they are
    set up)."""
    import redis

    try:
        found = client.config_get("appendonly") | client.config_get("save")
    except redis.ResponseError:  # CONFIG disabled or renamed
        return
    config = {as_text(name): as_text(value) for name, value in found.items()}
    if config.get("appendonly") != "no" or config.get("save", "").strip():
        return
    log.warning(
        "redis_not_persistent",
        key=key,
        loses=_RESTART_LOSES[key],
        fix="CONFIG SET appendonly yes (and in redis.conf; appendfsync everysec loses at most"
        " the last second of them), or save points (what came after the last snapshot)",
    )


def as_text(value: Any) -> str:
    """A reply's bytes (or any value) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)
