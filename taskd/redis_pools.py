"""redis-py connection pools as taskd uses them: one that makes callers wait while it is full
(``redis.wait``), or one that keeps a connection given back for the next caller, checked
for a close by the server once it has sat idle.

Either drops its connections once one finds a replica where the master was (``release``):
after a failover that moved the master's address (a virtual IP, a DNS name, a managed
service's endpoint), connections made before it still reach the old master, now a replica,
which refuses every write for as long as they stay open (Redis closes only its blocked
clients as it is demoted). Sentinel's connections see to that themselves.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from taskd import forking
from taskd.drivers import IDLE_CHECK_S


def pool_class(base: type, waits: bool) -> type:
    """``base``, made to block callers while it is full (redis.wait), or else to keep a
    connection given back for the next caller."""
    if not waits:
        return _reusing_pool_class(base)
    return _blocking_pool_class(base)


@functools.cache
def _blocking_pool_class(base: type) -> type:
    """A pool of ``base``'s kind that makes a caller wait while it is full: redis-py's
    BlockingConnectionPool, or one made of it and Sentinel's, which has no blocking variant."""
    import redis

    parents = () if base is redis.ConnectionPool else (base,)  # (Blocking...'s own base)

    class BlockingPool(*parents, redis.BlockingConnectionPool):  # type: ignore[misc]
        def release(self, connection: Any) -> None:
            _dropped_if_on_a_replica(self, connection)
            super().release(connection)

    BlockingPool.__name__ = f"Blocking{base.__name__}"
    return BlockingPool


@functools.cache  # made once per base, on first use (redis-py is imported lazily)
def _reusing_pool_class(base: type) -> type:
    """A redis-py pool (``base``), with the connection a caller gives back kept for the next.

    redis-py's get and release cost several microseconds each (a lock, a poll for stray
    data, observability counters), and the worker and the client take one per command.
    Each caller takes a kept connection first, so one is kept only while nobody needs it:
    a bounded pool (``redis.max_active``) never fails a caller for them. Not for a pool
    that makes callers wait (``redis.wait``): a waiter is woken by a release to the pool
    only. In a forked child the parent's kept connections are left alone.
    """

    class ReusingPool(base):  # type: ignore[misc,valid-type]
        KEEP = 4  # connections kept at most; more go back to the pool

        def reset(self) -> None:
            super().reset()
            self._kept: list[tuple[Any, float]] = []  # (connection, kept since)
            forking.forget_in_children(self)

        def forget_parents(self) -> None:
            self._kept = []  # the parent's: left alone, not closed

        def get_connection(self, *args: Any, **kwargs: Any) -> Any:
            try:
                connection, kept_since = self._kept.pop()
            except IndexError:  # none kept (or another thread took the last first)
                return super().get_connection(*args, **kwargs)
            if time.monotonic() - kept_since >= IDLE_CHECK_S:
                connected_again_if_closed(connection)
            return connection

        def release(self, connection: Any) -> None:
            _dropped_if_on_a_replica(self, connection)
            # One dropped after an error goes back: the pool's get_connection connects it
            # again, to the master Sentinels name now (no Connection property says so in
            # every redis-py release taskd takes).
            connected = getattr(connection, "_sock", None) is not None
            if len(self._kept) < self.KEEP and connected:
                self._kept.append((connection, time.monotonic()))
            else:
                super().release(connection)

        def disconnect(self, inuse_connections: bool = True) -> None:
            for connection, _ in list(self._kept):  # idle, though taken from the pool
                connection.disconnect()
            super().disconnect(inuse_connections)

    return ReusingPool


@functools.cache
def master_connection_class(base: type) -> type:
    """A redis-py connection class (``base``) whose connection remembers that its server
    answered as a replica does (READONLY, MASTERDOWN), for its pool to drop it when it is
    given back (``_dropped_if_on_a_replica``), once every reply on it has been read; and
    that closes itself on a protocol error, after which Redis closes it (a command longer
    than its proto-max-bulk-len): else the next command on it, another caller's, fails."""
    from redis.exceptions import MasterDownError, ReadOnlyError, ResponseError

    class MasterConnection(base):  # type: ignore[misc,valid-type]
        reached_a_replica = False

        def disconnect(self, *args: Any, **kwargs: Any) -> None:
            self.reached_a_replica = False  # it connects anew, wherever the address leads
            super().disconnect(*args, **kwargs)

        def read_response(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return super().read_response(*args, **kwargs)
            except (ReadOnlyError, MasterDownError):
                self.reached_a_replica = True
                raise
            except ResponseError as exc:
                if str(exc).startswith("Protocol error"):
                    self.disconnect()
                raise

    MasterConnection.__name__ = f"Master{base.__name__}"
    return MasterConnection


def on_a_replica(connection: Any) -> bool:
    """Whether the connection's server answered as a replica (``master_connection_class``;
    never for Sentinel's, which drop themselves)."""
    return getattr(connection, "reached_a_replica", False)


def _dropped_if_on_a_replica(pool: Any, connection: Any) -> None:
    """A connection given back that reached a replica is closed, with the pool's idle ones
    (made to the same address, they reach the same server): the next command connects
    anew, to wherever the master's address leads now. Nothing is lost: its replies were
    read, and the writes refused there did not run."""
    if on_a_replica(connection):
        connection.disconnect()
        pool.disconnect(inuse_connections=False)


def connected_again_if_closed(connection: Any) -> None:
    """Disconnect a kept connection the server closed while it sat idle (Redis's ``timeout``,
    a proxy's or load balancer's idle limit), so the next command connects anew instead of
    failing: nothing was written on it since, so nothing runs twice. The check redis-py's
    pool makes on every checkout (readable while idle: closed, or stray data), made here only
    after ``drivers.IDLE_CHECK_S``, off the hot path."""
    import redis

    try:
        closed = connection.can_read(timeout=0)
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        closed = True
    if closed:
        connection.disconnect()  # redis-py connects again on the next command
