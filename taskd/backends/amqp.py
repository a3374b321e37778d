"""The AMQP (RabbitMQ) result backend: every record is a queue holding its newest message.

Not machinery's layout: machinery keeps a queue per task and *consumes* states to read them,
so two reads of a task give different answers. Correctness wins over compatibility here;
machinery's readers get copies of the states, and Go producers' chords (whose groups
machinery's backend keeps no metadata for) fire, through ``taskd.backends.amqp_machinery``.

- A record (``<exchange>.state.<task id>``, ``<exchange>.group.<group id>``) is a durable
  queue declared with ``x-max-length: 1`` and ``x-overflow: drop-head``, so a publish
  replaces the old message atomically; ``x-message-ttl`` keeps a message ``results_expire_in``
  after its write, and ``x-expires`` removes a queue nobody has used for as long.
- Writes go through the default exchange, persistent and mandatory, on a channel in confirm
  mode: a write has returned only once RabbitMQ holds it.
- A read takes the message unacked and hands it back at once (``basic.nack``, requeue). While
  one reader holds it, the queue looks empty to others, so a read that finds an existing queue
  empty waits as a consumer: RabbitMQ hands a requeued message to waiting consumers before
  any ``basic.get``, so busy readers take turns instead of missing it. A message handed back
  after a newer one was written is dropped by drop-head (RabbitMQ applies the length limit
  on requeue too), but while every newer one is held elsewhere a third reader can get the
  older one: reads racing a write and other reads may see the previous state for a moment.
- Chords: a token per group, which one claimant takes (``taskd.backends.amqp_chord``).
- Boards: a record ``<exchange>.board.<name>`` holding the whole board, which writers
  rewrite one at a time (``taskd.backends.amqp_board``).
"""

from __future__ import annotations

import functools
import queue as queues
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Self, TypeVar

from taskd.amqplink import (
    NOT_FOUND,
    PRECONDITION_FAILED,
    Link,
    connection_parameters,
    refused_at_check,
)
from taskd.backends import amqp_board, amqp_chord, amqp_machinery
from taskd.backends.amqp_records import (
    Inbox,
    RecordSession,
    Seen,
    Write,
    deliver,
    get_unacked,
)
from taskd.backends.base import Entry, ResultBackend
from taskd.config import Config
from taskd.errors import BackendError, BackendUnavailable
from taskd.wire import GroupMeta, State, TaskState
from taskd.wire.state import merged

T = TypeVar("T")
HELD_WAIT_S = 1.0  # longest wait for a record others hold; one still empty has expired


class AMQPBackend(ResultBackend):
    driver = "amqp"

    def __init__(self, url: str, config: Config) -> None:
        self._link = Link(
            connection_parameters(url, config, "result_backend"),
            RecordSession,
            BackendUnavailable,
            self.driver,
        )
        import pika  # present: connection_parameters said so

        self._properties = pika.BasicProperties(content_type="application/json", delivery_mode=2)
        self._prefix = config.amqp.exchange
        expire_ms = config.results_expire_in_s * 1000
        self._record_arguments: dict[str, int | str] = {
            "x-max-length": 1,
            "x-overflow": "drop-head",
            "x-message-ttl": expire_ms,
            "x-expires": expire_ms,
        }
        # No length limit for the token: one held unacked would not count; init_group purges.
        self._token_arguments: dict[str, int | str] = {"x-expires": expire_ms}
        # No message TTL for a board: each entry has its own expiry.
        self._board_arguments = {
            name: value for name, value in self._record_arguments.items() if name != "x-message-ttl"
        }
        self._posting = threading.Lock()  # one lock holder at a time (amqp_board.locked)
        # machinery's own queues (amqp_machinery): routed by id, so on a direct exchange only
        direct = config.amqp.exchange_type == "direct"
        self._machinery_exchange = config.amqp.exchange if direct else ""
        # Queues of many messages, each kept results_expire_in: machinery's own, chord counts.
        self._expiring_arguments = {"x-message-ttl": expire_ms, "x-expires": expire_ms}
        self._machinery_watched: dict[str, None] = {}  # tasks machinery programs read, oldest first
        self._source = config.source

    @classmethod
    def from_config(cls, url: str, config: Config) -> Self:
        return cls(url, config)

    def check(self, *, writes: bool = True, serves: bool = False) -> None:
        """Declare and delete a record's queue, as each task's result needs: RabbitMQ's
        refusal (a user without the permission to configure queues) is a ConfigError naming
        result_backend at start, not an error at every task. Unreachable: no error. (Its
        writes, through the default exchange, are not tried: a publish waits out a resource
        alarm, and would hold the start.)"""
        name = self._name("state", f"taskd-check-{secrets.token_hex(4)}")

        def declare_and_delete(session: RecordSession) -> None:
            self._declare(session, name, self._record_arguments)
            session.writing().queue_delete(name)

        try:
            self._call(declare_and_delete, name)
        except BackendError as exc:
            if isinstance(exc, BackendUnavailable):
                raise
            raise refused_at_check(exc, "result_backend", "result_backend", self._source) from None

    def _name(self, kind: str, record_id: str) -> str:
        return f"{self._prefix}.{kind}.{record_id}"

    def _call(self, fn: Callable[[RecordSession], T], about: str) -> T:
        """``fn(session)`` holding the connection; RabbitMQ's refusals as BackendError."""
        import pika.exceptions

        try:
            return self._link.call(fn)
        except pika.exceptions.AMQPChannelError as exc:  # includes Unroutable and Nack
            raise BackendError(self.driver, f"{type(exc).__name__}: {exc}", about) from exc

    # -- records --------------------------------------------------------------------------

    def _peek(self, session: RecordSession, queue: str) -> bytes | Seen:
        channel = session.reading()
        got = get_unacked(channel, queue)
        if isinstance(got, Seen):
            return got
        tag, body = got
        channel.basic_nack(tag, requeue=True)
        return body

    def _read(self, names: Sequence[str], about: str) -> dict[str, bytes | Seen]:
        """Each queue's message (one look, then a wait for those other readers hold)."""
        names = list(dict.fromkeys(names))
        if not names:
            return {}
        peeked = self._call(lambda session: [self._peek(session, n) for n in names], about)
        found = dict(zip(names, peeked, strict=True))
        held = [name for name in names if found[name] is Seen.HIDDEN]
        if held:
            found.update(self._wait_for(held, about))
        return found

    def _wait_for(self, names: Sequence[str], about: str) -> dict[str, bytes | Seen]:
        """Consume each queue (prefetch 1, on a channel of its own) until its message comes
        back from whoever holds it; closing the channels hands every message back."""
        import pika.exceptions

        inbox: Inbox = queues.SimpleQueue()
        channels: list[Any] = []

        def watch(session: RecordSession) -> None:
            for name in names:
                channels.append(session.connection.channel())
                channels[-1].basic_qos(prefetch_count=1)
                on_message = functools.partial(deliver, inbox, name)
                try:
                    channels[-1].basic_consume(name, on_message, auto_ack=False)
                except pika.exceptions.ChannelClosedByBroker as exc:
                    if exc.reply_code != NOT_FOUND:
                        raise
                    inbox.put((name, Seen.NOTHING))  # deleted since the first look

        def close_all(_session: RecordSession) -> None:
            for channel in channels:  # a consumer left open would hold its record for good
                if channel.is_open:
                    channel.close()

        found: dict[str, bytes | Seen] = {}
        deadline = time.monotonic() + HELD_WAIT_S
        try:
            self._call(watch, about)
            while len(found) < len(names):
                try:
                    name, seen = inbox.get_nowait()
                except queues.Empty:
                    left_s = deadline - time.monotonic()
                    if left_s <= 0:
                        break  # still empty: the message expired
                    self._link.wait(left_s)  # deliveries reach ``watch``'s consumers here
                    continue
                found[name] = seen
        finally:
            self._call(close_all, about)
        # Still empty after the wait: its message expired, or a reader holds it for long.
        return {name: found.get(name, Seen.HIDDEN) for name in names}

    def _declare(self, session: RecordSession, queue: str, arguments: dict[str, int | str]) -> None:
        """Declare (which renews x-expires); a queue left with other arguments by an earlier
        ``results_expire_in`` is replaced, as its record is about to be."""
        import pika.exceptions

        try:
            session.writing().queue_declare(queue, durable=True, arguments=arguments)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != PRECONDITION_FAILED:
                raise
            channel = session.writing()
            channel.queue_delete(queue)
            channel.queue_declare(queue, durable=True, arguments=arguments)

    def _put(self, session: RecordSession, write: Write) -> None:
        import pika.exceptions

        if write.declare:
            self._declare(session, write.queue, write.arguments)
        try:
            session.writing().basic_publish(
                "", write.queue, write.body, self._properties, mandatory=True
            )
        except pika.exceptions.UnroutableError:
            if write.declare:
                raise
            # Purged since it was read: declare it and write again.
            self._put(session, replace(write, declare=True))

    def _put_all(self, session: RecordSession, writes: Sequence[Write]) -> None:
        for write in writes:  # each confirmed before the next
            self._put(session, write)

    # -- states ---------------------------------------------------------------------------

    def set_states(self, states: Sequence[TaskState]) -> None:
        if not states:
            return
        about = states[0].task_uuid
        later = [self._name("state", s.task_uuid) for s in states if s.state is not State.PENDING]
        # Where a read found the queue, its basic.get renewed x-expires: no declare needed.
        seen = {q: raw for q, raw in self._read(later, about).items() if raw is not Seen.NOTHING}
        newest: dict[str, TaskState] = {}  # per queue: what it holds after this batch
        for state in states:
            queue = self._name("state", state.task_uuid)
            stored = newest.get(queue)
            raw = seen.get(queue)
            if stored is None and isinstance(raw, bytes):
                stored = self._load_state(raw, state.task_uuid)
            newest[queue] = merged(state, stored)
        bodies = {queue: state.encode() for queue, state in newest.items()}
        writes = [Write(q, b, self._record_arguments, q not in seen) for q, b in bodies.items()]
        copies = [(s.task_uuid, bodies[q]) for q, s in newest.items() if s.state != State.PENDING]

        def store(session: RecordSession) -> None:
            self._put_all(session, writes)
            amqp_machinery.copy_states(self, session, copies)  # after the records

        self._call(store, about)

    def get_states(self, task_ids: Sequence[str]) -> list[TaskState | None]:
        if not task_ids:
            return []
        names = [self._name("state", task_id) for task_id in task_ids]
        seen = self._read(names, task_ids[0])
        raws = [seen[name] for name in names]
        return [
            self._load_state(raw, task_id) if isinstance(raw, bytes) else None
            for task_id, raw in zip(task_ids, raws, strict=True)
        ]

    def purge(self, task_id: str) -> None:
        queue = self._name("state", task_id)
        self._call(lambda session: session.writing().queue_delete(queue), task_id)

    # -- groups and chords ----------------------------------------------------------------

    def init_group(self, group: GroupMeta) -> None:
        group_id = group.group_uuid

        def store(session: RecordSession) -> None:
            group_queue = self._name("group", group_id)
            self._put(session, Write(group_queue, group.encode(), self._record_arguments, True))
            amqp_chord.place_token(self, session, group_id)

        self._call(store, group_id)

    def get_group(self, group_id: str) -> GroupMeta | None:
        queue = self._name("group", group_id)
        raw = self._read([queue], group_id)[queue]
        return self._load_group(raw, group_id) if isinstance(raw, bytes) else None

    def claim_chord(self, group_id: str, claimant: str) -> bool:
        return amqp_chord.claim(self, group_id, claimant)

    def chord_fired(self, group_id: str) -> None:
        amqp_chord.spend(self, group_id)

    def count_chord_member(self, group_id: str, task_id: str) -> int | None:
        return amqp_chord.count_member(self, group_id, task_id)

    def gather_group(
        self, group_id: str, task_count: int, finished: TaskState, claimant: str
    ) -> list[TaskState] | None:
        return amqp_machinery.gather(self, group_id, task_count, finished, claimant)

    def follow_readers(self, task_id: str, follow_ups: Sequence[str]) -> None:
        if task_id in self._machinery_watched:  # else no machinery program reads it
            declare = amqp_machinery.declare_queues
            self._call(lambda session: declare(self, session, follow_ups), task_id)

    # -- boards ---------------------------------------------------------------------------

    def post(self, board: str, entries: Mapping[str, Entry | None], ttl_s: float) -> None:
        amqp_board.post(self, board, entries, ttl_s)

    def read_board(self, board: str) -> dict[str, Entry]:
        return amqp_board.read(self, board)

    def close(self) -> None:
        self._link.close()
