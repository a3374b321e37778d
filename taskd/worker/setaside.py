"""Setting a message aside: into the broker's dead letters, with the reason, where an operator
can read it and replay it once the cause is mended (``taskctl queue dead``).

A message the broker refuses to take aside for good (a dead-letter list that is not a list,
a permission taken away at run time) stays leased to its child, logged, and goes back to its
queue when the child stops: a crash would hand it back at once to the next child, to crash
on it in turn, the whole queue stalled behind it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from taskd import logs
from taskd.brokers import Broker, Delivery
from taskd.errors import BrokerError
from taskd.wire import GoTime, State, TaskState
from taskd.wire.signature import identity_of
from taskd.worker.jobs import preview
from taskd.worker.writes import WriteBuffer

log = logs.get_logger("taskd.worker")


class SetAside:
    def __init__(self, broker: Broker, call: Callable[..., Any]) -> None:
        """``call``: the child's ``Outages.call``, which rides out an outage meanwhile."""
        self._broker, self._call = broker, call

    def reject(self, delivery: Delivery, reason: str) -> None:
        try:
            self._call("broker", self._broker.reject, delivery, reason)
        except BrokerError as exc:  # not BrokerUnavailable: ridden out by the call
            log.error(
                "message_reject_failed",
                queue=delivery.queue,
                reason=reason,
                error=str(exc),
                kept="leased to this child until it stops",
            )

    def malformed(
        self, delivery: Delivery, reason: str, received_at: GoTime, writes: WriteBuffer
    ) -> None:
        """A message that is no signature taskd can run; where its UUID can be read, its
        sender sees FAILURE with the reason instead of waiting on PENDING for ever."""
        task_id, name = identity_of(delivery.body)
        log.error("message_rejected", queue=delivery.queue, reason=reason, body=preview(delivery))
        if task_id:
            failed = TaskState(task_id, State.FAILURE, task_name=name, created_at=received_at)
            writes.add_state(failed.with_changes(error=reason))
            writes.flush()  # a refusal for good is logged: the letter keeps the reason
        self.reject(delivery, reason)
