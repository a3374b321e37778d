"""Running one task: check its arguments, call it, and say what should happen next.

``execute`` never raises for a failing task or bad arguments; it returns an ``Outcome`` and
leaves recording and acknowledging to the caller.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from enum import Enum
from types import CoroutineType

from taskd.errors import ArgumentError, Retry
from taskd.registry import Task, TaskContext
from taskd.retry import fibonacci_next, with_jitter
from taskd.wire import GoTime, Signature, State, TaskResult, TaskState
from taskd.wire.state import results_from_return
from taskd.worker import signals
from taskd.worker.limits import (
    NO_LIMITS,
    NOTHING,
    TIME_LIMIT_EXCEEDED,
    Limits,
    SoftLimit,
    run_async,
)

ATTEMPT_HEADER = "taskd_attempt"  # rides in Headers; Go workers ignore non-string headers


class Kind(Enum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RETRY = "retry"


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: Kind
    results: tuple[TaskResult, ...] = ()
    error: str = ""
    traceback: str = ""
    retry: Signature | None = None  # the message to send again, with its ETA
    retry_in_s: float = 0.0
    dead_letter: bool = False  # the message can never succeed: keep it aside, not acked


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    jitter: float = 0.0
    max_delay_s: float = 0.0


def attempt_of(sig: Signature) -> int:
    value = (sig.headers or {}).get(ATTEMPT_HEADER, 1)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1


def error_text(exc: BaseException) -> str:
    """What goes in TaskState.Error: the message, as Go's err.Error() would give it."""
    try:
        if isinstance(exc, SystemExit):
            return f"the task called sys.exit({exc.code!r})"
        return str(exc) or type(exc).__name__
    # The task's own classes run here (__str__, __repr__): whatever they raise fails its task,
    # never its worker.
    except BaseException as unreadable:
        return f"{type(exc).__name__} (its message could not be read: {type(unreadable).__name__})"


def execute(
    task: Task, sig: Signature, queue: str, policy: RetryPolicy, limits: Limits = NO_LIMITS
) -> Outcome:
    """Run ``task`` for ``sig``: SUCCEEDED with results, RETRY with the message to resend, or
    FAILED with the error (a task that calls sys.exit() fails too). An ``async def`` task
    runs to its end on an event loop of its own (``run_async``). Bad arguments (or time
    limit headers) fail at once, without retries, as in machinery. SoftTimeLimitExceeded,
    raised in the task at ``limits.soft_s``, is a failure like any other unless the task
    catches it (the hard limit is the caller's)."""
    if limits.error:
        return Outcome(Kind.FAILED, error=limits.error)
    try:
        args = task.bind(sig.args or ())
    except ArgumentError as exc:
        return Outcome(Kind.FAILED, error=str(exc))
    if task.wants_context:
        args.insert(0, TaskContext(sig, attempt_of(sig), queue))
    term = signals.term_handler()  # how the child hears it must stop
    try:
        with SoftLimit(limits.soft_s) if limits.soft_s else NOTHING:
            value = task.fn(*args)
        if type(value) is CoroutineType:  # an async def task: it runs now
            value = run_async(value, limits.soft_s)
    except Retry as request:
        return retry_or_fail(sig, request.reason, request.countdown_s, policy, "")
    # Whatever the task raises ends the task, not its worker: sys.exit(), asyncio's
    # CancelledError, KeyboardInterrupt and other BaseExceptions too (the child ignores SIGINT,
    # so only the task's own code can raise it).
    except BaseException as exc:
        trace = traceback.format_exc()
        if sig.retry_count > 0:
            return retry_or_fail(sig, error_text(exc), None, policy, trace)
        return Outcome(Kind.FAILED, error=error_text(exc), traceback=trace)
    finally:
        signals.after_task(term)
    try:
        results = results_from_return(value, task.returns)
    except ArgumentError as exc:
        return Outcome(Kind.FAILED, error=f"task {task.name!r}: {exc}")
    except Exception as exc:  # the value's own code (a list subclass's __iter__...) raised
        error = f"task {task.name!r}: its return value cannot be read: {error_text(exc)}"
        return Outcome(Kind.FAILED, error=error, traceback=traceback.format_exc())
    return Outcome(Kind.SUCCEEDED, results=results)


def outcome_of_stored(stored: TaskState, sig: Signature, policy: RetryPolicy) -> Outcome:
    """The outcome of a redelivered message whose state was stored before its worker died:
    a task that finished ends as it did; one its supervisor killed at its hard time limit
    (``taskd.worker.limits``) is retried while RetryCount lasts, else fails."""
    if stored.state is State.SUCCESS:
        return Outcome(Kind.SUCCEEDED, results=stored.results or ())
    if stored.error == TIME_LIMIT_EXCEEDED:
        return retry_or_fail(sig, TIME_LIMIT_EXCEEDED, None, policy, "")
    return Outcome(Kind.FAILED, error=stored.error)


def retry_or_fail(
    sig: Signature, error: str, countdown_s: float | None, policy: RetryPolicy, trace: str
) -> Outcome:
    """machinery's retry: RetryCount left -> decrement and send again after a delay.

    The delay is the next Fibonacci number after RetryTimeout, or the countdown a task asked
    for with Retry (which, unlike machinery's ErrRetryTaskLater, also spends RetryCount).
    """
    if sig.retry_count <= 0:
        return Outcome(Kind.FAILED, error=error, traceback=trace)
    retry_timeout = sig.retry_timeout
    if countdown_s is None:
        retry_timeout = fibonacci_next(sig.retry_timeout)
        countdown_s = float(retry_timeout)
    delay_s = with_jitter(countdown_s, policy.jitter, policy.max_delay_s)
    try:
        eta = GoTime.after(delay_s)
    except ValueError as exc:  # a countdown, or a RetryTimeout off the wire, past the latest ETA
        return Outcome(Kind.FAILED, error=f"{error} (not retried: {exc})", traceback=trace)
    headers = {**(sig.headers or {}), ATTEMPT_HEADER: attempt_of(sig) + 1}
    again = sig.with_changes(
        retry_count=sig.retry_count - 1,
        retry_timeout=retry_timeout,
        eta=eta,
        headers=headers,
    )
    return Outcome(Kind.RETRY, error=error, traceback=trace, retry=again, retry_in_s=delay_s)
