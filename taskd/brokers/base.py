"""The broker interface: bytes in, bytes out, a handful of methods every driver implements.

Drivers never decode task bodies, know task names or decide retries; the worker does. Each
process opens its own driver (never share one across ``fork``).

How long a consumer may stay silent before the broker gives its messages to others is the
config's ``lease`` (``worker.heartbeat_interval`` and ``worker.consumer_timeout``); each driver
maps it onto what its broker has:

| driver | a consumer that stops answering loses its messages...                               |
| ------ | ----------------------------------------------------------------------------------- |
| sqlite | after ``consumer_timeout`` without a beat (a thread beats every heartbeat interval); |
|        | at once when its process is gone from this machine                                   |
| redis  | the same, with the beats in a sorted set on Redis's clock                            |
| sqs    | when its visibility timeout (``sqs.receive_visibility_timeout``, else               |
|        | ``consumer_timeout``) runs out; extended while the consumer holds the message        |
| amqp   | when RabbitMQ sees its connection drop: the AMQP heartbeat is half of               |
|        | ``consumer_timeout``, so a silent peer is given up within about that time            |
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from taskd import logs
from taskd.config import Config
from taskd.confirms import Confirm, confirmed
from taskd.errors import NotSupported
from taskd.wire import GoTime

log = logs.get_logger("taskd.broker")


@dataclass(frozen=True, slots=True)
class Delivery:
    """A message a consumer took; settle it with exactly one of ack, release or reject.

    ``deliveries`` counts this delivery and the earlier ones that did not end in an ack or a
    reject: the consumer died, or timed out, holding it. Where the driver's
    ``counts_releases`` is true, hand-backs by ``release`` are counted too, since the broker
    cannot tell them apart (see ``Broker.counts_releases``). A driver that only knows that a
    message was delivered before says 2.
    """

    queue: str
    body: bytes
    deliveries: int = 1
    handle: Any = None  # only the driver that made it reads this

    @property
    def redelivered(self) -> bool:
        return self.deliveries > 1


@dataclass(frozen=True, slots=True)
class Message:
    """A message to publish. ``priority`` is 0 (none) unless the driver supports_priority."""

    queue: str
    body: bytes
    eta: GoTime | None = None
    priority: int = 0
    headers: Mapping[str, Any] | None = None  # the signature's Headers (AMQP message headers)
    group: str = ""  # the signature's BrokerMessageGroupId (SQS FIFO queues' MessageGroupId)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message set aside by ``reject``, with why. ``id`` names it for ``requeue_dead`` and
    ``drop_dead``, and stays the same for as long as the message is kept."""

    queue: str
    body: bytes
    reason: str
    rejected_at: GoTime
    id: str


class DeadLetterCap:
    """How many dead letters a queue keeps and for how long (0: no limit); ``reject``
    drops the oldest beyond either. From ``worker.dead_letters_max`` and
    ``worker.dead_letters_max_age``.

    Those the count drops before their age let them go are lost for good, so an operator
    hears of it (``dropped``): the first time, then at most every ``LOG_EVERY_S`` per queue
    with the count since (a flood of poison messages drops one per message).
    """

    LOG_EVERY_S = 60.0

    def __init__(self, max_count: int, max_age_s: int) -> None:
        self.max_count, self.max_age_s = max_count, max_age_s
        self._unlogged: dict[str, int] = {}
        self._logged_at: dict[str, float] = {}

    @classmethod
    def of(cls, config: Config) -> DeadLetterCap:
        return cls(config.worker.dead_letters_max, config.worker.dead_letters_max_age)

    def dropped(self, queue: str, count: int) -> None:
        if count <= 0:
            return
        count += self._unlogged.pop(queue, 0)
        now = time.monotonic()
        if now - self._logged_at.get(queue, -self.LOG_EVERY_S) < self.LOG_EVERY_S:
            self._unlogged[queue] = count
            return
        self._logged_at[queue] = now
        log.warning(
            "dead_letters_dropped",
            queue=queue,
            count=count,
            kept=self.max_count,
            fix="see why messages are set aside (taskctl queue dead), or raise"
            " worker.dead_letters_max",
        )


@dataclass(frozen=True, slots=True)
class Holding:
    """Messages of a queue taken and not yet settled; None where the broker cannot tell."""

    in_flight: int | None  # held by live consumers
    orphaned: int | None  # held by consumers that died, until they are given back


def queue_setting(queue: str, default_queue: str) -> str:
    """The setting that named a queue a broker is asked to check: the config's default
    queue, or ``taskd start``'s ``--queue``."""
    return "default_queue" if queue == default_queue else "--queue"


class Broker(ABC):
    """A queue of task messages with at-least-once delivery.

    A taken message stays owned by its consumer until settled; when the consumer dies (or is
    silent past the lease), the driver delivers it again. A message with an ETA waits in the
    broker, not in a worker.

    The worker calls the batch forms (``publish_many``, ``ack_many``, ``release_many``); the
    single forms are derived from them.
    """

    driver: ClassVar[str]

    counts_releases: ClassVar[bool] = True
    """Whether a message handed back by ``release`` comes back with ``deliveries`` grown.

    False where the driver can tell a hand-back from a failed delivery: SQLite and Redis keep
    their own count, which a release does not touch. True where it cannot: SQS raises
    ApproximateReceiveCount on every receive, RabbitMQ quorum queues raise x-delivery-count on
    every requeue, and classic queues only set the redelivered flag. The worker hands back
    the rest of a batch before a slow task only where releases are not counted (elsewhere it
    fetches one message at a time while tasks are slow), and releases everywhere when it
    stops, where one more count is the price of not holding work back.
    """

    counts_deliveries: ClassVar[bool] = True
    """Whether ``deliveries`` counts every earlier delivery, so that worker.max_deliveries
    sets aside a message whose task kills its worker (not on RabbitMQ classic queues, which
    only flag a redelivery: ``deliveries`` is 2 at most there)."""

    releases_keep_order: ClassVar[bool] = True
    """Whether a released message goes back ahead of the rest of its queue, in order (not on
    RabbitMQ quorum queues, which requeue at the back)."""

    caps_dead_letters_by_count: ClassVar[bool] = True
    """Whether ``reject`` keeps at most ``DeadLetterCap.max_count`` dead letters per queue
    (not on SQS, where a queue keeps messages for its retention period however many)."""

    shortest_dead_letter_age_s: ClassVar[int] = 0
    """The shortest ``DeadLetterCap.max_age_s`` the broker can apply (SQS: a queue keeps
    messages at least 60 s); a shorter one is raised to it."""

    supports_priority: ClassVar[bool] = False
    """Whether ``Message.priority`` is honoured (higher first); drivers that cannot honour it
    raise NotSupported for a non-zero priority rather than drop it silently."""

    @classmethod
    @abstractmethod
    def from_config(cls, url: str, config: Config) -> Self:
        """A driver for ``url``; connecting may be lazy. Raises ConfigError for a bad URL."""

    @abstractmethod
    def publish_many(self, messages: Sequence[Message]) -> None:
        """Enqueue messages at the tail of their queues, or in the delay store until their
        ETA, in as few round trips as the broker allows. All or nothing where the broker
        allows it; on an error the caller must assume none was sent."""

    def begin_publish(self, messages: Sequence[Message]) -> Confirm:
        """Publish without waiting for the broker's confirm where the driver can split the
        two; the function returned waits for it (raising as ``publish_many`` would), and
        senders call those functions in the order of their publishes. By default the
        publish is confirmed here and the function does nothing (``taskd.confirms``)."""
        self.publish_many(messages)
        return confirmed

    @abstractmethod
    def fetch(self, queue: str, *, max_messages: int, wait_s: float) -> list[Delivery]:
        """Take up to ``max_messages`` ready messages, oldest first.

        Blocks at most ``wait_s`` when none is ready and returns ``[]`` then. Moves due ETA
        messages to their queue as a side effect where the driver has to.
        """

    @abstractmethod
    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """The messages are done: remove them for good. Idempotent."""

    @abstractmethod
    def release_many(self, deliveries: Sequence[Delivery]) -> None:
        """Hand messages back unprocessed, to be delivered again as soon as a consumer asks:
        ahead of the rest of their queue and in their order where ``releases_keep_order``.
        Whether this grows their ``deliveries`` is ``counts_releases``."""

    @abstractmethod
    def reject(self, delivery: Delivery, reason: str) -> None:
        """Set a message that can never succeed aside, with the reason, where it is kept."""

    @abstractmethod
    def close(self) -> None:
        """Release connections and stop background work; deliveries not settled come back."""

    def check(self, queues: Sequence[str], *, writes: bool = True, serves: bool = False) -> None:
        """Refuse, before anything depends on it, a configuration that would fail later
        (``taskd start``, ``check-config`` and a reload call this with the queues to serve):
        ConfigError naming the key, say for a queue whose name the broker keeps something
        else under. May ask the server; BrokerUnavailable then is no error (the caller goes
        on, as the daemon rides out an outage). Without ``writes`` (a caller that only
        reads: ``taskctl result``, ``queue stats``...) what only writes need is not asked
        of the user. ``serves``: the caller is the daemon (or its check-config), told of
        what the server may lose of what it keeps, once, where taskctl is not, each call.
        Nothing to check by default."""
        return

    def routing_key(self, queue: str) -> str:
        """The RoutingKey of a message sent to ``queue`` without one (machinery's
        AdjustRoutingKey): the queue's name, except where the broker routes by another key."""
        return queue

    def more_ready(self, queue: str) -> bool:
        """Whether the next fetch from ``queue`` is known to find messages at once (its last
        fetch saw a backlog): a worker then lets its quick tasks' states and acks wait, for
        a few milliseconds at most, to share a write with the next batch's. A hint; False
        (the default) when the driver cannot tell."""
        return False

    # -- single forms ----------------------------------------------------------------------

    def publish(
        self, queue: str, body: bytes, *, eta: GoTime | None = None, priority: int = 0
    ) -> None:
        self.publish_many([Message(queue, body, eta, priority)])

    def ack(self, delivery: Delivery) -> None:
        self.ack_many([delivery])

    def release(self, delivery: Delivery) -> None:
        self.release_many([delivery])

    def check_priorities(self, messages: Sequence[Message]) -> None:
        """NotSupported for a non-zero priority where the driver has none: an error, not a
        silent loss. Drivers call it in ``publish_many``; senders may call it first, before
        recording anything of messages that would be refused."""
        if self.supports_priority:
            return
        for message in messages:
            if message.priority:
                raise NotSupported(
                    self.driver,
                    "priority",
                    f"queue {message.queue!r} asked for {message.priority}; send without one",
                )

    # -- operations for taskctl; optional -------------------------------------------------

    def size(self, queue: str) -> int:
        """Messages ready to be taken now."""
        raise NotSupported(self.driver, "size")

    def delayed(self, queue: str) -> int:
        """Messages waiting for their ETA."""
        raise NotSupported(self.driver, "delayed")

    def peek(self, queue: str, limit: int) -> list[bytes]:
        """The next ready messages, without taking them."""
        raise NotSupported(self.driver, "peek")

    def purge(self, queue: str) -> int:
        """Delete the ready and delayed messages of a queue; returns how many."""
        raise NotSupported(self.driver, "purge")

    def dead_letters(self, queue: str, limit: int) -> list[DeadLetter]:
        """The newest messages set aside by ``reject``."""
        raise NotSupported(self.driver, "dead_letters")

    def requeue_dead(self, queue: str, ids: Sequence[str] | None) -> int:
        """Put dead letters of ``queue`` (those ``ids`` name, every one for None) back at
        the tail of the queue as fresh messages (their count of deliveries reset), and
        remove them from the dead letters; returns how many. UnknownDeadLetters, naming
        them, when some ids are not there, and then nothing is done. Atomic where the broker
        allows; elsewhere each is sent before it is removed (a failure between the two
        leaves it in both places, never in neither)."""
        raise NotSupported(self.driver, "requeue_dead")

    def drop_dead(self, queue: str, ids: Sequence[str] | None) -> int:
        """Delete dead letters of ``queue`` (those ``ids`` name, every one for None); returns
        how many. UnknownDeadLetters as ``requeue_dead``."""
        raise NotSupported(self.driver, "drop_dead")

    def holding(self, queue: str) -> Holding:
        """Messages taken from a queue and not settled: by live consumers, by dead ones."""
        raise NotSupported(self.driver, "holding")
