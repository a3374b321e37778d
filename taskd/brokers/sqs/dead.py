"""The SQS broker's dead letters: ``taskd-dead-<queue>``, or the queue's redrive target where
it has one, named by their MessageId.

SQS caps them by age only: taskd's dead queues keep messages for ``worker.dead_letters_max_age``
(their MessageRetentionPeriod, which SQS bounds to 60 s .. 14 days; ``queues.py`` sets it).
There is no count cap on SQS. A redrive target is the user's queue, with its own retention.

SQS cannot pick a message out of a queue: to requeue or drop some, dead letters are received
(hidden for ``HOLD_S``) until the ids are found or none is left; the chosen ones are sent to
their queue and deleted, and the others made visible again at once. A failure between the
send and the delete leaves a message in both places (at-least-once), never in neither.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from taskd.brokers.base import DeadLetter, Message
from taskd.brokers.sqs.admin import LOOK_ROUNDS, SQSQueueAdmin
from taskd.brokers.sqs.bodies import body_of
from taskd.brokers.sqs.held import Handle, change_visibility, in_batches
from taskd.brokers.sqs.queues import DRIVER, Queue, dead_queue_name, translated
from taskd.errors import UnknownDeadLetters
from taskd.wire import GoTime

HOLD_S = 60  # how long dead letters stay hidden while a requeue or drop looks through them
REDRIVEN = "moved by the queue's redrive policy"


class SQSDeadLetters(SQSQueueAdmin):
    """The dead-letter operations, for SQSBroker (which provides the methods declared here)."""

    _queue: Callable[[str], Queue]
    _entry: Callable[[Queue, Message], dict[str, Any]]
    _send: Callable[[Queue, list[dict[str, Any]]], None]
    _delete: Callable[[Sequence[Handle]], None]

    def _dead_queue(self, queue: str) -> Queue | None:
        """taskd's ``taskd-dead-<queue>``, or the queue's redrive target where it has one."""
        source = self._queues.get(queue, create=False)
        if source is not None and source.redrive_target is not None:
            url = source.redrive_target
            return Queue(url.rsplit("/", 1)[1], url, source.fifo, 0, None)
        return self._queues.get(dead_queue_name(queue), create=False)

    def dead_letters(self, queue: str, limit: int) -> list[DeadLetter]:
        dead = self._dead_queue(queue)
        if dead is None:
            return []
        return [_letter(queue, message) for message in self._look(dead, limit)[::-1]][:limit]

    def requeue_dead(self, queue: str, ids: Sequence[str] | None) -> int:
        """Sent to the queue as new messages (ApproximateReceiveCount starts again), then
        deleted from the dead letters. On a FIFO queue each gets a deduplication id of its
        own, so SQS does not take it for the original sent minutes before."""
        return self._take_dead(queue, ids, requeue=True)

    def drop_dead(self, queue: str, ids: Sequence[str] | None) -> int:
        return self._take_dead(queue, ids, requeue=False)

    def _take_dead(self, queue: str, ids: Sequence[str] | None, *, requeue: bool) -> int:
        dead = self._dead_queue(queue)
        wanted = None if ids is None else set(ids)
        held = {} if dead is None else self._hold(dead, wanted)
        chosen = [m for m_id, m in held.items() if wanted is None or m_id in wanted]
        deleted: list[Handle] = []
        try:
            missing = set() if wanted is None else wanted - held.keys()
            if missing:
                unknown = [i for i in dict.fromkeys(ids or ()) if i in missing]
                raise UnknownDeadLetters(DRIVER, queue, unknown)
            if requeue and chosen:
                self._send_back(queue, chosen)
            deleted = [handle for _, handle in chosen]
            self._delete(deleted)
        finally:
            others = [handle for _, handle in held.values() if handle not in deleted]
            if others:
                change_visibility(self._client(), others, 0)
        return len(chosen)

    def _hold(self, dead: Queue, wanted: set[str] | None) -> dict[str, tuple[bytes, Handle]]:
        """Dead letters received and hidden, by MessageId: until every wanted one is found,
        or (looking for all) until receives find nothing new ``LOOK_ROUNDS`` times."""
        held: dict[str, tuple[bytes, Handle]] = {}
        quiet = 0
        while quiet < LOOK_ROUNDS and (wanted is None or not wanted <= held.keys()):
            with translated(dead.name):
                reply = self._client().receive_message(
                    QueueUrl=dead.url,
                    MaxNumberOfMessages=10,
                    VisibilityTimeout=HOLD_S,
                    WaitTimeSeconds=0,
                    MessageAttributeNames=["All"],
                )
            messages = reply.get("Messages", [])
            quiet = 0 if any(m["MessageId"] not in held for m in messages) else quiet + 1
            for m in messages:  # the latest receipt is the one that settles it
                handle = Handle(dead, m["ReceiptHandle"], m["MessageId"])
                held[m["MessageId"]] = (body_of(m), handle)
        return held

    def _send_back(self, queue: str, chosen: Sequence[tuple[bytes, Handle]]) -> None:
        target = self._queue(queue)
        entries = []
        for body, handle in chosen:
            entry = self._entry(target, Message(queue, body))
            if target.fifo:
                entry["MessageDeduplicationId"] = hashlib.sha256(
                    body + b"\n" + handle.message_id.encode()
                ).hexdigest()
            entries.append(entry)
        for batch in in_batches(entries):
            self._send(target, list(batch))


def _letter(queue: str, message: dict[str, Any]) -> DeadLetter:
    attributes = message.get("MessageAttributes", {})

    def text(name: str) -> str:
        return str(attributes.get(name, {}).get("StringValue", ""))

    sent_ns = int(message["Attributes"].get("SentTimestamp", 0)) * 1_000_000
    rejected_at = text("taskd-rejected-at")
    return DeadLetter(
        queue,
        body_of(message),
        text("taskd-reason") or REDRIVEN,
        GoTime.parse(rejected_at) if rejected_at else GoTime(sent_ns),
        message["MessageId"],
    )
