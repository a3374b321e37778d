"""Every exception taskd raises, and nothing else.

The class says whether a failure is transient (``*Unavailable``: retry later, lose nothing)
or permanent; the message says what, where and which, and the context stays on attributes so
logs can carry it as keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class TaskdError(Exception):
    """Base of every error taskd raises on purpose."""


class ConfigError(TaskdError):
    """A configuration value is missing, unknown or invalid."""

    def __init__(self, key: str, reason: str, file: str | None = None) -> None:
        self.key, self.reason, self.file = key, reason, file
        where = f"{file}: " if file else ""
        super().__init__(f"{where}{key}: {reason}" if key else f"{where}{reason}")


class PluginError(TaskdError):
    """A task plugin or module could not be loaded."""

    def __init__(self, plugin: str, reason: str) -> None:
        self.plugin, self.reason = plugin, reason
        super().__init__(f"task plugin {plugin!r} failed to load: {reason}")


class WireError(TaskdError):
    """A value does not fit machinery's wire format."""


class DecodeError(WireError):
    """A message or stored record is not valid machinery JSON."""

    def __init__(self, reason: str, raw: bytes | None = None) -> None:
        self.reason, self.raw = reason, raw
        super().__init__(reason)


class ArgumentError(WireError):
    """A typed argument does not fit its declared type or the task's parameter."""

    def __init__(self, reason: str, *, task: str | None = None, index: int | None = None) -> None:
        self.reason, self.task, self.index = reason, task, index
        argument = "" if index is None else f"argument {index + 1}"
        owner = "" if task is None else f"task {task!r}"
        where = f"{argument} of {owner}" if argument and owner else argument or owner
        super().__init__(f"{where}: {reason}" if where else reason)


class TaskNotFound(TaskdError):
    """No task is registered under a name."""

    def __init__(self, name: str, queue: str | None = None) -> None:
        self.name, self.queue = name, queue
        where = f" (queue {queue!r})" if queue else ""
        super().__init__(f"task {name!r} is not registered{where}")


class DriverError(TaskdError):
    """A broker or result backend operation failed. ``unsent`` (on the Unavailable errors):
    nothing was done that doing it again would duplicate (no connection could be made, or the
    server refused all of it; for a send, its messages were not published), so a client's
    send rides out such an outage (``client.send_patience``)."""

    def __init__(self, driver: str, reason: str, *, unsent: bool = False) -> None:
        self.driver, self.reason, self.unsent = driver, reason, unsent
        super().__init__(f"{driver}: {reason}")


class BrokerError(DriverError):
    """A broker operation failed for good."""

    def __init__(
        self, driver: str, reason: str, queue: str | None = None, *, unsent: bool = False
    ) -> None:
        self.queue = queue
        super().__init__(driver, f"queue {queue!r}: {reason}" if queue else reason, unsent=unsent)


class BrokerUnavailable(BrokerError):
    """The broker cannot be reached now; the operation may succeed later."""


class BrokerFull(BrokerError):
    """The broker refused a message for now (RabbitMQ's nack: a bounded queue at its limit),
    and may take it once consumers make room. A client's send raises it (back-pressure); a
    worker waits a while for room for what a task sets off."""


class UnknownDeadLetters(BrokerError):
    """Ids that are not among a queue's dead letters (mistyped, or dropped meanwhile)."""

    def __init__(self, driver: str, queue: str, ids: Sequence[str]) -> None:
        self.ids = tuple(ids)
        listed = ", ".join(self.ids)
        super().__init__(
            driver,
            f"no dead letter with id {listed} (taskctl queue dead {queue} lists them)",
            queue,
        )


class BackendError(DriverError):
    """A result backend operation failed for good."""

    def __init__(
        self, driver: str, reason: str, task_id: str | None = None, *, unsent: bool = False
    ) -> None:
        self.task_id = task_id
        super().__init__(driver, f"{task_id}: {reason}" if task_id else reason, unsent=unsent)


class BackendUnavailable(BackendError):
    """The result backend cannot be reached now; the operation may succeed later."""


class NotSupported(DriverError):
    """The driver does not offer an optional operation or feature."""

    def __init__(self, driver: str, operation: str, detail: str = "") -> None:
        self.operation = operation
        extra = f" ({detail})" if detail else ""
        super().__init__(driver, f"{operation} is not supported by this driver{extra}")


class DocumentError(TaskdError):
    """A workflow document that cannot be turned into signatures; the message says where."""


class TaskFailed(TaskdError):
    """A task ended in FAILURE; raised by ``AsyncResult.get``."""

    def __init__(self, task_id: str, error: str) -> None:
        self.task_id, self.error = task_id, error
        super().__init__(f"task {task_id} failed: {error}")


class ResultTimeout(TaskdError):
    """A task did not finish within the time a caller waited."""

    def __init__(self, task_id: str, timeout_s: float, state: str | None) -> None:
        self.task_id, self.timeout_s, self.state = task_id, timeout_s, state
        super().__init__(
            f"task {task_id} not finished after {timeout_s:g}s (state {state or 'unknown'})"
        )


class SendError(TaskdError):
    """Sends the broker refused, or did not confirm before its connection was lost: they
    may or may not be queued. ``signatures`` holds them, to send again (a task run twice
    is what at-least-once allows; a task never sent is what this error prevents)."""

    def __init__(self, signatures: Sequence[Any], cause: BaseException) -> None:
        self.signatures, self.cause = tuple(signatures), cause
        self.task_ids = tuple(sig.uuid for sig in self.signatures)
        names = ", ".join(f"{sig.name} {sig.uuid}" for sig in self.signatures[:5])
        more = f" and {len(self.signatures) - 5} more" if len(self.signatures) > 5 else ""
        super().__init__(f"not confirmed by the broker: {names}{more}: {cause}")


class GiveUp(Exception):  # control flow, not an error
    """A worker asked to stop during an outage leaves now; whatever it did not ack is
    delivered again."""


class DriverStale(DriverError):
    """What the driver's URL names is no longer what it opened (an SQLite file deleted or
    replaced while taskd had it open): nothing sent there reaches it any more. A fresh
    connection, opened anew, does (a worker makes way for a fresh child)."""


class Retry(Exception):  # control flow, not an error: machinery's ErrRetryTaskLater
    """Raised by a task to run again after ``countdown_s``; honours the signature's RetryCount."""

    def __init__(self, countdown_s: float = 0.0, reason: str = "retry requested") -> None:
        # Refused where the task raises it, so its traceback shows the line at fault.
        if isinstance(countdown_s, bool) or not isinstance(countdown_s, int | float):
            raise TypeError(f"Retry countdown_s must be seconds, got {type(countdown_s).__name__}")
        if not 0 <= countdown_s < float("inf"):
            raise ValueError(f"Retry countdown_s must be 0 or more seconds, got {countdown_s}")
        if not isinstance(reason, str):
            raise TypeError(f"Retry reason must be a str, got {type(reason).__name__}")
        self.countdown_s, self.reason = countdown_s, reason
        super().__init__(reason)


class SoftTimeLimitExceeded(Exception):  # raised inside a task, to tell it, as Retry is by one
    """Raised inside a task that runs past its soft time limit (``soft_time_limit``). The task
    may catch it, clean up and return a result; uncaught, it fails the task like any other
    exception (retried while RetryCount lasts). The hard limit (``time_limit``) gives no
    such warning: the task's child is killed."""

    def __init__(self, limit_s: float = 0.0) -> None:
        self.limit_s = limit_s
        super().__init__("soft time limit exceeded")
