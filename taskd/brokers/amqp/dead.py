"""The AMQP broker's dead letters: the queue ``taskd.dead.<queue>``, capped by count
(``x-max-length``, dropping the oldest) and age (``x-message-ttl``), with the reason in the
headers of each message and an id as its ``message_id``. Messages set aside by an older taskd,
which have none, are named by the first 16 hex digits of the SHA-1 of their body and headers.

RabbitMQ cannot pick a message out of a queue: to requeue or drop some, every dead letter is
taken unacked; the chosen ones are published to their queue (confirmed) and acked, and closing
the channel puts the others back in order. A failure between the publish and the ack leaves
a message in both places (at-least-once), never in neither.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

from taskd.brokers.amqp.admin import RETURN_WAIT_S, AMQPQueueAdmin
from taskd.brokers.amqp.topology import DEAD_PREFIX
from taskd.brokers.base import DeadLetter, Message
from taskd.errors import UnknownDeadLetters
from taskd.wire import GoTime

DEAD_LETTERS_READ = 1000  # most dead letters read to find the newest
REASON_HEADER = "x-taskd-reason"
REJECTED_AT_HEADER = "x-taskd-rejected-at"
_ZERO = "0001-01-01T00:00:00Z"


def new_dead_letter_id() -> str:
    return secrets.token_hex(8)


def dead_letter_id(properties: Any, body: bytes) -> str:
    """The message_id set at reject time, else one derived from the message itself."""
    if properties.message_id:
        return str(properties.message_id)
    headers = properties.headers or {}
    seen = f"{_text(headers.get(REASON_HEADER))}\n{_text(headers.get(REJECTED_AT_HEADER))}\n"
    return hashlib.sha1(seen.encode() + body).hexdigest()[:16]


class AMQPDeadLetters(AMQPQueueAdmin):
    """The dead-letter operations, for AMQPBroker (which provides ``publish_many``)."""

    driver: str
    publish_many: Callable[[Sequence[Message]], None]

    def dead_letters(self, queue: str, limit: int) -> list[DeadLetter]:
        letters = []
        for properties, body in self._look(queue, DEAD_PREFIX + queue, DEAD_LETTERS_READ):
            headers = properties.headers or {}
            letters.append(
                DeadLetter(
                    queue,
                    body,
                    _text(headers.get(REASON_HEADER)),
                    GoTime.parse(_text(headers.get(REJECTED_AT_HEADER)) or _ZERO),
                    dead_letter_id(properties, body),
                )
            )
        return letters[::-1][:limit]

    def requeue_dead(self, queue: str, ids: Sequence[str] | None) -> int:
        return self._take_dead(queue, ids, requeue=True)

    def drop_dead(self, queue: str, ids: Sequence[str] | None) -> int:
        return self._take_dead(queue, ids, requeue=False)

    def _take_dead(self, queue: str, ids: Sequence[str] | None, *, requeue: bool) -> int:
        name = DEAD_PREFIX + queue

        def take(channel: Any) -> tuple[int, int]:
            before = self._count(channel, name)
            held: list[tuple[int, str, bytes]] = []  # delivery tag, id, body
            while len(held) < before:
                method, properties, body = channel.basic_get(name, auto_ack=False)
                if method is None:
                    break
                held.append((method.delivery_tag, dead_letter_id(properties, body), bytes(body)))
            wanted = None if ids is None else set(ids)
            chosen = [item for item in held if wanted is None or item[1] in wanted]
            if wanted is not None:
                missing = wanted - {letter_id for _, letter_id, _ in held}
                if missing:  # closing the channel puts every one back
                    unknown = [i for i in dict.fromkeys(ids or ()) if i in missing]
                    raise UnknownDeadLetters(self.driver, queue, unknown)
            if requeue and chosen:
                self.publish_many([Message(queue, body) for _, _, body in chosen])
            for tag, _, _ in chosen:
                channel.basic_ack(tag)
            return before, len(chosen)

        before, taken = self._on_own_channel(take, queue)
        deadline = time.monotonic() + RETURN_WAIT_S
        while (
            self._size_of(queue, name) < before - taken and time.monotonic() < deadline
        ):  # the others are back in their queue before this returns
            time.sleep(0.01)
        return taken


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")
