"""What machinery's own AMQP result backend reads, kept up by taskd's AMQP backend.

machinery keeps a queue per task, named by its id and bound to ``amqp.exchange`` by it, and
reads a state by consuming one message (its producer declares the queue when it records
PENDING). taskd's records stay its own (``taskd.backends.amqp``); ``copy_states`` publishes
each state after PENDING to that exchange with the task id as routing key, which reaches such
a queue where a machinery program declared one, and comes back unroutable elsewhere. A task
whose copy reached a queue is watched: ``follow_readers`` declares the queues of what it sets
off (its chain's next link, its chord's callback) before they are sent, as machinery's
workers do, since its reader declares them only when it gets to them, maybe after they ran.

machinery's backend also stores no group metadata (its InitGroup does nothing): each member's
final state goes to a queue named by the group id, bound the same way, and the group is done
once that queue holds as many states as the group has members. ``gather`` takes part in that
for a chord whose group has no metadata here (a Go producer's), with two guards machinery
lacks: a member counts once however often it published (one delivered again publishes
again), and the claimant and the states it gathered are recorded
(``<exchange>.chord.<group id>.gathered``) before they leave the queue, so a claimant that dies
before sending the callback sends it when its task is delivered again. Members take turns on
an exclusive queue (``amqp_board.locked``), so the last of them sees every state, and read the
group's queue with basic.get, which, unlike a consumer, does not set off its auto-delete.

Both need a direct exchange, the one type that routes by id.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from taskd.amqplink import NOT_FOUND
from taskd.backends.amqp_board import locked
from taskd.backends.amqp_chord import claim_queue, gathered_queue
from taskd.backends.amqp_records import RecordSession, Write
from taskd.backends.base import SPENT_CLAIM, claim_covers
from taskd.errors import BackendError, BackendUnavailable, DecodeError
from taskd.wire import TaskState, decode_state

if TYPE_CHECKING:
    from taskd.backends.amqp import AMQPBackend

WATCHED_LIMIT = 4096  # tasks known to have a machinery reader, newest kept


def copy_states(
    backend: AMQPBackend, session: RecordSession, states: Sequence[tuple[str, bytes]]
) -> None:
    """Each (task id, encoded state), none PENDING, to machinery's readers. A state nobody
    declared a queue for comes back unroutable and is dropped; one that reached a queue
    marks its task as watched, for ``follow_readers``."""
    import pika.exceptions

    if not backend._machinery_exchange or not states:
        return
    try:
        _publish_copies(backend, session, states)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != NOT_FOUND:
            raise
        session.exchange_declared = False  # deleted since it was declared: declared again
        _publish_copies(backend, session, states)


def _publish_copies(
    backend: AMQPBackend, session: RecordSession, states: Sequence[tuple[str, bytes]]
) -> None:
    import pika.exceptions

    channel = _channel(backend, session)
    for task_id, body in states:
        try:
            channel.basic_publish(
                backend._machinery_exchange, task_id, body, backend._properties, mandatory=True
            )
        except pika.exceptions.UnroutableError:
            continue
        _watch(backend, task_id)


def declare_queues(backend: AMQPBackend, session: RecordSession, task_ids: Sequence[str]) -> None:
    """For the follow-ups of a watched task (``ResultBackend.follow_readers``): each task's
    queue declared now, as machinery's SendTask declares it, so that states written before
    its reader's first look wait there instead of being dropped; each task watched in turn."""
    for task_id in task_ids:
        _declared(backend, session, task_id)
        _watch(backend, task_id)


def _watch(backend: AMQPBackend, task_id: str) -> None:
    """Mark a task as read by a machinery program; the oldest mark goes past WATCHED_LIMIT."""
    watched = backend._machinery_watched
    watched[task_id] = None
    if len(watched) > WATCHED_LIMIT:
        del watched[next(iter(watched))]


def gather(
    backend: AMQPBackend, group_id: str, task_count: int, finished: TaskState, claimant: str
) -> list[TaskState] | None:
    """``ResultBackend.gather_group``: machinery's protocol, as the module says."""
    if not backend._machinery_exchange or task_count < 1:  # nothing to count it against
        raise BackendError(backend.driver, "group metadata is missing or expired", group_id)
    claimed = gathered_queue(backend, group_id)
    with locked(backend, claimed + ".lock", group_id) as session:
        raw = backend._read([claimed], group_id)[claimed]
        if isinstance(raw, bytes):  # the chord was claimed: by this claimant, delivered again?
            recorded = orjson.loads(raw)
            if not claim_covers(recorded["claimant"], claimant) or _fired(backend, group_id):
                return None
            return [decode_state(text) for text in recorded["states"]]

        def step(current: RecordSession) -> list[TaskState] | None:
            if current is not session:  # reconnected: the lock went with the old connection
                raise BackendUnavailable(
                    backend.driver, "connection lost holding the lock", group_id
                )
            return _count_and_gather(
                backend, current, group_id, task_count, finished, claimant, claimed
            )

        return backend._call(step, group_id)


def _fired(backend: AMQPBackend, group_id: str) -> bool:
    """Whether the claimant's callback went out (``ResultBackend.chord_fired``)."""
    spent = claim_queue(backend, group_id)
    return backend._read([spent], group_id)[spent] == SPENT_CLAIM.encode()


def _count_and_gather(
    backend: AMQPBackend,
    session: RecordSession,
    group_id: str,
    task_count: int,
    finished: TaskState,
    claimant: str,
    claimed: str,
) -> list[TaskState] | None:
    """Count ``finished`` in the group's queue; where the group is then done, record the
    claim in ``claimed`` and take the states out of the queue: the states."""
    channel = _declared(backend, session, group_id)
    exchange, state = backend._machinery_exchange, finished.encode()
    channel.basic_publish(exchange, group_id, state, backend._properties, mandatory=True)
    count = channel.queue_declare(group_id, passive=True).method.message_count
    if count < task_count:
        return None
    reader = session.connection.channel()  # closing it hands back whatever it did not ack
    try:
        last_tag, states = 0, {}
        for _ in range(count):
            method, _properties, body = reader.basic_get(group_id, auto_ack=False)
            if method is None:
                break
            last_tag = method.delivery_tag
            try:
                member = decode_state(body)
            except DecodeError:
                continue  # not a state: not counted
            states.setdefault(member.task_uuid, member)
        if len(states) < task_count:
            return None  # a member counted twice: the missing one gathers when it ends
        gathered = list(states.values())
        texts = [member.encode().decode() for member in gathered]
        claim = orjson.dumps({"claimant": claimant, "states": texts})
        backend._put(session, Write(claimed, claim, backend._record_arguments, True))
        reader.basic_ack(last_tag, multiple=True)  # claimed first: a death between is safe
        return gathered
    finally:
        reader.close()


def _channel(backend: AMQPBackend, session: RecordSession) -> Any:
    """The session's confirmed channel, the exchange declared on its connection."""
    channel = session.writing()
    if not session.exchange_declared:
        channel.exchange_declare(backend._machinery_exchange, "direct", durable=True)
        session.exchange_declared = True
    return channel


def _declared(backend: AMQPBackend, session: RecordSession, queue: str) -> Any:
    """A channel, and machinery's queue for a task or group there: declared and bound as
    machinery declares it, unless it exists (as a machinery program declared it)."""
    import pika.exceptions

    channel = _channel(backend, session)
    try:
        channel.queue_declare(queue, passive=True)
        return channel
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != NOT_FOUND:
            raise
    channel = _channel(backend, session)  # the 404 closed the last one
    arguments = backend._expiring_arguments
    channel.queue_declare(queue, durable=False, auto_delete=True, arguments=arguments)
    channel.queue_bind(queue, backend._machinery_exchange, routing_key=queue)
    return channel
