"""redis-py connection pools as taskd uses them: one that makes callers wait while it is full
(``redis.wait``), or one that keeps a connection given back for the next caller, checked
for a close by the server once it has sat idle.
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
    import redis

    if not waits:
        return _reusing_pool_class(base)
    if base is redis.ConnectionPool:
        return redis.BlockingConnectionPool
    return _blocking_pool_class(base)


@functools.cache
def _blocking_pool_class(base: type) -> type:
    """A pool of ``base``'s kind (Sentinel's, which has no blocking variant) that makes a
    caller wait while it is full, as redis-py's BlockingConnectionPool does."""
    import redis

    return type(f"Blocking{base.__name__}", (base, redis.BlockingConnectionPool), {})


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
            # One dropped after an error goes back: the pool's get_connection connects it
            # again, to the master Sentinels name now (no Connection property says so in
            # every redis-py release taskd takes).
            connected = getattr(connection, "_sock", None) is not None
            if len(self._kept) < self.KEEP and connected:
                self._kept.append((connection, time.monotonic()))
            else:
                super().release(connection)

    return ReusingPool


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
