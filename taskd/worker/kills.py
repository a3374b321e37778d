"""The supervisor kills a running task: one past its hard time limit (``taskd.worker.limits``),
or one revoked with ``--terminate`` (``taskd.revocations``).

Either way, for a child whose task in the ``RunningTasks`` table is due, the supervisor:

1. stops the child (SIGSTOP, which nothing can catch) and waits until it is stopped, so it
   can neither finish and settle the task meanwhile nor look less due than it is;
2. reads the slot again: a task that ended meanwhile (another task, or a later deadline) is
   left alone and the child continued (SIGCONT);
3. records the task in the result backend: at a time limit, RETRY (RetryCount left) or
   FAILURE with the error ``time limit exceeded``; revoked, FAILURE ``revoked``; while the
   child still holds its message: a stopped process is alive, so its message cannot come
   back to anyone before the record is there;
4. kills the child (SIGKILL), with the processes its task started (``forks``). The
   supervisor marks it as asked to stop, so it is replaced at once and its death is no
   crash; the message comes back and the child that takes it settles it from the record
   without running it.

The record is a driver call in the supervisor's loop; it blocks the loop as long as the
backend takes (milliseconds; during an outage, up to the driver's timeouts). If it fails, the
child is killed all the same and the record tried once more (a stopped child may have held a
lock the write needed, as an SQLite transaction of its heartbeat thread); if that fails too,
a task killed at its limit runs again when its message comes back, under the same limit,
until ``worker.max_deliveries`` sets it aside, and a revoked one is settled as revoked by the
child that takes it (``taskd.revocations.RevokedIds``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Collection, Iterable
from typing import TYPE_CHECKING

from taskd import logs
from taskd.backends import ResultBackend, open_backend
from taskd.config import Config
from taskd.revocations import REVOKED
from taskd.wire import GoTime, State, TaskState
from taskd.worker.forks import kill_with_descendants, send_signal
from taskd.worker.limits import TIME_LIMIT_EXCEEDED
from taskd.worker.running import Running, RunningTasks

if TYPE_CHECKING:
    from taskd.worker.supervisor import ChildProcess

log = logs.get_logger("taskd.supervisor")

STOP_WAIT_S = 1.0  # longest wait for a child to be stopped (one in uninterruptible sleep)
STOP_POLL_S = 0.001


class Kills:
    def __init__(
        self, tasks: RunningTasks, connect: Callable[[Config], ResultBackend] = open_backend
    ) -> None:
        self.tasks, self._connect = tasks, connect

    def running(self, child: ChildProcess) -> Running | None:
        """The task ``child`` runs now, if any."""
        if child.slot >= self.tasks.slots:
            return None
        running = self.tasks.read(child.slot)
        return running if running is not None and running.pid == child.pid else None

    def wait_s(self, children: Iterable[ChildProcess], longest_s: float) -> float:
        """How long the supervisor's loop may wait before a known deadline passes."""
        now = time.monotonic()
        for child in children:
            running = self.running(child)
            if running is not None and running.deadline_s:
                longest_s = min(longest_s, max(0.0, running.deadline_s - now))
        return longest_s

    def enforce_time_limits(
        self, children: Iterable[ChildProcess], config: Config
    ) -> list[ChildProcess]:
        """Kill the children whose task is past its hard limit, each task recorded first;
        the children killed (the caller marks them as asked to stop)."""
        return self._kill_where(
            children, config, _late, _time_limit_record, "task_time_limit_exceeded"
        )

    def terminate(
        self, children: Iterable[ChildProcess], task_ids: Collection[str], config: Config
    ) -> list[ChildProcess]:
        """Kill the children running one of ``task_ids`` (revoked with terminate), each task
        recorded FAILURE ``revoked`` first; the children killed."""

        def revoked(running: Running) -> bool:
            return running.task_id in task_ids

        return self._kill_where(children, config, revoked, _revoked_record, "task_terminated")

    def _kill_where(
        self,
        children: Iterable[ChildProcess],
        config: Config,
        due: Callable[[Running], bool],
        record_of: Callable[[Running], TaskState],
        event: str,
    ) -> list[ChildProcess]:
        killed = []
        for child in list(children):
            running = self.running(child)
            if running is None or not due(running) or not _stopped(child.pid):
                continue
            running = self.running(child)  # read again, with the child frozen
            if running is None or not due(running):
                send_signal(child.pid, signal.SIGCONT)  # it finished in time after all
                continue
            log.error(
                event,
                task_id=running.task_id,
                task=running.task_name,
                child=child.slot,
                child_pid=child.pid,
                time_limit_s=running.limit_s or None,
            )
            recorded = self._record(running, record_of, config)
            kill_with_descendants(child.pid)
            if not recorded and running.task_id is not None:
                self._record(running, record_of, config)  # its death released what it held
            killed.append(child)
        return killed

    def _record(
        self, running: Running, record_of: Callable[[Running], TaskState], config: Config
    ) -> bool:
        """Store the killed task's state; whether that worked."""
        if running.task_id is None:
            log.error("kill_not_recorded", task=running.task_name, error="task id too long")
            return False
        backend = None
        try:
            backend = self._connect(config)
            backend.set_states([record_of(running)])
        except Exception as exc:  # no driver error may take the supervisor down
            log.error("kill_not_recorded", task_id=running.task_id, error=str(exc))
            return False
        finally:
            if backend is not None:
                with contextlib.suppress(Exception):
                    backend.close()
        return True


def _late(running: Running) -> bool:
    return 0 < running.deadline_s <= time.monotonic()


def _time_limit_record(running: Running) -> TaskState:
    retry = State.RETRY if running.retries_left else State.FAILURE
    return _failed(running, retry, TIME_LIMIT_EXCEEDED)


def _revoked_record(running: Running) -> TaskState:
    return _failed(running, State.FAILURE, REVOKED)


def _failed(running: Running, state: State, error: str) -> TaskState:
    assert running.task_id is not None
    return TaskState(
        running.task_id,
        state,
        task_name=running.task_name,
        error=error,
        created_at=GoTime.now(),  # the stored record's CreatedAt is kept (machinery's merge)
    )


def _stopped(pid: int) -> bool:
    """SIGSTOP ``pid`` and wait until it is stopped; False if it exited instead."""
    if not send_signal(pid, signal.SIGSTOP):
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
