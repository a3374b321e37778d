"""Time limits: how long a task may run, the soft limit's alarm, and the table of deadlines.

A task's limits, in seconds (0: none), come from the first of: its signature's headers
``time_limit`` and ``soft_time_limit`` (so Go producers can set them), its ``@task(time_limit=,
soft_time_limit=)``, and ``worker.time_limit`` / ``worker.soft_time_limit``.

Soft: an ITIMER_REAL alarm raises SoftTimeLimitExceeded inside the task (tasks run in the
child's main thread, where Python runs signal handlers); the task may catch it, clean up and
return a result. Hard: before the task runs, the child writes its deadline, id and name in its
slot of ``TaskClocks`` (shared memory, as ``ChildLiveness``); the supervisor
(``taskd.worker.timekeeper``) stops a child whose task is past its deadline, records the task
as RETRY (RetryCount left) or FAILURE with the error ``time limit exceeded``, and kills the
child with SIGKILL, which no task can catch, ignore or outlast in C code. The message comes
back because its consumer died; the child that takes it finds that state
(``killed_at_time_limit``) and settles it without running it again
(``taskd.worker.execute.outcome_of_stored``): a retry sent, or error callbacks and the chord's
error path run.
"""

from __future__ import annotations

import mmap
import os
import signal
import struct
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any

from taskd.config import WorkerConfig
from taskd.errors import SoftTimeLimitExceeded
from taskd.registry import Task, limit_seconds
from taskd.wire import Signature, State, TaskState

TIME_LIMIT_HEADER = "time_limit"  # Headers keys, seconds: a number, or its decimal text
SOFT_TIME_LIMIT_HEADER = "soft_time_limit"
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


def deadline(
    clocks: TaskClocks | None, slot: int, sig: Signature, limit_s: float
) -> AbstractContextManager[None]:
    """``with deadline(...):`` around a task: its hard limit in the supervisor's table; nothing
    without a limit, or without a supervisor (a child run in-process)."""
    if clocks is None or limit_s <= 0:
        return NOTHING
    return clocks.running(slot, sig, limit_s)


def killed_at_time_limit(stored: TaskState) -> bool:
    """Whether a stored state is the supervisor's record of a task it killed at its hard
    limit with RetryCount left (a final one is FAILURE, which any redelivery settles)."""
    return stored.state is State.RETRY and stored.error == TIME_LIMIT_EXCEEDED


# -- the soft limit ---------------------------------------------------------------------------


class SoftLimit:
    """``with SoftLimit(seconds):`` raises SoftTimeLimitExceeded in the block once ``seconds``
    have passed; does nothing for 0, or outside the main thread (no handler could run).

    The alarm fires once. The SIGALRM handler and timer found on entry are put back on exit
    (the child has none; a test runner may), so nothing else of the child's signal handling
    changes. An alarm that goes off as the block ends is dropped: the block's own outcome
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


# -- the hard limit's table -----------------------------------------------------------------

# deadline (monotonic seconds; 0: none), pid, limit (seconds), RetryCount left (0/1), and the
# lengths of the task's id and name (UTF-8), which follow in the slot.
_HEAD = struct.Struct("=dqdIHH")
ID_BYTES = 256  # a longer task id cannot be recorded: the task is killed all the same
NAME_BYTES = 128  # a longer name is cut (the stored record's own name is kept anyway)
_ENTRY_SIZE = _HEAD.size + ID_BYTES + NAME_BYTES
_DEADLINE = struct.Struct("=d")  # the head's first field: written last, cleared first


@dataclass(frozen=True, slots=True)
class Running:
    """A task running under a hard limit, as its child wrote it in its slot."""

    pid: int
    deadline_s: float  # time.monotonic() (system-wide) at which it is past its limit
    limit_s: float
    retries_left: bool
    task_id: str | None  # None: too long to keep here
    task_name: str


class TaskClocks:
    """Per child slot, the task running under a hard limit: written by the child before and
    after each such task, read by the supervisor. Shared anonymous memory, made before the
    fork; a slot names its writer's pid, so whatever a dead child left is never taken for its
    successor's."""

    def __init__(self, slots: int) -> None:
        self._slots = slots
        self._mem = mmap.mmap(-1, slots * _ENTRY_SIZE)

    @property
    def slots(self) -> int:
        return self._slots

    def start(self, slot: int, sig: Signature, limit_s: float) -> None:
        """The task of ``sig`` starts now in ``slot`` and may run ``limit_s`` (child)."""
        offset = slot * _ENTRY_SIZE
        task_id, name = sig.uuid.encode(), sig.name.encode()[:NAME_BYTES]
        if len(task_id) > ID_BYTES:
            task_id = b""
        head = _HEAD.pack(
            0.0, os.getpid(), limit_s, int(sig.retry_count > 0), len(task_id), len(name)
        )
        entry = head + task_id.ljust(ID_BYTES, b"\0") + name.ljust(NAME_BYTES, b"\0")
        self._mem[offset : offset + _ENTRY_SIZE] = entry
        _DEADLINE.pack_into(self._mem, offset, time.monotonic() + limit_s)  # now it counts

    def finish(self, slot: int) -> None:
        """The task ended (child): no deadline any more."""
        _DEADLINE.pack_into(self._mem, slot * _ENTRY_SIZE, 0.0)

    @contextmanager
    def running(self, slot: int, sig: Signature, limit_s: float) -> Iterator[None]:
        """``with clocks.running(slot, sig, limit_s):`` around a task (child)."""
        self.start(slot, sig, limit_s)
        try:
            yield
        finally:
            self.finish(slot)

    def read(self, slot: int) -> Running | None:
        """The task running under a deadline in ``slot``, if any (supervisor)."""
        offset = slot * _ENTRY_SIZE
        deadline_s, pid, limit_s, retries, id_len, name_len = _HEAD.unpack_from(self._mem, offset)
        if not deadline_s:
            return None
        at = offset + _HEAD.size
        task_id = bytes(self._mem[at : at + min(id_len, ID_BYTES)]).decode("utf-8", "replace")
        at += ID_BYTES
        name = bytes(self._mem[at : at + min(name_len, NAME_BYTES)]).decode("utf-8", "replace")
        return Running(pid, deadline_s, limit_s, bool(retries), task_id or None, name)
