"""A child's life as a process: what a freshly forked child does first (tie its life to its
supervisor's), and how it is killed with the processes its task started."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from pathlib import Path

from taskd.exitcodes import EXIT_OK

PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies


def stop_with(supervisor_pid: int) -> None:
    """Have the kernel TERM this child if the supervisor dies (kill -9, OOM), so children
    never go on working unsupervised; if it already died, leave now."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the liveness check still holds
        pass
    if os.getppid() != supervisor_pid:
        os._exit(EXIT_OK)


def kill_with_descendants(pid: int) -> None:
    """SIGKILL ``pid`` and the processes it started, theirs included (a converter its task
    runs, a multiprocessing pool), which lived on as orphans when the child alone was killed
    at a time limit. The tree is stopped first, looked at again for what forked meanwhile,
    then killed. A process that left the tree before (a daemon that double-forked) is not in
    it."""
    stopped: set[int] = set()
    for _ in range(3):
        found = _descendants(pid) - stopped
        if not found:
            break
        for descendant in found:
            send_signal(descendant, signal.SIGSTOP)
        stopped |= found
    for process in (pid, *stopped):
        send_signal(process, signal.SIGKILL)


def _descendants(pid: int) -> set[int]:
    """The processes below ``pid``, read from /proc (empty where there is none)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):  # gone meanwhile
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
    found, pending = set(), [pid]
    while pending:
        for child in children.get(pending.pop(), ()):
            if child not in found:
                found.add(child)
                pending.append(child)
    return found


def send_signal(pid: int, signum: int) -> bool:
    """``signum`` to ``pid``; False where it is gone already (its pid not ours any more)."""
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True
