"""What each child is running: a table in shared memory, written by children, read by the
supervisor.

Before each task a child writes, in its slot, the task's id and name, when it started and its
hard time limit's deadline (``taskd.worker.limits``); after it, it clears the slot. The
supervisor reads the table to kill a task past its deadline (``taskd.worker.kills``), to
stop a revoked one (``taskctl revoke --terminate``) and to tell ``taskctl workers`` what each
child runs (``taskd.worker.beacon``). Made before the fork, as ``ChildLiveness``; an entry
names its writer's pid, so whatever a dead child left is never taken for its successor's. A
write is a memory copy of a few hundred bytes: cheap enough for every task.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from dataclasses import dataclass

from taskd.wire import Signature

# started (monotonic seconds; 0: idle), deadline (monotonic seconds; 0: no hard limit), pid,
# limit (seconds), RetryCount left (0/1), and the lengths of the task's id and name (UTF-8),
# which follow in the slot.
_HEAD = struct.Struct("=ddqdIHH")
ID_BYTES = 256  # a longer task id is not kept: that task cannot be recorded or revoked
NAME_BYTES = 128  # a longer name is cut (the stored record's own name is kept anyway)
_ENTRY_SIZE = _HEAD.size + ID_BYTES + NAME_BYTES
_STARTED = struct.Struct("=d")  # the head's first field: written last, cleared first
# This process's pid, kept current across forks: looking it up is a syscall, once per task.
_PID = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))


@dataclass(frozen=True, slots=True)
class Running:
    """A task running in a child, as the child wrote it in its slot."""

    pid: int
    started_s: float  # time.monotonic() (system-wide) when it started
    deadline_s: float  # ...at which it is past its hard limit; 0: it has none
    limit_s: float
    retries_left: bool
    task_id: str | None  # None: too long to keep here
    task_name: str


class RunningTasks:
    def __init__(self, slots: int) -> None:
        self._slots = slots
        self._mem = mmap.mmap(-1, slots * _ENTRY_SIZE)

    @property
    def slots(self) -> int:
        return self._slots

    def start(self, slot: int, sig: Signature, limit_s: float = 0.0) -> None:
        """The task of ``sig`` starts now in ``slot``, with a hard limit of ``limit_s``
        seconds (0: none) (child). Written in place: this runs before every task."""
        offset = slot * _ENTRY_SIZE
        task_id, name = sig.uuid.encode(), sig.name.encode()[:NAME_BYTES]
        if len(task_id) > ID_BYTES:
            task_id = b""
        now = time.monotonic()
        _HEAD.pack_into(
            self._mem,
            offset,
            0.0,
            now + limit_s if limit_s > 0 else 0.0,
            _PID[0],
            limit_s,
            int(sig.retry_count > 0),
            len(task_id),
            len(name),
        )
        at = offset + _HEAD.size
        self._mem[at : at + len(task_id)] = task_id  # the lengths say where each one ends
        at += ID_BYTES
        self._mem[at : at + len(name)] = name
        _STARTED.pack_into(self._mem, offset, now)  # now it counts

    def finish(self, slot: int) -> None:
        """The task ended (child): the slot is idle."""
        _STARTED.pack_into(self._mem, slot * _ENTRY_SIZE, 0.0)

    def read(self, slot: int) -> Running | None:
        """The task running in ``slot``, if any (supervisor)."""
        offset = slot * _ENTRY_SIZE
        started_s, deadline_s, pid, limit_s, retries, id_len, name_len = _HEAD.unpack_from(
            self._mem, offset
        )
        if not started_s:
            return None
        at = offset + _HEAD.size
        task_id = bytes(self._mem[at : at + min(id_len, ID_BYTES)]).decode("utf-8", "replace")
        at += ID_BYTES
        name = bytes(self._mem[at : at + min(name_len, NAME_BYTES)]).decode("utf-8", "replace")
        return Running(pid, started_s, deadline_s, limit_s, bool(retries), task_id or None, name)
