"""Child recycling: a child that ran ``worker.max_tasks_per_child`` tasks, or whose resident
memory reached ``worker.max_memory_per_child`` MiB (checked after each task), or whose tasks
left it nearly out of file descriptors (looked at after a task, once a second at most: a
child that cannot open one cannot sync its database, nor connect again after an outage),
makes way for a fresh one.

The child finishes the task it runs, hands back what it prefetched (as on SIGTERM), and exits
with EXIT_CHILD_RECYCLE; the supervisor logs it as recycled and forks a replacement at once,
without the backoff of a crash. Nothing is lost or run twice: every message it took is either
settled or handed back. While a task limit is set a child takes no more messages than it has
tasks left, so little is handed back.
"""

from __future__ import annotations

import os
import resource
import sys
import time

from taskd import logs
from taskd.config import WorkerConfig

log = logs.get_logger("taskd.worker")

MIB = 1024 * 1024
DESCRIPTORS_CHECK_S = 1.0  # how often a child counts its open file descriptors, at most
DESCRIPTORS_HEADROOM = 32  # fewer free than this (an eighth of a small limit): make way


def descriptors() -> tuple[int, int]:
    """This process's open file descriptors and its limit on them (0, 0 where unknown)."""
    try:
        return len(os.listdir("/proc/self/fd")), resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except OSError:
        return 0, 0


def resident_mib() -> float:
    """This process's resident memory now (/proc/self/statm), else its peak (getrusage)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / MIB
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB; bytes on macOS
        return peak / (MIB if sys.platform == "darwin" else 1024)


class Recycling:
    """Counts a child's tasks and says when it should be replaced."""

    def __init__(self, worker: WorkerConfig) -> None:
        self.max_tasks = worker.max_tasks_per_child  # 0: no limit
        self.max_memory_mib = worker.max_memory_per_child  # 0: no limit
        self.tasks_run = 0
        self.reason = ""  # why this child makes way for a fresh one; "" while it need not
        self._descriptors_checked_at = -DESCRIPTORS_CHECK_S

    @property
    def due(self) -> bool:
        return bool(self.reason)

    def batch_size(self, wanted: int) -> int:
        """No more messages per fetch than tasks left before the child is replaced."""
        if not self.max_tasks:
            return wanted
        return max(1, min(wanted, self.max_tasks - self.tasks_run))

    def ran(self) -> bool:
        """One more task ran; whether the child should now make way (said once, logged)."""
        self.tasks_run += 1
        if self.reason:
            return True
        resident = 0.0
        if self.max_tasks and self.tasks_run >= self.max_tasks:
            self.reason = "max_tasks_per_child"
        elif self.max_memory_mib and (resident := resident_mib()) >= self.max_memory_mib:
            self.reason = "max_memory_per_child"
        elif self._out_of_descriptors():
            self.reason = "file_descriptors"
        else:
            return False
        log.info(
            "child_recycling",
            reason=self.reason,
            tasks_run=self.tasks_run,
            resident_mib=round(resident or resident_mib(), 1),
        )
        return True

    def _out_of_descriptors(self) -> bool:
        now = time.monotonic()
        if now - self._descriptors_checked_at < DESCRIPTORS_CHECK_S:
            return False
        self._descriptors_checked_at = now
        opened, limit = descriptors()
        if limit <= 0 or limit - opened >= min(DESCRIPTORS_HEADROOM, limit // 8):
            return False  # unknown, unlimited (RLIM_INFINITY is -1) or room enough
        log.warning(
            "child_out_of_descriptors",
            open=opened,
            limit=limit,
            fix="a task leaves files or sockets open: close them (a with block)",
        )
        return True
