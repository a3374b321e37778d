"""Publishes whose publisher confirms are awaited later (``Broker.begin_publish``).

pika's BlockingChannel waits for each confirm inside basic_publish. A ``Pipeline`` publishes
through the asynchronous pika channel underneath one, and collects RabbitMQ's acks, nacks and
returns in callbacks, whichever call drives the connection: a producer then waits for one
round trip per window of sends, not per send.
"""

from __future__ import annotations

import time
from typing import Any

from taskd import amqp_alarms
from taskd.amqp_frames import send_now, take_in
from taskd.amqplink import PRECONDITION_FAILED
from taskd.errors import BrokerError, BrokerFull, BrokerUnavailable

# A nack is RabbitMQ's "not now" (it refuses a message it cannot route with a return): the
# usual cause is a queue bounded with x-overflow: reject-publish, full at the time.
NACKED = (
    "RabbitMQ nacked the message: a queue full under x-overflow: reject-publish, or one"
    " that cannot take it now"
)


class Unroutable(BrokerError):
    """RabbitMQ returned a mandatory message that no queue is bound to take: it was queued
    nowhere, so publishing it again cannot duplicate it."""


def unroutable(method: Any) -> str:
    """Why RabbitMQ returned a message, from its basic.return."""
    return (
        f"unroutable: {method.reply_code} {method.reply_text} (exchange {method.exchange!r},"
        f" routing key {method.routing_key!r})"
    )


def confirm_timeout_s(parameters: Any) -> float:
    """How long a confirm may keep a sender waiting: no less than pika takes to give up a
    silent peer (it checks every heartbeat + 5 s) or a connection RabbitMQ keeps blocked, so
    this only catches a RabbitMQ that answers but never confirms (a quorum queue without its
    quorum)."""
    return float(
        max(
            2 * ((parameters.heartbeat or 0) + 5),
            parameters.blocked_connection_timeout or 0,
            parameters.socket_timeout or 0,
        )
    )


def pipeline_of(session: Any, timeout_s: float) -> Pipeline:
    """The pipeline of a connection's ``Session``; a new one (its own tags) once the last
    one's channel closed."""
    import pika.exceptions

    old = session.pipeline
    if old is None or old.lost is not None:
        if old is not None and isinstance(old.lost, pika.exceptions.ChannelClosedByBroker):
            session.declared.clear()  # what the channel lacked may have been deleted
        session.pipeline = Pipeline(session.connection, timeout_s)
    return session.pipeline


class Pipeline:
    """A confirm-mode channel of the sender's connection, and what became of each publish.

    Delivery tags number a channel's publishes from 1; an ack or nack with ``multiple``
    settles every tag up to its own. A basic.return carries no tag, but RabbitMQ sends it
    for an unroutable mandatory message just before that message's ack or nack: it refuses
    the tag settled next. Once the channel is closed (so is its connection when that is
    lost), the tags not settled are void: a new Pipeline takes its place, on the same or a
    new connection, with tags of its own.
    """

    def __init__(self, connection: Any, timeout_s: float) -> None:
        self._connection = connection
        self._timeout_s = timeout_s
        self._blocking = connection.channel()  # only the pika channel under it is used
        self._channel = self._blocking._impl
        self._tag = 0  # the last tag given out
        self._unsettled: set[int] = set()
        self._refused: dict[int, tuple[type[BrokerError], str]] = {}  # nacked or returned tags
        self._returned: str | None = None  # a return, for the tag settled next
        self._waiting = False  # a wait drives the connection until a confirm comes
        self.lost: BaseException | None = None  # why the channel closed
        self._channel.add_on_close_callback(self._on_close)
        self._channel.add_on_return_callback(self._on_return)
        # Select-ok is not awaited: RabbitMQ handles a channel's methods in order, so the
        # publishes sent after confirm.select are confirmed, numbered from 1.
        self._channel.confirm_delivery(ack_nack_callback=self._on_confirm)

    def publish(self, exchange: str, routing_key: str, body: bytes, properties: Any) -> int:
        """Hand a mandatory publish to pika (sent by ``flush``); its delivery tag."""
        self._channel.basic_publish(exchange, routing_key, body, properties, mandatory=True)
        self._tag += 1
        self._unsettled.add(self._tag)
        return self._tag

    def flush(self) -> None:
        """Send what was published, at once; confirms are taken in by ``wait``."""
        send_now(self._connection)

    def wait(self, first: int, last: int) -> None:
        """Drive the connection until tags ``first`` to ``last`` are settled or the channel
        closed; a transient pika error (the caller drops the connection) if it is lost, or
        if no confirm comes in time."""
        import pika.exceptions

        deadline = time.monotonic() + self._timeout_s
        try:
            take_in(self._connection)  # confirms that came already need no wait (nor its timer)
            while self.lost is None and not self.settled(first, last):
                left = deadline - time.monotonic()
                if left <= 0:
                    self.lost = TimeoutError(f"no publisher confirm within {self._timeout_s:g} s")
                    raise pika.exceptions.AMQPConnectionError(str(self.lost))
                self._waiting = True
                try:
                    # Returns early once a callback below wakes it (or the channel closes).
                    self._connection.process_data_events(time_limit=left)
                finally:
                    self._waiting = False
        except Exception as exc:
            self.lost = self.lost or exc  # the connection is lost, if pika has not said so
            raise

    def settled(self, first: int, last: int) -> bool:
        return not any(tag in self._unsettled for tag in range(first, last + 1))

    def refusals(self, first: int, last: int, queue: str) -> dict[int, BrokerError]:
        """The errors of tags ``first`` to ``last`` that RabbitMQ refused (BrokerFull for a
        nack, Unroutable for a return); BrokerUnavailable raised if one was never settled
        (the channel closed first), BrokerError where RabbitMQ closed it over a message it
        will never take. Once only: refusals are forgotten."""
        if not self.settled(first, last):
            if getattr(self.lost, "reply_code", 0) == PRECONDITION_FAILED:
                # Said of a message (larger than RabbitMQ's max_message_size, a server
                # setting, 128 MiB on 3.x): sending it again would be refused again.
                raise BrokerError("amqp", f"RabbitMQ refused the message: {self.lost}", queue)
            raise BrokerUnavailable(
                "amqp",
                "the channel closed before RabbitMQ confirmed the publish:"
                f" {self.lost}{amqp_alarms.note(self._connection)}",
            )
        refused = [
            (tag, self._refused.pop(tag)) for tag in range(first, last + 1) if tag in self._refused
        ]
        return {tag: error("amqp", reason, queue) for tag, (error, reason) in refused}

    # -- pika's callbacks, run by whichever call drives the connection ----------------------

    def _on_confirm(self, frame: Any) -> None:
        import pika.spec

        method = frame.method
        tag = method.delivery_tag
        if method.multiple:
            settled = {t for t in self._unsettled if t <= tag}
        else:
            settled = {tag} & self._unsettled
        self._unsettled -= settled
        if isinstance(method, pika.spec.Basic.Nack):
            for t in settled:
                self._refused[t] = (BrokerFull, NACKED)
        if self._returned is not None:
            self._refused[tag] = (Unroutable, self._returned)
            self._returned = None
        if self._waiting:  # end process_data_events, which returns early for its own events only
            self._waiting = False
            self._connection.call_later(0, _nothing)

    def _on_return(self, _channel: Any, method: Any, _properties: Any, _body: bytes) -> None:
        self._returned = unroutable(method)

    def _on_close(self, _channel: Any, reason: BaseException) -> None:
        # A lost connection makes process_data_events raise; a channel RabbitMQ closes
        # ends it through pika's BlockingChannel. The first reason is kept (a timeout's).
        self.lost = self.lost or reason


def _nothing() -> None:
    """A timer's callback: its firing is what ends the wait."""
