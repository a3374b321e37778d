"""The pieces the AMQP result backend builds its records from: what a read can find, the
channels of a connection, a write, a held chord token."""

from __future__ import annotations

import queue as queues
from dataclasses import dataclass
from enum import Enum
from typing import Any

from taskd.amqplink import NOT_FOUND, open_channel


class Seen(Enum):
    """What a read found instead of a message."""

    NOTHING = "no such queue"  # never written, expired, or purged
    HIDDEN = "an empty queue"  # held by another reader, being written, or its message expired


Inbox = queues.SimpleQueue[tuple[str, bytes | Seen]]  # messages waited for, by queue


@dataclass
class RecordSession:
    """One connection's channels (gone with it)."""

    connection: Any
    reader: Any = None  # basic.get and nack; a missing queue closes it, so it is reopened
    writer: Any = None  # in confirm mode: every publish waits for RabbitMQ's ack
    exchange_declared: bool = False  # the one machinery's readers' queues are bound to

    def reading(self) -> Any:
        self.reader = open_channel(self.connection, self.reader)
        return self.reader

    def writing(self) -> Any:
        self.writer = open_channel(self.connection, self.writer, confirms=True)
        return self.writer


@dataclass(frozen=True, slots=True)
class Held:
    """A chord token taken unacked, on a channel of its own: closing it gives the token back."""

    session: RecordSession
    channel: Any
    tag: int


@dataclass(frozen=True, slots=True)
class Write:
    queue: str
    body: bytes
    arguments: dict[str, int | str]
    declare: bool  # False when a read just now found the queue (basic.get renewed its x-expires)


def deliver(inbox: Inbox, name: str, _channel: Any, _method: Any, _props: Any, body: bytes) -> None:
    """A waited-for message arrived (in whichever thread drove the connection); it stays
    unacked."""
    inbox.put((name, bytes(body)))


def get_unacked(channel: Any, queue: str) -> tuple[int, bytes] | Seen:
    """``queue``'s first message taken unacked (its tag and body), or what was found instead:
    no queue (a 404, which also closes the channel) or an empty one."""
    import pika.exceptions

    try:
        method, _properties, body = channel.basic_get(queue, auto_ack=False)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == NOT_FOUND:
            return Seen.NOTHING
        raise
    if method is None:
        return Seen.HIDDEN
    return method.delivery_tag, bytes(body)
