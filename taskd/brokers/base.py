"""The broker interface: bytes in, bytes out, a handful of methods every driver implements.

Drivers never decode task bodies, know task names or decide retries; the worker does. Each
process opens its own driver (never share one across ``fork``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from taskd.config import Config
from taskd.errors import NotSupported
from taskd.wire import GoTime


@dataclass(frozen=True, slots=True)
class Delivery:
    """A message a consumer took; settle it with exactly one of ack, release or reject."""

    queue: str
    body: bytes
    deliveries: int = 1  # this one included: more means consumers died holding it before
    handle: Any = None  # only the driver that made it reads this

    @property
    def redelivered(self) -> bool:
        return self.deliveries > 1


@dataclass(frozen=True, slots=True)
class Message:
    """A message to publish."""

    queue: str
    body: bytes
    eta: GoTime | None = None
    priority: int = 0


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message set aside by ``reject``, with why."""

    queue: str
    body: bytes
    reason: str
    rejected_at: GoTime


class Broker(ABC):
    """A queue of task messages with at-least-once delivery.

    A taken message stays owned by its consumer until settled; when the consumer dies, the
    driver delivers it again. A message with an ETA waits in the broker, not in a worker.
    """

    driver: ClassVar[str]

    @classmethod
    @abstractmethod
    def from_config(cls, url: str, config: Config) -> Self:
        """A driver for ``url``; connecting may be lazy. Raises ConfigError for a bad URL."""

    @abstractmethod
    def publish(
        self, queue: str, body: bytes, *, eta: GoTime | None = None, priority: int = 0
    ) -> None:
        """Enqueue one message, at the tail, or in the delay store until ``eta``."""

    def publish_many(self, messages: Sequence[Message]) -> None:
        """Enqueue several messages; drivers batch this into as few round trips as they can."""
        for message in messages:
            self.publish(message.queue, message.body, eta=message.eta, priority=message.priority)

    @abstractmethod
    def fetch(self, queue: str, *, max_messages: int, wait_s: float) -> list[Delivery]:
        """Take up to ``max_messages`` ready messages, oldest first.

        Blocks at most ``wait_s`` when none is ready and returns ``[]`` then. Moves due ETA
        messages to their queue as a side effect where the driver has to.
        """

    @abstractmethod
    def ack(self, delivery: Delivery) -> None:
        """The message is done: remove it for good. Idempotent."""

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Ack several messages; drivers batch this into as few round trips as they can."""
        for delivery in deliveries:
            self.ack(delivery)

    @abstractmethod
    def release(self, delivery: Delivery, *, delay_s: float = 0.0) -> None:
        """Hand the message back unprocessed, to the head of its queue (or after ``delay_s``).

        A release is not a failed delivery: the message's delivery count does not grow.
        """

    def release_many(self, deliveries: Sequence[Delivery]) -> None:
        """Hand several messages back to the head of their queue, keeping their order."""
        for delivery in reversed(deliveries):
            self.release(delivery)

    @abstractmethod
    def reject(self, delivery: Delivery, reason: str) -> None:
        """Set a message that can never succeed aside, with the reason, where it is kept."""

    @abstractmethod
    def close(self) -> None:
        """Release connections and stop background work; deliveries not settled come back."""

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
