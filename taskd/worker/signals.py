"""A worker child's signals: what it installs, what it keeps after each task, and what the
processes its tasks fork get back.

The supervisor decides what SIGINT, SIGHUP, SIGTTIN and SIGTTOU mean, so a child ignores
them; SIGTERM asks it to finish its task and stop, SIGQUIT to stop at once. A task that leaves
a SIGTERM handler of its own behind gets the child's put back (``kept``): else the child never
heard the drain, and every stop waited out its timeout and killed it. A process a task forks
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
from taskd.exitcodes import EXIT_OK
from taskd.registry import pipe_errors_kept

log = logs.get_logger("taskd.worker")
IGNORED = (signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU)
_FIX = "restore the handler before the task returns, or run such code in a subprocess"
_forks_get_defaults = False


def install(on_term: Callable[[int, Any], None]) -> None:
    """The child's handlers, in the child, before it serves."""
    global _forks_get_defaults  # noqa: PLW0603 (one hook per process, whatever calls this)
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGQUIT, _on_quit)
    for ignored in IGNORED:
        signal.signal(ignored, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    if not _forks_get_defaults:
        os.register_at_fork(before=_hold, after_in_parent=_release, after_in_child=_defaults)
        _forks_get_defaults = True


def kept(term: Any) -> None:
    """After a task: the child's SIGTERM handler ``term`` back where the task left its own,
    and SIGPIPE ignored again (``registry.pipe_errors_kept``)."""
    if signal.getsignal(signal.SIGTERM) is not term:
        signal.signal(signal.SIGTERM, term)
        log.warning("task_signal_handler_replaced", signal="SIGTERM", fix=_FIX)
    pipe_errors_kept("task")


_HELD = {signal.SIGTERM, signal.SIGQUIT}


def _hold() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)


def _release() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD)


def _defaults() -> None:
    """In a process a task forked: Python's own dispositions, as its code expects."""
    for signum in (signal.SIGTERM, signal.SIGQUIT, signal.SIGUSR1, *IGNORED):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _release()


def _on_quit(_signum: int, _frame: object) -> None:
    os._exit(EXIT_OK)  # exit now; whatever this child held is delivered again
