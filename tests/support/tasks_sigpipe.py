"""A task module that behaves like a Unix tool when imported: SIGPIPE back to its default
(so that a closed pipe ends the process quietly), as command-line code often does."""

from __future__ import annotations

import signal

from taskd import task

signal.signal(signal.SIGPIPE, signal.SIG_DFL)


@task
def pipe_default_again() -> str:
    """Sets it again while it runs, as such code may."""
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    return "set"
