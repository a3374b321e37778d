"""The supervisor's side of hard time limits: stop, record, kill (see ``taskd.worker.limits``).

When a child's task is past the deadline in its ``TaskClocks`` slot, the supervisor:

1. stops the child (SIGSTOP, which nothing can catch) and waits until it is stopped, so it
   can neither finish and settle the task meanwhile nor look less late than it is;
2. reads the slot again: a task that ended meanwhile (no deadline, or a later one) is left
   alone and the child continued (SIGCONT);
3. records the task in the result backend as RETRY (RetryCount left) or FAILURE with the
   error ``time limit exceeded``, while the child still holds its message: a stopped process
   is alive, so its message cannot come back to anyone before the record is there;
4. kills the child (SIGKILL). The supervisor marks it as asked to stop, so it is replaced at
   once and its death is no crash; the message comes back and the child that takes it
   settles it from the record without running it.

The record is the only driver call the supervisor makes in its loop; it blocks the loop as
long as the backend takes (milliseconds; during an outage, up to the driver's timeouts). If it
fails, the child is killed all the same and the record tried once more (a stopped child may
have held a lock the write needed, as an SQLite transaction of its heartbeat thread); if that
fails too, the task runs again when its message comes back, under the same limit, until
``worker.max_deliveries`` sets it aside.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import structlog

from taskd.backends import open_backend
from taskd.config import Config
from taskd.wire import GoTime, State, TaskState
from taskd.worker.limits import TIME_LIMIT_EXCEEDED, Running, TaskClocks

if TYPE_CHECKING:
    from taskd.worker.supervisor import ChildProcess

log = structlog.get_logger("taskd.supervisor")

STOP_WAIT_S = 1.0  # longest wait for a child to be stopped (one in uninterruptible sleep)
STOP_POLL_S = 0.001


class Timekeeper:
    def __init__(self, clocks: TaskClocks) -> None:
        self.clocks = clocks

    def wait_s(self, children: Iterable[ChildProcess], longest_s: float) -> float:
        """How long the supervisor's loop may wait before a known deadline passes."""
        now = time.monotonic()
        for child in children:
            running = self._running(child)
            if running is not None:
                longest_s = min(longest_s, max(0.0, running.deadline_s - now))
        return longest_s

    def enforce(self, children: Iterable[ChildProcess], config: Config) -> list[ChildProcess]:
        """Kill the children whose task is past its hard limit, each task recorded first;
        the children killed (the caller marks them as asked to stop)."""
        killed = []
        for child in list(children):
            running = self._running(child)
            late = running is not None and running.deadline_s <= time.monotonic()
            if late and self._stop_record_kill(child, config):
                killed.append(child)
        return killed

    def _running(self, child: ChildProcess) -> Running | None:
        if child.slot >= self.clocks.slots:
            return None
        running = self.clocks.read(child.slot)
        return running if running is not None and running.pid == child.pid else None

    def _stop_record_kill(self, child: ChildProcess, config: Config) -> bool:
        if not _stopped(child.pid):
            return False  # it exited meanwhile: the reaper hears of it
        running = self._running(child)  # read again, with the child frozen
        if running is None or running.deadline_s > time.monotonic():
            _signal(child.pid, signal.SIGCONT)  # it finished in time after all
            return False
        log.error(
            "task_time_limit_exceeded",
            task_id=running.task_id,
            task=running.task_name,
            child=child.slot,
            child_pid=child.pid,
            time_limit_s=running.limit_s,
        )
        recorded = _record(running, config)
        _signal(child.pid, signal.SIGKILL)
        if not recorded and running.task_id is not None:
            _record(running, config)  # its death released whatever it held
        return True


def _stopped(pid: int) -> bool:
    """SIGSTOP ``pid`` and wait until it is stopped; False if it exited instead."""
    if not _signal(pid, signal.SIGSTOP):
        return False
    flags = os.WEXITED | os.WSTOPPED | os.WNOWAIT | os.WNOHANG  # WNOWAIT: the reaper's to reap
    give_up_at = time.monotonic() + STOP_WAIT_S
    while time.monotonic() < give_up_at:
        try:
            status = os.waitid(os.P_PID, pid, flags)
        except ChildProcessError:
            return False
        if status is not None:
            return status.si_code in (os.CLD_STOPPED, os.CLD_TRAPPED)
        time.sleep(STOP_POLL_S)
    return True  # not stopped yet (uninterruptible sleep): it will be before it runs Python


def _record(running: Running, config: Config) -> bool:
    """Store the killed task's state; whether that worked."""
    if running.task_id is None:
        log.error("time_limit_not_recorded", task=running.task_name, error="task id too long")
        return False
    state = TaskState(
        running.task_id,
        State.RETRY if running.retries_left else State.FAILURE,
        task_name=running.task_name,
        error=TIME_LIMIT_EXCEEDED,
        created_at=GoTime.now(),  # the stored record's CreatedAt is kept (machinery's merge)
    )
    backend = None
    try:
        backend = open_backend(config)
        backend.set_states([state])
    except Exception as exc:  # no driver error may take the supervisor down
        log.error("time_limit_not_recorded", task_id=running.task_id, error=str(exc))
        return False
    finally:
        if backend is not None:
            with contextlib.suppress(Exception):
                backend.close()
    return True


def _signal(pid: int, signum: int) -> bool:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True
