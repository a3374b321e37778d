"""Redis plumbing shared by the Redis broker and result backend: connections (to one server,
or to the master that Redis Sentinels name), and writes whose replies are read later (the
scripts are ``taskd.redis_scripts``).

URL forms are machinery's (``taskd.redis_url``).
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from taskd import drivers, forking
from taskd.config import Config
from taskd.errors import ConfigError, DriverError
from taskd.redis_pools import (
    connected_again_if_closed,
    master_connection_class,
    on_a_replica,
    pool_class,
)
from taskd.redis_url import SENTINEL_PORT, connection_kwargs, parse_url


def connect(url: str, config: Config, key: str, *, longest_block_s: float = 0.0) -> Any:
    """A redis-py client; connections open lazily, from a pool of ``redis.max_active`` (which
    waits for a free connection when full with ``redis.wait``, else fails).

    redis-py's own retries are off: a command whose reply is lost must not run twice behind
    taskd's back (a fetch would strand messages); the worker retries explicitly instead.
    """
    try:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry
    except ImportError as exc:
        raise ConfigError(
            key,
            f"the Redis driver needs redis-py (a dependency of taskd): {exc}",
            config.source,
        ) from None
    settings = config.redis
    socket_timeout = None  # machinery's 0: no limit
    if settings.read_timeout and settings.write_timeout:
        socket_timeout = max(settings.read_timeout, settings.write_timeout, longest_block_s + 5.0)
    sockets = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": settings.connect_timeout or None,
        "socket_keepalive": True,
    }
    options = {
        **sockets,
        "client_name": settings.client_name or None,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": settings.max_idle_timeout,
    }
    # machinery's redis.wait: a full pool makes a caller wait for a connection, not fail.
    waits = bool(settings.wait and settings.max_active)
    sizes = (
        {"max_connections": settings.max_active, "timeout": socket_timeout}
        if waits
        else {"max_connections": settings.max_active or 2**31}  # 0: no limit
    )
    if settings.master_name:
        sentinels, kwargs = parse_url(url, key, config.source, default_port=SENTINEL_PORT)
        if not sentinels:
            raise ConfigError(
                key,
                "with redis.master_name the URL names the Sentinels (host:port, several"
                " separated by commas), not a socket",
                config.source,
            )
        from redis.sentinel import Sentinel, SentinelConnectionPool

        tls = {name: value for name, value in kwargs.items() if name.startswith("ssl")}
        sentinel = Sentinel(
            sentinels,
            sentinel_kwargs={"password": settings.sentinel_password or None, **sockets, **tls},
        )
        sentinel_pool = pool_class(SentinelConnectionPool, waits)
        return sentinel.master_for(
            settings.master_name, connection_pool_class=sentinel_pool, **kwargs, **options, **sizes
        )
    made = redis.Redis(
        **connection_kwargs(url, key, config.source), **options
    ).connection_pool  # only to turn the arguments into a pool's
    pool = pool_class(redis.ConnectionPool, waits)(
        connection_class=master_connection_class(made.connection_class),
        **made.connection_kwargs,
        **sizes,
    )
    return redis.Redis.from_pool(pool)


def translated(
    unavailable: type[DriverError], permanent: type[DriverError], driver: str, **context: Any
) -> AbstractContextManager[None]:
    """redis-py errors as taskd's: connection trouble and a server that cannot take writes
    for now (full, a replica, NOT_NOW_REPLIES) are transient, the rest is not."""
    import redis

    return drivers.translated(
        _transient(), redis.RedisError, unavailable, permanent, driver, passing=_not_now, **context
    )


# Error replies that say "not now", which redis-py has no class for: another client's
# script past busy-reply-threshold (BUSY), a failed snapshot under stop-writes-on-bgsave-error
# (MISCONF: a full disk, say), too few replicas for min-replicas-to-write (NOREPLICAS), a
# blocked command ended by a failover demoting the master (UNBLOCKED). The command did not run.
NOT_NOW_REPLIES = frozenset({"BUSY", "MISCONF", "NOREPLICAS", "UNBLOCKED"})


def _not_now(exc: BaseException) -> bool:
    import redis

    if not isinstance(exc, redis.ResponseError):
        return False
    _, _, reply = str(exc).rpartition("caused error: ")  # a pipeline's: after the command
    return reply.split(" ", 1)[0] in NOT_NOW_REPLIES


@functools.cache
def _transient() -> tuple[type[Exception], ...]:
    """Errors that waiting may cure: connection trouble (a Redis loading its data included)
    and ``_refusals``."""
    from redis import exceptions

    return (exceptions.ConnectionError, exceptions.TimeoutError, *_refusals())


@functools.cache
def _refusals() -> tuple[type[Exception], ...]:
    """Error replies of a server that cannot take writes for now: a full Redis (OOM, under
    noeviction), a replica where a master was (READONLY, MASTERDOWN: a failover)."""
    from redis import exceptions

    return (exceptions.OutOfMemoryError, exceptions.ReadOnlyError, exceptions.MasterDownError)


def refused(reply: Any) -> bool:
    """Whether a reply refuses its command for now: the command did not run, and may be
    made again (``_refusals``, NOT_NOW_REPLIES)."""
    return isinstance(reply, _refusals()) or _not_now(reply)


def same_server(one: Any, other: Any) -> bool:
    """Whether two redis-py clients talk to the same server (or Sentinels' master) and
    database as the same user."""
    fields = ("host", "port", "db", "path", "username")
    a, b = one.connection_pool, other.connection_pool
    return _sentinels_of(a) == _sentinels_of(b) and all(
        a.connection_kwargs.get(field) == b.connection_kwargs.get(field) for field in fields
    )


def _sentinels_of(pool: Any) -> tuple[str, list[tuple[str, int]]] | None:
    """The master's name and its Sentinels' addresses, for a pool of Sentinel's; else None."""
    manager = getattr(pool, "sentinel_manager", None)
    if manager is None:
        return None
    sentinels = [sentinel.connection_pool.connection_kwargs for sentinel in manager.sentinels]
    return pool.service_name, sorted((each["host"], each["port"]) for each in sentinels)


def send_packed(client: Any, commands: Sequence[Sequence[Any]]) -> Callable[..., list[Any]]:
    """Write ``commands`` in one go on a connection of ``client``'s pool, without waiting;
    the function returned reads their replies (``Pipe.write``)."""
    return Pipe(client, outlives_a_call=False).write(commands)


class Pipe:
    """Writes whose replies are read later, all on one connection of a client's pool, so
    several writes can be on their way at once (pipelining across calls).

    ``write`` sends at once and returns the function that reads that write's replies, each
    error reply (ResponseError) in its command's place: the next ``count`` of them, or all
    that are left. Readers may be called in any order and from any thread: reading a
    write's replies first reads, and keeps for their own readers, those of earlier writes.
    The connection is taken from the pool for the first write and goes back once every
    reply is read off it. redis-py errors pass to the caller and drop the connection: the
    replies still on it are lost, and reading them raises ConnectionError; one connecting
    (nothing was written) is raised as drivers.Unsent. In a forked child the parent's
    connection is left alone.
    """

    def __init__(self, client: Any, *, outlives_a_call: bool = True) -> None:
        self._pool = client.connection_pool
        self._lock = threading.Lock()
        self._connection: Any = None
        self._written = 0  # replies asked for by every write so far: the next one's index
        self._read = 0  # index of the next reply to read off the connection
        self._kept: dict[int, Any] = {}  # read, waiting for their own reader
        self._written_at = 0.0
        if outlives_a_call:  # one made for a single call is done before any fork
            forking.forget_in_children(self)

    def write(self, commands: Sequence[Sequence[Any]]) -> Callable[..., list[Any]]:
        with self._lock:
            connection = self._take()
            try:
                # Checked for health when taken (_connected), where a failure sent nothing.
                connection.send_packed_command(_packed(connection, commands), check_health=False)
            except BaseException:
                self._drop()
                raise
            self._written_at = time.monotonic()
            first = self._written
            self._written += len(commands)
        end = first + len(commands)
        unread = [first]  # index of this write's next reply its reader has not had

        def replies(count: int | None = None) -> list[Any]:
            with self._lock:
                stop = end if count is None else min(end, unread[0] + count)
                try:
                    self._read_up_to(stop)
                except BaseException:
                    unread[0] = end
                    raise
                out = [self._kept.pop(i, _LOST) for i in range(unread[0], stop)]
                unread[0] = stop
            if _LOST in out:
                import redis

                raise redis.ConnectionError("connection lost before the replies were read")
            return out

        return replies

    def _read_up_to(self, stop: int) -> None:
        """Read replies off the connection until the one before index ``stop``."""
        import redis

        while self._read < stop:
            try:
                reply = self._connection.read_response()
            except redis.ResponseError as exc:  # the next reply is still there to read
                reply = exc
            except BaseException:
                self._drop()
                raise
            self._kept[self._read] = reply
            self._read += 1
        if self._connection is not None and self._read == self._written:
            self._pool.release(self._connection)
            self._connection = None

    def _take(self) -> Any:
        """The connection to write on: the pool's (which checks one it kept idle), or the one
        this pipe holds, its replies unread; held across IDLE_CHECK_S without a write, that
        one is checked for a close by the server first, as the pool checks its own, and one
        that reached a replica is given up for a new one."""
        held = self._connection
        held_idle = held is not None and time.monotonic() - self._written_at >= drivers.IDLE_CHECK_S
        if held_idle or on_a_replica(held):
            # Unread replies look like a closed socket's end: read them for their readers
            # first (they came before any close), which hands the connection back (and
            # closes one that reached a replica: the write goes to a new connection).
            with contextlib.suppress(Exception):  # if it is lost, so are they, and readers hear
                self._read_up_to(self._written)
        if self._connection is None:
            self._connection = _connected(self._pool, check_closed=held_idle)
        return self._connection

    def forget_parents(self) -> None:
        """In a forked child: the parent's connection, and the replies on it, are the
        parent's."""
        self._lock = threading.Lock()
        self._connection, self._read = None, self._written

    def _drop(self) -> None:
        """Close the connection; the replies still on it are lost."""
        connection, self._connection, self._read = self._connection, None, self._written
        if connection is not None:
            connection.disconnect()
            self._pool.release(connection)


_LOST = object()  # a reply that was on a connection dropped before it was read


def _connected(pool: Any, *, check_closed: bool) -> Any:
    """A connection of ``pool``, connected now (after a check for a close by the server,
    where ``check_closed``), and PINGed where it sat idle past ``redis.max_idle_timeout``
    (a half-open one gets no answer), so that a failure of either is told from a failure to
    write: it sent nothing (drivers.Unsent)."""
    connection = None
    try:
        connection = pool.get_connection()
        if check_closed:
            connected_again_if_closed(connection)
        if getattr(connection, "_sock", None) is None:  # not connected yet, or no longer
            connection.connect()
        connection.check_health()
    except _transient() as exc:
        if connection is not None:
            pool.release(connection)
        raise drivers.Unsent from exc
    return connection


def execute(client: Any, commands: Sequence[Sequence[Any]]) -> list[Any]:
    """``commands`` written in one go on a connection of ``client``'s pool, and their
    replies, not parsed further (as redis-py does for EVAL); the first error reply is
    raised (ResponseError: the connection stays usable).

    redis-py's ``execute_command`` and pipelines without the layers that cost a worker
    most: packing each argument in Python (hiredis packs a whole command), the retry
    wrapper (taskd's retries are off) and its observability hooks."""
    replies = send_packed(client, commands)()
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def command(client: Any, args: tuple[Any, ...]) -> Any:
    """One command and its reply (``execute``)."""
    return execute(client, [args])[0]


def _packed(connection: Any, commands: Sequence[Sequence[Any]]) -> list[bytes]:
    """``commands`` in Redis's protocol, to be written with one system call: by hiredis in
    one call each where it is installed (redis-py packs each argument in Python)."""
    pack = _hiredis_packer()
    if pack is None:
        return connection.pack_commands(commands)
    return [b"".join([pack(tuple(command)) for command in commands])]


@functools.cache  # looked up once
def _hiredis_packer() -> Callable[[tuple[Any, ...]], bytes] | None:
    """hiredis's ``pack_command`` (a dependency of taskd); None without it."""
    try:
        from hiredis import pack_command
    except ImportError:
        return None
    return pack_command
