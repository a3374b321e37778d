"""The SQS broker: batch sends, long polls, late deletes, delays longer than SQS allows.

- Sending: ``SendMessageBatch``, 10 per call. A delay goes in DelaySeconds (machinery's way)
  up to ``sqs.max_delay_seconds`` (SQS allows 900); a later ETA also rides in the message
  attribute ``taskd-eta``, and a consumer that receives it early sends it on for the next
  hop and deletes the original. FIFO queues refuse per-message delays: a message with an ETA
  goes at once, and its consumer hides it (ChangeMessageVisibility) until it is due; its
  group waits behind it, as FIFO order demands.
- FIFO: MessageGroupId is the signature's BrokerMessageGroupId (the queue's name when it has
  none); the deduplication id is a hash of the body, so a retry (another RetryCount and ETA)
  is never taken for a duplicate, as machinery's task-UUID ids are.
- Receiving: a long poll (``sqs.receive_wait_time_seconds``) runs in a thread and may span
  several ``fetch`` calls, so a worker checks for SIGTERM every poll interval while paying
  for one request per long poll. Visibility is kept up while a message is held (``held``).
- Bodies SQS cannot carry go base64-encoded (``bodies``).
- Deleted only on ack: after the state is stored and follow-ups sent.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Self

from taskd import logs
from taskd.brokers.base import Broker, Delivery, Message, queue_setting
from taskd.brokers.sqs.bodies import body_of, send_batches, sendable
from taskd.brokers.sqs.dead import SQSDeadLetters
from taskd.brokers.sqs.held import Handle, HeldMessages, by_queue, change_visibility, in_batches
from taskd.brokers.sqs.queues import (
    DRIVER,
    MIN_RETENTION_S,
    Endpoint,
    Queue,
    Queues,
    dead_name_error,
    dead_queue_name,
    endpoint_of,
    name_error,
    new_client,
    translated,
)
from taskd.config import Config
from taskd.errors import BrokerError, BrokerUnavailable, ConfigError, DriverError
from taskd.wire import GoTime

log = logs.get_logger("taskd.sqs")
ETA_ATTRIBUTE = "taskd-eta"  # unix ns, on messages delayed past one hop (or on FIFO queues)
EARLY_TOLERANCE_NS = 50_000_000  # a delayed message this close to its ETA runs, not waits
MAX_HIDE_S = 43_000  # a FIFO message waits for its ETA hidden for at most ~12 h at a time
SEND_ATTEMPTS = 3  # for entries SQS failed on its side


class Poll:
    """One ReceiveMessage in a daemon thread (one left running at exit is simply dropped:
    what it would have received comes back after its visibility timeout)."""

    def __init__(self, call: Callable[[], list[dict[str, Any]]]) -> None:
        self._done = threading.Event()
        self._value: list[dict[str, Any]] = []
        self._error: BaseException | None = None
        threading.Thread(target=self._run, args=(call,), name="taskd-sqs-poll", daemon=True).start()

    def _run(self, call: Callable[[], list[dict[str, Any]]]) -> None:
        try:
            self._value = call()
        except BaseException as exc:
            self._error = exc
        finally:
            self._done.set()

    def wait(self, timeout_s: float) -> bool:
        return self._done.wait(max(timeout_s, 0))

    def result(self) -> list[dict[str, Any]]:
        if self._error is not None:
            raise self._error
        return self._value


class SQSBroker(SQSDeadLetters, Broker):
    driver = DRIVER
    caps_dead_letters_by_count = False  # dead queues keep messages by age alone
    shortest_dead_letter_age_s = MIN_RETENTION_S
    counts_releases = True  # every receive raises ApproximateReceiveCount
    releases_keep_order = False  # a message made visible again goes where SQS puts it

    def __init__(self, endpoint: Endpoint, config: Config) -> None:
        settings = config.sqs
        self._wait_s = settings.receive_wait_time_seconds
        self._max_delay_s = settings.max_delay_seconds
        self._endpoint = endpoint
        self._default_queue, self._source = config.default_queue, config.source
        self._client_lock = threading.Lock()
        self._client_obj: Any = None
        self._queues = Queues(self._client, endpoint, config)
        self._held = HeldMessages(
            self._client, config.lease.heartbeat_interval_s, settings.visibility_heartbeat
        )
        self._inboxes: dict[str, deque[dict[str, Any]]] = {}
        self._polls: dict[str, Poll] = {}
        self._closed = False

    @classmethod
    def from_config(cls, url: str, config: Config) -> Self:
        return cls(endpoint_of(url, config), config)

    def check(self, queues: Sequence[str], *, writes: bool = True, serves: bool = False) -> None:
        """Queue names SQS would refuse, for the queue or for its dead letters (unless the
        queue has a redrive policy to take them instead); and SQS refusing to read a queue's
        attributes, as every process of taskd's does first (no AWS credentials, ones SQS
        does not know, an IAM policy that denies it): ConfigError naming the broker, where
        the workers would otherwise retry for good while the daemon never got ready."""
        for name in queues:
            key = queue_setting(name, self._default_queue)
            source = self._source if key == "default_queue" else None
            if (reason := name_error(name)) is not None:
                raise ConfigError(key, reason, source)
            try:
                queue = self._queues.get(name, create=False)
            except BrokerUnavailable:  # checked once it answers
                continue
            except BrokerError as exc:
                raise ConfigError(
                    "broker",
                    f"SQS refused to read the queue {self._queues.url_of(name)}:"
                    f" {exc.__cause__ or exc.reason}."
                    " Check the AWS credentials (boto3's chain: environment, ~/.aws, role) and"
                    " that their IAM policy allows taskd's SQS actions (README, AWS SQS)",
                    self._source,
                ) from None
            if (reason := dead_name_error(name)) is not None and (
                queue is None or queue.redrive_target is None
            ):
                raise ConfigError(key, reason, source)

    def _client(self) -> Any:
        with self._client_lock:
            if self._client_obj is None:
                self._client_obj = new_client(self._endpoint, self._wait_s + 10.0)
            return self._client_obj

    # -- producing ------------------------------------------------------------------------

    def publish_many(self, messages: Sequence[Message]) -> None:
        """In batches SQS takes (``send_batches``) per queue. Not atomic across batches: after
        an error some may have gone, and a sender that tries again sends those twice
        (at-least-once)."""
        if not messages:
            return
        self.check_priorities(messages)
        grouped: dict[str, list[Message]] = {}
        for message in messages:
            grouped.setdefault(message.queue, []).append(message)
        for name, group in grouped.items():
            queue = self._queue(name)
            for batch in send_batches(self._entry(queue, message) for message in group):
                self._send(queue, batch)

    def _queue(self, name: str) -> Queue:
        queue = self._queues.get(name)
        assert queue is not None  # get() creates it or raises
        return queue

    def _entry(self, queue: Queue, message: Message) -> dict[str, Any]:
        text, attributes = sendable(message.body)
        entry: dict[str, Any] = {"MessageBody": text}
        delay_ns = message.eta.unix_ns - time.time_ns() if message.eta is not None else 0
        if delay_ns > EARLY_TOLERANCE_NS:
            delay_s = math.ceil(delay_ns / 1e9)
            if queue.fifo or delay_s > self._max_delay_s:
                attributes[ETA_ATTRIBUTE] = {
                    "DataType": "Number",
                    "StringValue": str(message.eta.unix_ns),
                }  # type: ignore[union-attr]
            if not queue.fifo:
                entry["DelaySeconds"] = min(delay_s, self._max_delay_s)
        if queue.fifo:
            entry["MessageGroupId"] = message.group or queue.name
            entry["MessageDeduplicationId"] = hashlib.sha256(message.body).hexdigest()
        if attributes:
            entry["MessageAttributes"] = attributes
        return entry

    def _send(self, queue: Queue, entries: list[dict[str, Any]]) -> None:
        """One SendMessageBatch; entries SQS failed on its side are sent again."""
        for attempt in range(SEND_ATTEMPTS):
            numbered = {str(i): entry for i, entry in enumerate(entries)}
            with self._queues.using(queue):
                reply = self._client().send_message_batch(
                    QueueUrl=queue.url, Entries=[{"Id": i, **e} for i, e in numbered.items()]
                )
            failed = reply.get("Failed", [])
            if not failed:
                return
            refused = [f for f in failed if f.get("SenderFault")]
            if refused:
                first = refused[0]
                raise BrokerError(
                    self.driver,
                    f"SQS refused a message: {first['Code']}: {first['Message']}",
                    queue.name,
                )
            entries = [numbered[f["Id"]] for f in failed]
            time.sleep(0.1 * 2**attempt)
        raise BrokerUnavailable(
            self.driver, f"SQS failed {len(entries)} message(s) on its side", queue.name
        )

    # -- consuming ------------------------------------------------------------------------

    def fetch(self, queue: str, *, max_messages: int, wait_s: float) -> list[Delivery]:
        source = self._queue(queue)
        inbox = self._inboxes.setdefault(queue, deque())
        if not inbox:
            poll = self._polls.get(queue)
            if poll is None:
                poll = Poll(lambda: self._receive(source, max_messages))
                self._polls[queue] = poll
            if not poll.wait(wait_s):
                return []
            del self._polls[queue]
            inbox.extend(poll.result())
        taken: list[Delivery] = []
        while inbox and len(taken) < max_messages:
            delivery = self._delivery(source, inbox.popleft())
            if delivery is not None:
                taken.append(delivery)
        return taken

    def _receive(self, queue: Queue, max_messages: int) -> list[dict[str, Any]]:
        """One long poll (in the poll thread); what it gets is held from here on."""
        with self._queues.using(queue):
            reply = self._client().receive_message(
                QueueUrl=queue.url,
                MaxNumberOfMessages=max(1, min(max_messages, 10)),
                WaitTimeSeconds=self._wait_s,
                VisibilityTimeout=queue.visibility_s,
                MessageSystemAttributeNames=[
                    "ApproximateReceiveCount",
                    "ApproximateFirstReceiveTimestamp",
                ],
                MessageAttributeNames=["All"],
            )
        messages = reply.get("Messages", [])
        for message in messages:
            message["taskd.handle"] = Handle(queue, message["ReceiptHandle"], message["MessageId"])
        handles = [message["taskd.handle"] for message in messages]
        if self._closed:  # closed meanwhile: nobody will take these
            change_visibility(self._client(), handles, 0)
            return []
        self._held.add(handles)
        return messages

    def _delivery(self, queue: Queue, message: dict[str, Any]) -> Delivery | None:
        """A Delivery; None for a message that came before its ETA (sent on, or hidden)."""
        handle: Handle = message["taskd.handle"]
        attributes = message.get("MessageAttributes", {})
        eta_ns = int(attributes.get(ETA_ATTRIBUTE, {}).get("StringValue", 0) or 0)
        left_ns = eta_ns - time.time_ns()
        if left_ns > EARLY_TOLERANCE_NS:
            self._wait_longer(queue, message, handle, eta_ns, left_ns)
            return None
        system = message.get("Attributes", {})
        received = int(system.get("ApproximateReceiveCount", 1))
        if queue.fifo and eta_ns:  # receives while hidden until due were not deliveries
            first_ns = int(system.get("ApproximateFirstReceiveTimestamp", 0)) * 1_000_000
            if first_ns and first_ns < eta_ns - EARLY_TOLERANCE_NS:
                received -= 1 + int((eta_ns - first_ns) // (MAX_HIDE_S * 10**9))
        return Delivery(queue.name, body_of(message), max(received, 1), handle)

    def _wait_longer(
        self, queue: Queue, message: dict[str, Any], handle: Handle, eta_ns: int, left_ns: int
    ) -> None:
        left_s = math.ceil(left_ns / 1e9)
        self._held.drop([handle])
        if queue.fifo:
            change_visibility(self._client(), [handle], min(left_s, MAX_HIDE_S))
            return
        entry: dict[str, Any] = {
            "MessageBody": message["Body"],
            "MessageAttributes": message["MessageAttributes"],
            "DelaySeconds": min(left_s, self._max_delay_s),
        }
        try:
            self._send(queue, [entry])
        except BrokerError:
            change_visibility(self._client(), [handle], 0)  # try again with the next receive
            raise
        self._delete([handle])

    # -- settling -------------------------------------------------------------------------

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        handles = [delivery.handle for delivery in deliveries]
        self._held.drop(handles)
        self._delete(handles)

    def _delete(self, handles: Sequence[Handle]) -> None:
        """Delete messages by receipt; one whose receipt expired (its visibility ran out and
        another consumer took it) cannot be, and will come again: at-least-once."""
        for url, group in by_queue(handles).items():
            for batch in in_batches(group):
                with translated(batch[0].queue.name):
                    reply = self._client().delete_message_batch(
                        QueueUrl=url,
                        Entries=[
                            {"Id": str(i), "ReceiptHandle": h.receipt} for i, h in enumerate(batch)
                        ],
                    )
                for failure in reply.get("Failed", []):
                    log.warning(
                        "message_not_deleted",
                        queue=batch[0].queue.name,
                        message_id=batch[int(failure["Id"])].message_id,
                        error=f"{failure.get('Code')}: {failure.get('Message')}",
                    )

    def release_many(self, deliveries: Sequence[Delivery]) -> None:
        """Visible again at once (visibility timeout 0)."""
        handles = [delivery.handle for delivery in deliveries]
        self._held.drop(handles)
        change_visibility(self._client(), handles, 0)

    def reject(self, delivery: Delivery, reason: str) -> None:
        """Where the queue has a redrive policy, the message is left to it: no longer kept
        invisible, it comes back after its visibility timeout and is rejected again until
        SQS moves it to the dead-letter queue after maxReceiveCount receives (machinery's
        StopTaskDeletionOnError). Otherwise it goes to ``taskd-dead-<queue>`` with the reason
        in its attributes, and is deleted."""
        handle: Handle = delivery.handle
        if handle.queue.redrive_target is not None:
            self._held.drop([handle])
            log.warning(
                "message_left_for_redrive",
                queue=delivery.queue,
                reason=reason,
                receives=delivery.deliveries,
            )
            return
        dead = self._queue(dead_queue_name(delivery.queue))
        text, attributes = sendable(delivery.body)
        for name, value in (
            ("taskd-reason", reason),
            ("taskd-queue", delivery.queue),
            ("taskd-rejected-at", GoTime.now().format()),
        ):
            attributes[name] = {"DataType": "String", "StringValue": value or "-"}
        entry: dict[str, Any] = {"MessageBody": text, "MessageAttributes": attributes}
        if dead.fifo:
            entry["MessageGroupId"] = "taskd-dead"
            entry["MessageDeduplicationId"] = handle.message_id  # set aside once
        self._send(dead, [entry])
        self.ack_many([delivery])

    def close(self) -> None:
        """What is held goes back (visible at once); a poll still running hands back what
        it gets."""
        self._closed = True
        held = self._held.take_all()
        for inbox in self._inboxes.values():
            inbox.clear()
        if held and self._client_obj is not None:
            try:
                change_visibility(self._client(), held, 0)
            except DriverError as exc:  # they come back after their visibility timeout
                log.warning("release_on_close_failed", error=str(exc))
        if self._client_obj is not None and not self._polls:  # a running poll still needs it
            self._client_obj.close()
