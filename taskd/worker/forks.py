"""What a freshly forked child does first: tie its life to its supervisor's."""

from __future__ import annotations

import ctypes
import os
import signal

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
