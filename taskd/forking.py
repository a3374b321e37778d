"""What a forked child must not share with its parent: a connection's socket (the parent's
frames and the child's would interleave on it, and each would read the other's replies), or
a lock another thread of the parent held at the fork. A driver's connection holder registers
itself; in every child forked while it lives, its ``forget_parents`` drops the parent's
connections without closing them (they stay the parent's) and makes its locks anew, before
the child goes on (``os.register_at_fork``): an application server's workers forked after a
client was used, say.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol

from taskd import logs

log = logs.get_logger("taskd")


class ForgetsParents(Protocol):
    def forget_parents(self) -> None: ...


_holders: weakref.WeakSet[ForgetsParents] = weakref.WeakSet()  # gone with their objects


def forget_in_children(holder: ForgetsParents) -> None:
    """Have ``holder.forget_parents()`` called in each child forked while it lives."""
    _holders.add(holder)


def _in_child() -> None:  # the child's only thread, so far
    for holder in list(_holders):
        try:
            holder.forget_parents()
        except Exception as exc:  # logged; the others still forget theirs
            log.error("fork_reset_failed", holder=type(holder).__name__, error=str(exc))


os.register_at_fork(after_in_child=_in_child)
