"""The AMQP broker's fetch path: consume with late acks (publishing: ``publishing.py``)."""

from __future__ import annotations

import contextlib
import queue as queues
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Self, TypeVar

from taskd import logs
from taskd.amqp_frames import send_now
from taskd.amqplink import DirectLink, Link, connection_parameters
from taskd.brokers.amqp import delays
from taskd.brokers.amqp.dead import AMQPDeadLetters, new_dead_letter_id
from taskd.brokers.amqp.pipeline import NACKED, Unroutable, confirm_timeout_s, unroutable
from taskd.brokers.amqp.publishing import AMQPPublishing
from taskd.brokers.amqp.topology import DEAD_EXCHANGE, Session, Topology
from taskd.brokers.base import Broker, Delivery, Message
from taskd.config import Config
from taskd.errors import BrokerError, BrokerFull, BrokerUnavailable
from taskd.wire import GoTime

T = TypeVar("T")
log = logs.get_logger("taskd.amqp")


@dataclass(frozen=True, slots=True)
class Received:
    channel: Any  # delivery tags mean something only on the channel that got them
    tag: int
    redelivered: bool
    headers: dict[str, Any]
    body: bytes


class AMQPBroker(AMQPPublishing, AMQPDeadLetters, Broker):
    driver = "amqp"
    counts_releases = True  # a requeue sets the redelivered flag (quorum queues: counts it)

    def __init__(self, url: str, config: Config) -> None:
        self._topology = Topology.of(config)
        self._source = config.source
        # Consuming, acks and taskctl's look into queues on a kept connection (heartbeats
        # flow while a task runs); publishing on one of the sender's own, without heartbeats.
        self._link = Link(
            connection_parameters(url, config, "broker"), Session, BrokerUnavailable, self.driver
        )
        sending = connection_parameters(url, config, "broker")
        self._sender = DirectLink(sending, Session, BrokerUnavailable, self.driver)
        self._confirm_timeout_s = confirm_timeout_s(sending)
        self._inboxes: dict[str, queues.SimpleQueue[Received]] = {}
        self._consuming: dict[str, int] = {}  # queue -> the prefetch it is consumed with
        self._channel: Any = None  # the consuming channel; deliveries of others are void
        self._unsettled = 0  # deliveries handed out and not yet settled (basic.qos counts them)

    @classmethod
    def from_config(cls, url: str, config: Config) -> Self:
        return cls(url, config)

    @property  # type: ignore[override]
    def counts_deliveries(self) -> bool:
        """Quorum queues count deliveries (x-delivery-count); classic queues flag one."""
        return self._topology.quorum

    @property  # type: ignore[override]
    def releases_keep_order(self) -> bool:
        """Classic queues put a requeued message back in its place; quorum queues at the
        back."""
        return not self._topology.quorum

    @property  # type: ignore[override]
    def supports_priority(self) -> bool:
        """Queues honour priorities only when declared with x-max-priority (in
        ``amqp.queue_declare_args``; machinery's layout has none by default)."""
        return "x-max-priority" in self._topology.queue_arguments

    def _call(
        self, fn: Callable[[Session], T], queue: str | None = None, *, sending: bool = False
    ) -> T:
        """``fn(session)`` on the consuming connection (or, ``sending``, on the sender's),
        holding it; RabbitMQ's refusals as BrokerError, its nacks as BrokerFull."""
        import pika.exceptions

        try:
            return (self._sender if sending else self._link).call(fn)
        except pika.exceptions.NackError as exc:
            raise BrokerFull(self.driver, NACKED, queue) from exc
        except pika.exceptions.UnroutableError as exc:
            reason = unroutable(exc.messages[0].method)
            raise Unroutable(self.driver, reason, queue) from exc
        except pika.exceptions.AMQPChannelError as exc:
            raise BrokerError(self.driver, f"{type(exc).__name__}: {exc}", queue) from exc

    def check(self, queues: Sequence[str], *, writes: bool = True, serves: bool = False) -> None:
        self._topology.check_names(queues, "--queue")
        self._topology.warn_of_bounds()
        self._topology.check_declarable(
            lambda declare: self._call(declare, queues[0]), queues, self._source, writes=writes
        )

    def routing_key(self, queue: str) -> str:
        """machinery's AdjustRoutingKey: on a direct exchange, the binding key."""
        if self._topology.routes_by_binding_key and queue == self._topology.default_queue:
            return self._topology.binding_key
        return queue

    # -- consuming ------------------------------------------------------------------------

    def fetch(self, queue: str, *, max_messages: int, wait_s: float) -> list[Delivery]:
        """Messages RabbitMQ pushed to this consumer, waiting up to ``wait_s`` for the first.

        basic.qos lets RabbitMQ push ``max_messages`` beyond those still unsettled, so the
        adaptive batch size of the worker is the prefetch (amqp.prefetch_count is not used).
        """
        inbox = self._inboxes.setdefault(queue, queues.SimpleQueue())
        prefetch = self._unsettled + max_messages
        if (
            self._consuming.get(queue) != prefetch or not _open(self._channel)
        ) and not self._holds_pushed(queue, inbox):
            channel = self._call(lambda s: self._consume(s, queue, prefetch), queue)
            if channel is not self._channel:  # a new channel: the old deliveries are void
                self._channel, self._unsettled = channel, 0
                self._consuming = {}
            self._consuming[queue] = prefetch
        channel = self._channel
        taken: list[Delivery] = []
        early: list[Received] = []
        deadline = time.monotonic() + wait_s
        while len(taken) < max_messages:
            try:
                item = inbox.get_nowait()
            except queues.Empty:
                left_s = deadline - time.monotonic()
                if taken or left_s <= 0:
                    break
                self._call(lambda s, limit=left_s: s.connection.process_data_events(limit), queue)
                continue  # what arrived went to the inbox, in this thread
            if item.channel is not channel:
                continue  # from a lost channel: RabbitMQ has put it back already
            if delays.waits(item.headers.get(delays.ETA_HEADER)):  # came round early
                early.append(item)
                continue
            taken.append(Delivery(queue, item.body, _deliveries(item), (channel, item.tag)))
        self._unsettled += len(taken)
        for item in early:
            self._delay_again(queue, item)
        return taken

    def _holds_pushed(self, queue: str, inbox: queues.SimpleQueue[Received]) -> bool:
        """Whether a quorum queue's consumer holds pushed messages: a new prefetch restarts it,
        putting them back behind the rest (a delivery counted, too), so the change waits."""
        if not self._topology.quorum or queue not in self._consuming or not _open(self._channel):
            return False
        if inbox.empty():  # pushed but not yet handed over by pika: hand it over first
            self._call(lambda s: s.connection.process_data_events(time_limit=0), queue)
        return not inbox.empty()

    def _consume(self, session: Session, queue: str, prefetch: int) -> Any:
        """Consume ``queue`` with this prefetch, on a channel reopened if it was closed (a
        channel error, such as RabbitMQ's own consumer_timeout, closes the channel alone)."""
        channel = session.consuming_channel()
        if session.prefetch != prefetch:
            if self._topology.quorum:
                # Quorum queues refuse a per-channel limit, and a per-consumer one applies
                # to consumers started after it: start this one again.
                for tag in self._stop_consuming(session, [queue]):
                    channel.basic_nack(tag, requeue=True)
                channel.basic_qos(prefetch_count=prefetch)
            else:  # per channel: a change applies at once
                channel.basic_qos(prefetch_count=prefetch, global_qos=True)
            session.prefetch = prefetch
        if queue not in session.consuming:
            self._topology.declare_queue(session, channel, queue)
            inbox = self._inboxes[queue]

            def received(_channel: Any, method: Any, properties: Any, body: bytes) -> None:
                inbox.put(
                    Received(
                        channel,
                        method.delivery_tag,
                        method.redelivered,
                        dict(properties.headers or {}),
                        body,
                    )
                )

            def cancelled(_frame: Any) -> None:  # by RabbitMQ: its queue was deleted
                log.warning("amqp_consumer_cancelled", queue=queue, then="declared again")
                # The next fetch declares it (and the exchange, maybe deleted too) and consumes.
                session.declared.clear()
                session.consuming.pop(queue, None)
                self._consuming.pop(queue, None)

            channel.add_on_cancel_callback(cancelled)
            session.consuming[queue] = channel.basic_consume(queue, received, auto_ack=False)
        return channel

    def _delay_again(self, queue: str, item: Received) -> None:
        """A message delayed past the ladder's longest trip came round early: send it on,
        then ack it; if it cannot be sent now, it goes back to the queue."""
        headers = {k: v for k, v in item.headers.items() if not k.startswith("x-")}
        eta = GoTime(item.headers[delays.ETA_HEADER])
        handle = Delivery(queue, item.body, 1, (item.channel, item.tag))
        try:
            self.publish_many([Message(queue, item.body, eta, 0, headers)])
        except BrokerError:
            self._settle([handle], lambda channel, tag: channel.basic_nack(tag, requeue=True))
            raise
        self._settle([handle], _ack, wait=False)

    # -- settling -------------------------------------------------------------------------

    def _settle(
        self,
        deliveries: Sequence[Delivery],
        how: Callable[[Any, int], None],
        also: Callable[[Session], list[int]] = lambda _session: [],
        *,
        wait: bool = True,
    ) -> None:
        import pika.exceptions

        def settle(session: Session) -> None:
            # Deliveries of a channel that is gone were put back by RabbitMQ already; one
            # that closes now (RabbitMQ's consumer_timeout) puts back its own the same way.
            pairs = [d.handle for d in deliveries]
            pairs += [(session.consumer, tag) for tag in also(session)]
            for channel, tag in pairs:
                if _open(channel):
                    with contextlib.suppress(pika.exceptions.AMQPChannelError):
                        how(channel, tag)
            send_now(session.connection)  # what ``how`` left buffered (acks), in one write

        if deliveries:
            if wait:
                self._call(settle, deliveries[0].queue)
            else:
                self._link.post(settle)
            current = [d for d in deliveries if d.handle[0] is self._channel]
            self._unsettled = max(self._unsettled - len(current), 0)

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Sent without waiting for anything: RabbitMQ answers no ack, and one lost with its
        connection only means the message comes again (at-least-once)."""
        self._settle(deliveries, _ack, wait=False)

    def release_many(self, deliveries: Sequence[Delivery]) -> None:
        """Requeued, together with what RabbitMQ pushed here meanwhile, so that all go back
        to their places in the queue, in order: the consumer is cancelled first (after its
        cancel-ok nothing more arrives) and starts again with the next fetch."""
        queues_of = {delivery.queue for delivery in deliveries}

        self._settle(
            deliveries,
            lambda channel, tag: channel.basic_nack(tag, requeue=True),
            lambda session: self._stop_consuming(session, queues_of),
        )

    def _stop_consuming(self, session: Session, names: Iterable[str]) -> list[int]:
        """Cancel the consumers of ``names`` (after cancel-ok nothing more arrives) and take
        back what they buffered: tags to requeue, so that all keep their places."""
        tags = []
        for name in names:
            self._consuming.pop(name, None)  # the next fetch consumes again
            consumer_tag = session.consuming.pop(name, None)
            if consumer_tag is not None and _open(session.consumer):
                session.consumer.basic_cancel(consumer_tag)
            inbox = self._inboxes.get(name)
            while inbox is not None and not inbox.empty():
                item = inbox.get_nowait()
                if item.channel is session.consumer and _open(item.channel):
                    tags.append(item.tag)
        return tags

    def reject(self, delivery: Delivery, reason: str) -> None:
        """Into ``taskd.dead.<queue>`` (through DEAD_EXCHANGE) with the reason in headers and
        an id as its message_id (confirmed), then acked."""
        import pika

        done = [False]  # a retry on a new connection does not set it aside twice

        def set_aside(session: Session) -> None:
            if done[0]:
                return
            dead = self._topology.declare_dead(session, delivery.queue)
            channel = session.publishing()
            headers = {
                "x-taskd-reason": reason,
                "x-taskd-queue": delivery.queue,
                "x-taskd-rejected-at": GoTime.now().format(),
            }
            properties = pika.BasicProperties(
                delivery_mode=2, headers=headers, message_id=new_dead_letter_id()
            )
            channel.basic_publish(DEAD_EXCHANGE, dead, delivery.body, properties, mandatory=True)
            done[0] = True

        self._call(set_aside, delivery.queue, sending=True)
        self.ack_many([delivery])

    def close(self) -> None:
        self._sender.close()
        self._link.close()


def _deliveries(item: Received) -> int:
    """Quorum queues count deliveries (x-delivery-count, the earlier ones); classic queues
    only flag a redelivery."""
    counted = item.headers.get("x-delivery-count")
    if isinstance(counted, int) and counted >= 0:
        return counted + 1
    return 2 if item.redelivered else 1


def _ack(channel: Any, tag: int) -> None:
    channel._impl.basic_ack(tag)  # buffered, not flushed ack by ack: _settle sends them


def _open(channel: Any) -> bool:
    """Whether a channel is open (read without the lock: a stale answer costs one call)."""
    return channel is not None and bool(channel.is_open)
