"""Time limits: how long a task may run, the soft limit's alarm, and the table of deadlines.

A task's limits, in seconds (0: none), come from the first of: its signature's headers
``time_limit`` and ``soft_time_limit`` (so Go producers can set them), its ``@task(time_limit=,
soft_time_limit=)``, and ``worker.time_limit`` / ``worker.soft_time_limit``.

Soft: an ITIMER_REAL alarm raises SoftTimeLimitExceeded inside the task (tasks run in the
child's main thread, where Python runs signal handlers); the task may catch it, clean up and
return a result. Hard: before the task runs, the child writes its deadline, id and name in its
slot of ``RunningTasks`` (``taskd.worker.running``); the supervisor
(``taskd.worker.kills``) stops a child whose task is past its deadline, records the task
as RETRY (RetryCount left) or FAILURE with the error ``time limit exceeded``, and kills the
child with SIGKILL, which no task can catch, ignore or outlast in C code. The message comes
back because its consumer died; the child that takes it finds that state
(``killed_at_time_limit``) and settles it without running it again
(``taskd.worker.execute.outcome_of_stored``): a retry sent, or error callbacks and the chord's
error path run.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Coroutine, Generator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any

from taskd.config import WorkerConfig
from taskd.errors import SoftTimeLimitExceeded
from taskd.registry import Task, limit_seconds
from taskd.wire import Signature, State, TaskState
from taskd.wire.signature import SOFT_TIME_LIMIT_HEADER, TIME_LIMIT_HEADER

TIME_LIMIT_EXCEEDED = "time limit exceeded"  # the error of a task killed at its hard limit
LONGEST_ALARM_S = 10 * 365 * 86_400.0  # a longer soft limit is this one (setitimer's range)


@dataclass(frozen=True, slots=True)
class Limits:
    hard_s: float = 0.0  # 0: none
    soft_s: float = 0.0
    error: str = ""  # a header that is no number of seconds: the task fails with this, unrun


NO_LIMITS = Limits()
NOTHING = nullcontext()  # reusable: what a task without a limit runs in


def limits_of(sig: Signature, task: Task, worker: WorkerConfig) -> Limits:
    """The limits ``task`` runs under for ``sig``: header, else decorator, else config."""
    headers = sig.headers or {}
    if TIME_LIMIT_HEADER not in headers and SOFT_TIME_LIMIT_HEADER not in headers:
        hard_s = worker.time_limit if task.time_limit_s is None else task.time_limit_s
        soft_s = (
            worker.soft_time_limit if task.soft_time_limit_s is None else task.soft_time_limit_s
        )
        return Limits(hard_s, soft_s) if hard_s or soft_s else NO_LIMITS  # (the hot path)
    try:
        hard_s = _first(headers, TIME_LIMIT_HEADER, task.time_limit_s, worker.time_limit)
        soft_s = _first(
            headers, SOFT_TIME_LIMIT_HEADER, task.soft_time_limit_s, worker.soft_time_limit
        )
    except ValueError as exc:
        return Limits(error=str(exc))
    return Limits(hard_s, soft_s)


def _first(
    headers: Mapping[str, Any], key: str, decorated: float | None, configured: float
) -> float:
    value = headers.get(key)
    if value is not None:  # a null header is no header
        return limit_seconds(value, f"header {key!r}")
    return configured if decorated is None else decorated


def killed_at_time_limit(stored: TaskState) -> bool:
    """Whether a stored state is the supervisor's record of a task it killed at its hard
    limit with RetryCount left (a final one is FAILURE, which any redelivery settles)."""
    return stored.state is State.RETRY and stored.error == TIME_LIMIT_EXCEEDED


# -- the soft limit ---------------------------------------------------------------------------


class SoftLimit:
    """``with SoftLimit(seconds):`` raises SoftTimeLimitExceeded in the block once ``seconds``
    have passed; does nothing for 0, or outside the main thread (no handler could run).

    The alarm fires once. The SIGALRM handler and timer found on entry are put back on exit
    (the child's ignores a stray alarm: ``signals``), so nothing else of the child's signal
    handling changes. An alarm that goes off as the block ends is dropped: the block's own outcome
    stands.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = min(seconds, LONGEST_ALARM_S)
        self._active = seconds > 0 and threading.current_thread() is threading.main_thread()
        self._armed = False
        self._previous: Any = signal.SIG_DFL  # the SIGALRM handler found on entry
        self._previous_timer = (0.0, 0.0)
        self._entered_at = 0.0

    def __enter__(self) -> SoftLimit:
        if self._active:
            self._previous_timer = signal.setitimer(signal.ITIMER_REAL, 0)  # stopped first
            self._previous = signal.signal(signal.SIGALRM, self._on_alarm)
            self._entered_at = time.monotonic()
            self._armed = True
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        if not self._active:
            return
        try:
            self._disarm()
        except SoftTimeLimitExceeded:  # went off on the way out (at most once: it disarms)
            self._disarm()

    def _on_alarm(self, _signum: int, _frame: FrameType | None) -> None:
        if self._armed:
            self._armed = False
            raise SoftTimeLimitExceeded(self.seconds)

    def _disarm(self) -> None:
        self._armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL if self._previous is None else self._previous)
        delay_s, interval_s = self._previous_timer
        if delay_s > 0:  # someone else's timer, set back with what was left of it
            left_s = max(delay_s - (time.monotonic() - self._entered_at), 0.001)
            signal.setitimer(signal.ITIMER_REAL, left_s, interval_s)


def run_async(coroutine: Coroutine[Any, Any, Any], soft_s: float = 0.0) -> Any:
    """An ``async def`` task's value: run on an event loop of its own, closed after it (what
    it left running is cancelled), so no call shares a loop with another.

    Its soft limit is the loop's timer, not SIGALRM (raised in the loop's own code, it could
    not be caught by the task): SoftTimeLimitExceeded is thrown in at the ``await`` the task
    is suspended in when ``soft_s`` have passed; a task busy computing gets it at its next
    ``await`` (the hard limit stops one that never awaits).
    """
    import asyncio  # only where a task is async: the import costs a child ~10 ms once

    async def limited() -> Any:
        if soft_s <= 0:
            return await coroutine
        task = asyncio.current_task()
        assert task is not None
        soft = _SoftLimited(coroutine, task, soft_s, asyncio.CancelledError)
        timer = asyncio.get_running_loop().call_later(soft_s, soft.expire)
        try:
            return await soft
        finally:
            timer.cancel()

    return asyncio.run(limited())


class _SoftLimited:
    """Awaits ``coroutine`` step by step, as its Task would, so that the cancellation the soft
    limit sets off reaches the coroutine as SoftTimeLimitExceeded instead (once; any other
    cancellation passes through as it is)."""

    def __init__(
        self,
        coroutine: Coroutine[Any, Any, Any],
        task: Any,
        soft_s: float,
        cancelled: type[BaseException],  # asyncio's CancelledError, imported only when needed
    ) -> None:
        self.coroutine, self.task, self.soft_s, self.cancelled = coroutine, task, soft_s, cancelled
        self.expired = False

    def expire(self) -> None:
        self.expired = True
        self.task.cancel()  # wakes the task at the future it awaits

    def __await__(self) -> Generator[Any, Any, Any]:
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            try:
                waited_on = (
                    self.coroutine.send(sent) if thrown is None else self.coroutine.throw(thrown)
                )
            except StopIteration as returned:
                return returned.value
            sent = thrown = None
            try:
                sent = yield waited_on
            except GeneratorExit:  # closed unfinished: so is the coroutine
                self.coroutine.close()
                raise
            except BaseException as exc:  # the coroutine's to handle, at its await
                thrown = exc
                if self.expired and isinstance(exc, self.cancelled):
                    self.expired = False
                    self.task.uncancel()  # spent here: asyncio.timeout() and the like still work
                    thrown = SoftTimeLimitExceeded(self.soft_s)
