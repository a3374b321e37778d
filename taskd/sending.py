"""How a sender stores PENDING states and publishes messages, by driver pair.

Any pair: the backend starts its PENDING write (``ResultBackend.begin_pending``), the broker
publishes, then the write is completed: two round trips that overlap where the backend can
split a write. The Redis broker with Redis results on the same server: the SETs and the
RPUSH (or ZADD) are packed into one write on one connection, one round trip for both; the
SETs first, so a fast worker's later state is never overwritten by a late PENDING.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from taskd import redisdb
from taskd.backends import ResultBackend
from taskd.backends.redis import RedisBackend, unconfirmed
from taskd.brokers import Broker, Message
from taskd.brokers.redis import RedisBroker
from taskd.wire import TaskState

Send = Callable[[Sequence[Message], Sequence[TaskState], bool], None]  # (messages, PENDING, fresh)


def sender_for(broker: Broker, backend: ResultBackend) -> Send:
    """The way to send through this pair of drivers."""
    if (
        isinstance(broker, RedisBroker)
        and isinstance(backend, RedisBackend)
        and redisdb.same_server(broker.redis, backend.redis)
    ):
        return lambda messages, pending, fresh: _packed(broker, backend, messages, pending, fresh)
    return lambda messages, pending, fresh: _overlapped(broker, backend, messages, pending, fresh)


def _overlapped(
    broker: Broker,
    backend: ResultBackend,
    messages: Sequence[Message],
    pending: Sequence[TaskState],
    fresh: bool,
) -> None:
    complete = backend.begin_pending(pending, fresh=fresh)
    try:
        broker.publish_many(messages)
    finally:
        complete()


def _packed(
    broker: RedisBroker,
    backend: RedisBackend,
    messages: Sequence[Message],
    pending: Sequence[TaskState],
    fresh: bool,
) -> None:
    sets = backend.pending_commands(pending, fresh=fresh)
    queue = messages[0].queue
    with broker.translated(queue):
        replies = redisdb.send_packed(broker.redis, [*sets, *broker.publish_commands(messages)])()
    broker.raise_first(replies[len(sets) :], queue)
    unconfirmed(pending, replies[: len(sets)])
