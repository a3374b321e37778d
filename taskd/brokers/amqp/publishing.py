"""The AMQP broker's publishing: persistent JSON messages, mandatory, with publisher confirms,
each one's queue declared first, so a task sent before any worker started is kept.

A message RabbitMQ returns as unroutable was queued nowhere. The usual cause is a queue
deleted after this connection declared it (an operator's delete, a policy's expiry), which
would otherwise fail every later send of a long-lived producer: so the connection forgets
what it declared, and the returned messages are published once more, declared anew.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from taskd import confirms
from taskd.brokers.amqp import delays
from taskd.brokers.amqp.pipeline import Pipeline, Unroutable, pipeline_of
from taskd.brokers.amqp.topology import Session, Topology
from taskd.brokers.base import Message
from taskd.errors import BrokerError

T = TypeVar("T")


class AMQPPublishing:
    """Broker.publish_many and begin_publish, for AMQPBroker (which provides ``_call``)."""

    _topology: Topology
    _confirm_timeout_s: float

    def _call(
        self, fn: Callable[[Session], T], queue: str | None = None, *, sending: bool = False
    ) -> T:
        raise NotImplementedError

    def publish_many(self, messages: Sequence[Message]) -> None:
        """Each message confirmed by RabbitMQ before the next (mandatory: an unroutable one
        is an error, not a silent loss); the destination is declared first."""
        if not messages:
            return
        self.check_priorities(messages)  # type: ignore[attr-defined]
        confirmed = [0]  # a retry resumes after these
        try:
            self._publish_confirmed(messages, confirmed)
        except Unroutable:
            self._publish_confirmed(messages, confirmed, declare_again=True)

    def _publish_confirmed(
        self, messages: Sequence[Message], confirmed: list[int], *, declare_again: bool = False
    ) -> None:
        def publish(session: Session) -> None:
            if declare_again:
                session.declared.clear()
            channel = session.publishing()
            for message in messages[confirmed[0] :]:
                properties = _properties(message)
                if delays.waits(message.eta):
                    self._publish_delayed(session, channel, message, properties)
                else:
                    queue = self._topology.queue_for(message.queue)
                    self._topology.declare_queue(session, channel, queue)
                    channel.basic_publish(
                        self._topology.exchange,
                        message.queue,
                        message.body,
                        properties,
                        mandatory=True,
                    )
                confirmed[0] += 1

        self._call(publish, messages[0].queue, sending=True)

    def begin_publish(self, messages: Sequence[Message]) -> confirms.Confirm:
        """Ready messages are published at once, as by publish_many, on a channel whose
        confirms are collected as they come (``pipeline.py``); the function returned waits
        for theirs. Delayed ones are confirmed here, by publish_many."""
        if not messages or any(delays.waits(message.eta) for message in messages):
            self.publish_many(messages)
            return confirms.confirmed
        self.check_priorities(messages)  # type: ignore[attr-defined]
        queue = messages[0].queue

        def publish(session: Session) -> tuple[Pipeline, int, int]:
            # First: after a channel RabbitMQ closed, everything is declared again.
            pipeline = pipeline_of(session, self._confirm_timeout_s)
            channel = session.publishing()  # declarations wait for their replies on this one
            for message in messages:
                self._topology.declare_queue(
                    session, channel, self._topology.queue_for(message.queue)
                )
            tags = [
                pipeline.publish(self._topology.exchange, m.queue, m.body, _properties(m))
                for m in messages
            ]
            pipeline.flush()
            return pipeline, tags[0], tags[-1]

        # A retry on a new connection sends them all again: the tags are of the last attempt.
        pipeline, first, last = self._call(publish, queue, sending=True)

        def drive(session: Session) -> None:
            if session.pipeline is pipeline:  # else its connection is gone, and its tags void
                pipeline.wait(first, last)

        def confirm() -> None:
            if pipeline.lost is None and not pipeline.settled(first, last):
                # If the connection is lost meanwhile, the outcome tells whether the
                # confirm came first.
                with contextlib.suppress(BrokerError):
                    self._call(drive, queue, sending=True)
            refused = pipeline.refusals(first, last, queue)
            if other := [e for e in refused.values() if not isinstance(e, Unroutable)]:
                raise other[0]
            if refused:  # each returned one, once more, declared anew
                again = [messages[tag - first] for tag in sorted(refused)]
                self._publish_confirmed(again, [0], declare_again=True)

        return confirm

    def _publish_delayed(
        self, session: Session, channel: Any, message: Message, properties: Any
    ) -> None:
        assert message.eta is not None
        self._topology.declare_delayed(session, channel, message.queue)
        properties.headers[delays.ETA_HEADER] = message.eta.unix_ns
        # The delay left now, as it is published: not as it was before the ladder was
        # declared or the messages ahead of it in the batch were confirmed (it would run late).
        units = delays.units_for((message.eta.unix_ns - time.time_ns()) / 1e6)
        top, key = self._topology.ladder.top, delays.routing_key(units, message.queue)
        channel.basic_publish(top, key, message.body, properties, mandatory=True)


def _properties(message: Message) -> Any:
    import pika

    return pika.BasicProperties(
        content_type="application/json",
        delivery_mode=2,
        priority=message.priority,
        headers=dict(message.headers or {}),
    )
