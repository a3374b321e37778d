"""The SQS messages a consumer holds, kept invisible to others while it lives.

SQS hides a received message for its visibility timeout; after that anyone may receive it
again. A thread extends the visibility of every message this consumer still holds once a
third of it has passed (or sooner, see ``_margin``), so a long task keeps its message while
a consumer that died (and its thread with it) loses its messages within one visibility
timeout.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from taskd import logs
from taskd.brokers.sqs.queues import Queue, translated
from taskd.errors import DriverError

log = logs.get_logger("taskd.sqs")
BATCH = 10  # SQS's largest batch: of messages to send, of receipt handles


@dataclass(eq=False, slots=True)
class Handle:
    """What a Delivery of the SQS broker carries: where the message came from and the
    receipt that settles it."""

    queue: Queue
    receipt: str
    message_id: str
    deadline: float = field(default=0.0)  # monotonic time its visibility runs out


def by_queue(handles: Iterable[Handle]) -> dict[str, list[Handle]]:
    grouped: dict[str, list[Handle]] = {}
    for handle in handles:
        grouped.setdefault(handle.queue.url, []).append(handle)
    return grouped


def in_batches(items: Sequence[Any], size: int = BATCH) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def change_visibility(client: Any, handles: Sequence[Handle], seconds: int) -> list[Handle]:
    """Set the visibility timeout of messages; the handles SQS refused (their receipt has
    expired: someone else may hold the message now)."""
    refused = []
    for url, group in by_queue(handles).items():
        for batch in in_batches(group):
            with translated(batch[0].queue.name):
                reply = client.change_message_visibility_batch(
                    QueueUrl=url,
                    Entries=[
                        {"Id": str(i), "ReceiptHandle": h.receipt, "VisibilityTimeout": seconds}
                        for i, h in enumerate(batch)
                    ],
                )
            refused += [batch[int(failure["Id"])] for failure in reply.get("Failed", [])]
    return refused


class HeldMessages:
    """Receipts this consumer holds, extended by a thread while ``extend`` is on."""

    def __init__(self, client: Callable[[], Any], heartbeat_s: float, extend: bool) -> None:
        self._client = client
        self._heartbeat_s = heartbeat_s
        self._extend = extend
        self._held: dict[str, Handle] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def add(self, handles: Iterable[Handle]) -> None:
        now = time.monotonic()
        with self._lock:
            for handle in handles:
                handle.deadline = now + handle.queue.visibility_s
                self._held[handle.receipt] = handle
            if self._extend and self._thread is None and not self._stopped.is_set():
                self._thread = threading.Thread(
                    target=self._keep, name="taskd-sqs-visibility", daemon=True
                )
                self._thread.start()

    def drop(self, handles: Iterable[Handle]) -> None:
        with self._lock:
            for handle in handles:
                self._held.pop(handle.receipt, None)

    def take_all(self) -> list[Handle]:
        """Stop extending, and give back every receipt still held."""
        self._stopped.set()
        with self._lock:
            held, self._held = list(self._held.values()), {}
        if self._thread is not None:
            self._thread.join(timeout=5)
        return held

    def _keep(self) -> None:
        while not self._stopped.wait(self._heartbeat_s):
            now = time.monotonic()
            with self._lock:
                due = [h for h in self._held.values() if h.deadline - now < self._margin(h)]
            if due:
                self._extend_now(due, now)

    def _margin(self, handle: Handle) -> float:
        """Extend once a third of the visibility has passed, and always at least two beats
        ahead, so that one late beat still comes in time."""
        return max(handle.queue.visibility_s * 2 / 3, 2 * self._heartbeat_s)

    def _extend_now(self, due: list[Handle], now: float) -> None:
        try:
            refused = change_visibility(self._client(), due, due[0].queue.visibility_s)
        except DriverError as exc:
            if not self._failing:  # once per outage; the next beat tries again
                log.warning("visibility_extension_failed", error=str(exc))
            self._failing = True
            return
        if self._failing:
            log.info("visibility_extension_recovered")
        self._failing = False
        with self._lock:
            for handle in due:
                handle.deadline = now + handle.queue.visibility_s
            for handle in refused:
                log.warning(
                    "visibility_lost", queue=handle.queue.name, message_id=handle.message_id
                )
                self._held.pop(handle.receipt, None)
