"""The AMQP broker's operations for taskctl, on a channel of their own.

RabbitMQ cannot show a message without taking it: ``peek``, ``dead_letters`` (``dead.py``)
and the count of delayed messages (which wait in the exchange's delay ladder, among other
queues') take them unacked and close their channel, which puts them back in order (flagged as
redelivered, their expiry kept). These cost a read of every message they look through.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from taskd.amqplink import NOT_FOUND
from taskd.brokers.amqp import delays
from taskd.brokers.amqp.topology import Session, Topology
from taskd.brokers.base import Holding

T = TypeVar("T")
RETURN_WAIT_S = 2.0  # longest wait for looked-at messages to be back in their queue


class AMQPQueueAdmin:
    """The optional Broker operations, for AMQPBroker (which provides ``_call``)."""

    _topology: Topology

    def _call(self, fn: Callable[[Session], T], queue: str | None = None) -> T:
        raise NotImplementedError

    def _on_own_channel(self, fn: Callable[[Any], T], queue: str) -> T:
        def run(session: Session) -> T:
            channel = session.connection.channel()
            try:
                return fn(channel)
            finally:
                if channel.is_open:
                    channel.close()

        return self._call(run, queue)

    def _count(self, channel: Any, queue: str) -> int:
        import pika.exceptions

        try:
            return int(channel.queue_declare(queue, passive=True).method.message_count)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == NOT_FOUND:  # no such queue: nothing in it
                return 0
            raise

    def size(self, queue: str) -> int:
        return self._size_of(queue, queue)

    def _size_of(self, queue: str, name: str) -> int:
        return self._on_own_channel(lambda channel: self._count(channel, name), queue)

    def _delayed_for(self, queue: str, drop: bool) -> int:
        """Count (and with ``drop`` delete) the delayed messages bound for ``queue``: each
        level of the ladder is read unacked; the others go back when the channel closes,
        keeping their expiry."""

        def scan(session: Session) -> int:
            found = 0
            # From the longest delays down, the way messages move: a scan that overtakes a
            # message (each level holds it 100 ms or more) sees it, one that meets it may not.
            for name in reversed(self._topology.ladder.queues()):
                channel = session.connection.channel()
                try:
                    if not self._count(channel, name):
                        continue
                    while True:
                        method, _properties, _body = channel.basic_get(name, auto_ack=False)
                        if method is None:
                            break
                        destination = method.routing_key.split(".", delays.LEVELS)[-1]
                        if self._topology.queue_for(destination) == queue:
                            found += 1
                            if drop:
                                channel.basic_ack(method.delivery_tag)
                finally:
                    if channel.is_open:
                        channel.close()
            return found

        return self._call(scan, queue)

    def delayed(self, queue: str) -> int:
        return self._delayed_for(queue, drop=False)

    def _look(self, queue: str, name: str, limit: int) -> list[tuple[Any, bytes]]:
        """Up to ``limit`` messages of queue ``name`` (``queue`` or a queue kept for it),
        taken unacked and put back by closing the channel. A quorum queue puts them back
        asynchronously, so this waits (briefly: consumers may take some meanwhile) until
        the count is what it was."""

        def take(channel: Any) -> tuple[int, list[tuple[Any, bytes]]]:
            before = self._count(channel, name)
            taken: list[tuple[Any, bytes]] = []
            while before and len(taken) < limit:
                method, properties, body = channel.basic_get(name, auto_ack=False)
                if method is None:
                    break
                taken.append((properties, bytes(body)))
            return before, taken

        before, taken = self._on_own_channel(take, queue)
        deadline = time.monotonic() + RETURN_WAIT_S
        while taken and self._size_of(queue, name) < before and time.monotonic() < deadline:
            time.sleep(0.01)
        return taken

    def peek(self, queue: str, limit: int) -> list[bytes]:
        return [body for _properties, body in self._look(queue, queue, limit)]

    def purge(self, queue: str) -> int:
        """Ready and delayed messages (unacked ones are being run, and stay)."""

        def purge(channel: Any) -> int:
            if not self._count(channel, queue):
                return 0
            return int(channel.queue_purge(queue).method.message_count)

        return self._on_own_channel(purge, queue) + self._delayed_for(queue, drop=True)

    def holding(self, queue: str) -> Holding:
        """Unknown: AMQP 0-9-1 does not count unacked messages (RabbitMQ's management API
        does). RabbitMQ gives back a dead consumer's messages itself, once it notices its
        connection is gone (within the heartbeat: half of ``worker.consumer_timeout``)."""
        return Holding(None, None)
