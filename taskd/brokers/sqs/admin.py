"""The SQS broker's operations for taskctl.

Counts are SQS's approximate ones. SQS cannot show a message without receiving it: ``peek``
and ``dead_letters`` (``dead.py``) receive with a visibility timeout of 0, so the messages
stay visible, but each look counts as a receive (ApproximateReceiveCount, which
``worker.max_deliveries`` reads on SQS), as a look from the AWS console does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from taskd.brokers.base import Holding
from taskd.brokers.sqs.bodies import body_of
from taskd.brokers.sqs.queues import Queue, Queues, error_code, translated
from taskd.errors import BrokerError

LOOK_ROUNDS = 5  # receives without a new message before a look gives up


class SQSQueueAdmin:
    """The optional Broker operations, for SQSBroker."""

    _queues: Queues
    _client: Callable[[], Any]

    def _counts(self, name: str) -> dict[str, str]:
        queue = self._queues.get(name, create=False)
        if queue is None:
            return {}
        with translated(name):
            return dict(
                self._client()
                .get_queue_attributes(
                    QueueUrl=queue.url,
                    AttributeNames=[
                        "ApproximateNumberOfMessages",
                        "ApproximateNumberOfMessagesDelayed",
                        "ApproximateNumberOfMessagesNotVisible",
                    ],
                )
                .get("Attributes", {})
            )

    def size(self, queue: str) -> int:
        return int(self._counts(queue).get("ApproximateNumberOfMessages", 0))

    def delayed(self, queue: str) -> int:
        """Messages whose DelaySeconds has not passed (FIFO messages waiting for their ETA
        are hidden, and counted as in flight instead)."""
        return int(self._counts(queue).get("ApproximateNumberOfMessagesDelayed", 0))

    def holding(self, queue: str) -> Holding:
        """In flight: SQS's count of messages received and not deleted (a dead consumer's
        among them until their visibility timeout ends: SQS cannot tell them apart; FIFO
        messages hidden until their ETA too)."""
        return Holding(
            int(self._counts(queue).get("ApproximateNumberOfMessagesNotVisible", 0)), None
        )

    def _look(self, queue: Queue, limit: int) -> list[dict[str, Any]]:
        seen: dict[str, dict[str, Any]] = {}
        quiet = 0
        while len(seen) < limit and quiet < LOOK_ROUNDS:
            with translated(queue.name):
                reply = self._client().receive_message(
                    QueueUrl=queue.url,
                    MaxNumberOfMessages=min(10, limit - len(seen)),
                    VisibilityTimeout=0,
                    WaitTimeSeconds=0,
                    MessageSystemAttributeNames=["SentTimestamp"],
                    MessageAttributeNames=["All"],
                )
            fresh = [m for m in reply.get("Messages", []) if m["MessageId"] not in seen]
            quiet = 0 if fresh else quiet + 1
            seen.update((m["MessageId"], m) for m in fresh)
        return sorted(seen.values(), key=lambda m: int(m["Attributes"].get("SentTimestamp", 0)))

    def peek(self, queue: str, limit: int) -> list[bytes]:
        """Some ready messages, oldest sent first (SQS picks which; see the module's note)."""
        found = self._queues.get(queue, create=False)
        return [] if found is None else [body_of(m) for m in self._look(found, limit)]

    def purge(self, queue: str) -> int:
        """PurgeQueue: ready, delayed and in-flight messages alike, as SQS does it; the count
        is of the ready and delayed ones. SQS allows one purge per queue a minute."""
        counts = self._counts(queue)
        if not counts:
            return 0
        found = self._queues.get(queue, create=False)
        assert found is not None
        try:
            with translated(queue):
                self._client().purge_queue(QueueUrl=found.url)
        except BrokerError as exc:
            if error_code(exc.__cause__ or exc).endswith("PurgeQueueInProgress"):
                raise BrokerError(
                    "sqs", "SQS allows one purge per queue every 60 s: try again shortly", queue
                ) from exc
            raise
        return sum(
            int(counts.get(key, 0))
            for key in ("ApproximateNumberOfMessages", "ApproximateNumberOfMessagesDelayed")
        )
