"""What a broker and a result backend do together, in as few round trips as the pair allows.

Sending (``sender_for``): storing PENDING states and publishing the messages. A send
returns the confirm still to be awaited (``taskd.confirms``): the Redis pair's replies, read
later; the SQLite pair's sync to disk, under way meanwhile; other pairs wait for their own
confirms before returning where the broker cannot split them.

- Any pair: the backend starts its PENDING write (``ResultBackend.begin_pending``), the
  broker publishes (``Broker.begin_publish``), and the send's confirm completes both: the
  backend's reply and the broker's confirm are awaited later where the drivers can split a
  write from its reply.
- The Redis broker with Redis results on the same server: the SETs and the RPUSH (or ZADD)
  are packed into one write on one connection, one round trip for both; the SETs first, so a
  fast worker's later state is never overwritten by a late PENDING. Consecutive sends share
  that connection (``redisdb.Pipe``), so their replies can be read in one go. The daemon's
  own sends (``follow_ups``) run the same commands as one script, which a full Redis runs
  too: each takes the place of the message it follows (``_run_when_full``).
- The embedded broker with results in the same SQLite file: one transaction for both, so one
  commit per send instead of two, synced to disk in groups (``sqlite_writer``).

Settling (``settler_for``), in a worker: storing final states, then acking their messages.
With the embedded broker and results in one SQLite file, one transaction does both (not
waited for on disk: a power cut loses the states with their acks, so the tasks run again).
The Redis broker with Redis results on the same server: one script stores the states, then
acks (``SETTLE``), one round trip. Other pairs write the states, then ack (two round trips:
a state is never acked before it is stored, and only one transaction can promise both).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from taskd import redisdb
from taskd.backends import ResultBackend
from taskd.backends.redis import RedisBackend, unconfirmed
from taskd.backends.sqlite import SQLiteBackend
from taskd.brokers import Broker, Delivery, Message
from taskd.brokers.redis import RedisBroker
from taskd.brokers.sqlite import SQLiteBroker
from taskd.confirms import Confirm
from taskd.errors import BackendUnavailable
from taskd.redis_scripts import Script, run_when_full
from taskd.wire import TaskState

# (messages, their PENDING states, fresh ids) -> the confirm still to be awaited
Send = Callable[[Sequence[Message], Sequence[TaskState], bool], Confirm]


def sender_for(broker: Broker, backend: ResultBackend, follow_ups: bool = False) -> Send:
    """The way to send through this pair of drivers; ``follow_ups``: the daemon's own sends,
    which take the place of the messages they follow (what a task sets off)."""
    redis = _one_redis_server(broker, backend)
    if redis is not None:
        write = _run_when_full(broker.redis) if follow_ups else redisdb.Pipe(broker.redis).write
        return lambda messages, pending, fresh: _packed(write, *redis, messages, pending, fresh)
    sqlite = _one_sqlite_file(broker, backend)
    if sqlite is not None:

        def one_transaction(
            messages: Sequence[Message], pending: Sequence[TaskState], _fresh: bool
        ) -> Confirm:
            return sqlite[0].begin_publish(messages, also=sqlite[1].writing(pending))

        return one_transaction
    return lambda messages, pending, fresh: _overlapped(broker, backend, messages, pending, fresh)


def _one_sqlite_file(
    broker: Broker, backend: ResultBackend
) -> tuple[SQLiteBroker, SQLiteBackend] | None:
    """The embedded broker and result backend, where they share one file."""
    if (
        isinstance(broker, SQLiteBroker)
        and isinstance(backend, SQLiteBackend)
        and broker.path.resolve() == backend.path.resolve()
    ):
        return broker, backend
    return None


def _one_redis_server(
    broker: Broker, backend: ResultBackend
) -> tuple[RedisBroker, RedisBackend] | None:
    """The Redis broker and result backend, where they share one server and database."""
    if (
        isinstance(broker, RedisBroker)
        and isinstance(backend, RedisBackend)
        and redisdb.same_server(broker.redis, backend.redis)
    ):
        return broker, backend
    return None


def _overlapped(
    broker: Broker,
    backend: ResultBackend,
    messages: Sequence[Message],
    pending: Sequence[TaskState],
    fresh: bool,
) -> Confirm:
    try:
        complete = backend.begin_pending(pending, fresh=fresh)
    except BackendUnavailable as exc:
        exc.unsent = True  # the messages are not published: the send may be made again
        raise
    try:
        confirm = broker.begin_publish(messages)
    except BaseException:
        complete()
        raise

    def both() -> None:  # taken in with the send's confirm, not a round trip per send now
        try:
            complete()
        finally:
            confirm()

    return both


def _packed(
    write: Callable[[list[tuple]], Callable[[], list[Any]]],
    broker: RedisBroker,
    backend: RedisBackend,
    messages: Sequence[Message],
    pending: Sequence[TaskState],
    fresh: bool,
) -> Confirm:
    """The SETs and the publish in one ``write``, which returns the function that reads
    their replies (a Pipe's, or ``_run_when_full``'s)."""
    sets = backend.pending_commands(pending, fresh=fresh)
    queue = messages[0].queue
    with broker.translated(queue):
        replies = write([*sets, *broker.publish_commands(messages)])

    def confirm() -> None:
        with broker.translated(queue):
            answers = replies()
        broker.raise_first(answers[len(sets) :], queue)
        unconfirmed(pending, answers[: len(sets)])

    return confirm


def _run_when_full(client: Any) -> Callable[[list[tuple]], Callable[[], list[Any]]]:
    """The daemon's own sends' write: one script, which runs on a full Redis too, its
    replies read at once. What a task sets off takes the place of its message, acked next,
    so a full Redis still drains (``redis_scripts.RUNS_WHEN_FULL``)."""

    def write(commands: list[tuple]) -> Callable[[], list[Any]]:
        answers = run_when_full(client, commands)
        return lambda: answers

    return write


Settle = Callable[[Sequence[TaskState], Sequence[Delivery]], None]  # (states, then their acks)


def settler_for(broker: Broker, backend: ResultBackend) -> Settle | None:
    """One call that stores states and acks their messages together; None where the pair
    has none (the caller writes the states, then acks)."""
    sqlite = _one_sqlite_file(broker, backend)
    if sqlite is not None:
        return lambda states, deliveries: sqlite[0].ack_many(
            deliveries, also=sqlite[1].writing(states)
        )
    redis = _one_redis_server(broker, backend)
    if redis is not None:
        return lambda states, deliveries: _settle_redis(*redis, states, deliveries)
    return None


# The states, then the acks, in one script: never pipelined as two, where the acks would
# still run if the states' script failed (NOSCRIPT after a restart, an error reply).
SETTLE = Script.packaged(
    "set_states.lua",
    "ack.lua",
    call="local n = #KEYS - 2\nset_states(n, KEYS, ARGV)\n"
    "return ack(KEYS[n + 1], KEYS[n + 2], ARGV, n + 5)",
)


def _settle_redis(
    broker: RedisBroker,
    backend: RedisBackend,
    states: Sequence[TaskState],
    deliveries: Sequence[Delivery],
) -> None:
    """One EVALSHA for the Redis pair on one server: the states (as ``set_states``), then
    the acks (as ``ack_many``). Messages from several processing lists (not a worker's
    case) are settled in two steps instead."""
    acks = broker.ack_arguments(deliveries)
    if len(acks) != 1:
        backend.set_states(states)
        broker.ack_many(deliveries)
        return
    ((ack_keys, bodies),) = acks
    state_keys, state_args = backend.state_arguments(states)
    with broker.translated(deliveries[0].queue):
        SETTLE(broker.redis, [*state_keys, *ack_keys], [*state_args, *bodies])
    broker.settled(deliveries)
