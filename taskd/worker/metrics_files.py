"""prometheus-client's files in multiprocess mode, backed with disk blocks before it needs
them: it writes them through a memory map, and a page a full filesystem (a full /tmp) cannot
back then kills the process with SIGBUS."""

from __future__ import annotations

import contextlib
import errno
import os

BYTES_PER_TASK = 16_384  # a task's labels in a process's files (both histograms, all states)
RESERVED_FIRST_TASKS = 3  # a child's files are backed for this many tasks when it starts


def file_bytes(tasks: int) -> int:
    """A size for a process's metrics file that the labels of ``tasks`` tasks fit in, as
    prometheus-client would grow it (doubling from 64 KiB): it then finds it backed."""
    size = 1 << 16
    while size < tasks * BYTES_PER_TASK:
        size *= 2
    return size


def reserved(path: str, size: int) -> bool:
    """The first ``size`` bytes of ``path`` (made if missing) backed by disk blocks; False,
    and no file left, where the filesystem has no room."""
    made = not os.path.exists(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # cannot reserve here: as before
            return True
        if made:
            with contextlib.suppress(OSError):
                os.remove(path)
        return False
    return True
