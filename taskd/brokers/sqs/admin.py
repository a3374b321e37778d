"""The SQS broker's operations for taskctl.

Counts are SQS's approximate ones. SQS cannot show a message without receiving it: ``peek``
and ``dead_letters`` receive with a visibility timeout of 0, so the messages stay visible,
but each look counts as a receive (ApproximateReceiveCount, which ``worker.max_deliveries``
reads on SQS), as a look from the AWS console does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from taskd.brokers.base import DeadLetter
from taskd.brokers.sqs.bodies import body_of
from taskd.brokers.sqs.queues import Queue, Queues, dead_queue_name, error_code, translated
from taskd.errors import BrokerError
from taskd.wire import GoTime

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

    def dead_letters(self, queue: str, limit: int) -> list[DeadLetter]:
        """taskd's ``taskd-dead-<queue>``, or the queue's redrive target where it has one."""
        source = self._queues.get(queue, create=False)
        if source is not None and source.redrive_target is not None:
            url = source.redrive_target
            dead: Queue | None = Queue(url.rsplit("/", 1)[1], url, source.fifo, 0, None)
        else:
            dead = self._queues.get(dead_queue_name(queue), create=False)
        if dead is None:
            return []
        letters = []
        for message in self._look(dead, limit)[::-1]:
            attributes = message.get("MessageAttributes", {})

            def text(name: str, attributes: dict[str, Any] = attributes) -> str:
                return str(attributes.get(name, {}).get("StringValue", ""))

            sent_ns = int(message["Attributes"].get("SentTimestamp", 0)) * 1_000_000
            rejected_at = (
                GoTime.parse(text("taskd-rejected-at"))
                if text("taskd-rejected-at")
                else GoTime(sent_ns)
            )
            reason = text("taskd-reason") or "moved by the queue's redrive policy"
            letters.append(DeadLetter(queue, body_of(message), reason, rejected_at))
        return letters[:limit]
