"""A worker child's signals: what it installs, what it keeps after each task, and what the
processes its tasks fork get back.

The supervisor decides what SIGINT, SIGHUP, SIGTTIN and SIGTTOU mean, so a child ignores
them; SIGTERM asks it to finish its task and stop, SIGQUIT to stop at once. A task that leaves
a SIGTERM handler of its own behind gets the child's put back (``after_task``): else the
child never heard the drain, and every stop waited out its timeout and killed it. An alarm a
task leaves behind is ignored when it goes off (``_stray_alarm``). A process a task forks
(multiprocessing's workers) gets the defaults back: multiprocessing ends its workers with
SIGTERM, and with the child's handler they lived on and a pool's ``terminate()`` waited for
ever. SIGTERM and SIGQUIT are held blocked across such a fork, so one sent before the new
process has its defaults waits for them instead of meeting the child's handler.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

from taskd import logs
from taskd.exitcodes import EXIT_FAILURE, EXIT_OK
from taskd.registry import pipe_errors_kept

try:  # CPython's own lookup, without signal.getsignal's Enum conversion (µs, twice a task)
    from _signal import getsignal as _handler
except ImportError:  # another Python
    _handler = signal.getsignal

log = logs.get_logger("taskd.worker")
IGNORED = (signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU)
_HELD = {signal.SIGTERM, signal.SIGQUIT}  # blocked across a task's fork
_FIX = "restore the handler before the task returns, or run such code in a subprocess"
_COPY_FIX = "end a process the task forks with os._exit(), or use multiprocessing"
_forks_get_defaults = False  # the at-fork hooks are registered (once per process)
_in_a_copy = False  # True in a process a task forked (``_defaults``)


def install(on_term: Callable[[int, Any], None]) -> None:
    """The child's handlers, in the child, before it serves."""
    global _forks_get_defaults  # noqa: PLW0603 (one hook per process, whatever calls this)
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGQUIT, _on_quit)
    for ignored in IGNORED:
        signal.signal(ignored, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGALRM, _stray_alarm)  # soft time limits set their own meanwhile
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    if not _forks_get_defaults:
        os.register_at_fork(before=_hold, after_in_parent=_release, after_in_child=_defaults)
        _forks_get_defaults = True


def term_handler() -> Any:
    """The SIGTERM handler now: the child's, before a task (for ``after_task``)."""
    return _handler(signal.SIGTERM)


def after_task(term: Any) -> None:
    """After a task: a copy of the child that the task forked and let return (``os.fork()``
    without ``os._exit`` in the copy) leaves, rather than go on as a second, unsupervised
    worker of the slot; the child's SIGTERM handler ``term`` is put back where the task left
    its own; SIGPIPE is ignored again (``registry.pipe_errors_kept``)."""
    if _in_a_copy:
        log.error("task_fork_returned", parent_pid=os.getppid(), fix=_COPY_FIX)
        os._exit(EXIT_FAILURE)
    if _handler(signal.SIGTERM) is not term:
        signal.signal(signal.SIGTERM, term)
        log.warning("task_signal_handler_replaced", signal="SIGTERM", fix=_FIX)
    if _handler(signal.SIGPIPE) != signal.SIG_IGN:  # the fast look; the registry's is once
        pipe_errors_kept("task")


def _hold() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)


def _release() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD)


def _defaults() -> None:
    """In a process a task forked: Python's own dispositions, as its code expects."""
    global _in_a_copy  # noqa: PLW0603 (this process's own, from the fork on)
    _in_a_copy = True
    for signum in (signal.SIGTERM, signal.SIGQUIT, signal.SIGUSR1, signal.SIGALRM, *IGNORED):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _release()


def _stray_alarm(_signum: int, _frame: object) -> None:
    """An alarm a task set and left behind (``signal.alarm``, an itimer) going off after it
    returned: by default it ended the child in the midst of another task."""
    log.warning("stray_alarm_ignored", fix="cancel the alarm (signal.alarm(0)) before returning")


def _on_quit(_signum: int, _frame: object) -> None:
    os._exit(EXIT_OK)  # exit now; whatever this child held is delivered again
