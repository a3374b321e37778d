"""What each child is running: a table in shared memory, written by children, read by the
supervisor.

Before each task a child writes, in its slot, the task's id and name, when it started and its
hard time limit's deadline (``taskd.worker.limits``); after it, it clears the slot. The
supervisor reads the table to kill a task past its deadline (``taskd.worker.kills``), to
stop a revoked one (``taskctl revoke --terminate``) and to tell ``taskctl workers`` what each
child runs (``taskd.worker.beacon``). Made before the fork, as ``ChildLiveness``; an entry
names its writer's pid, so whatever a dead child left is never taken for its successor's. A
write is a few stores and a copy of the id and name: cheap enough for every task. Its numbers
are cells (``taskd.worker.cells``), never read half written; a read that sees the start time
change under it gives nothing, as it would have a moment later.
"""

from __future__ import annotations

import mmap
import os
import time
from dataclasses import dataclass

from taskd.wire import Signature
from taskd.worker.cells import COUNT, FLOAT, Columns

# started (monotonic seconds; 0: idle; written last, cleared first), deadline (monotonic
# seconds; 0: no hard limit), pid, limit (seconds), RetryCount left (0/1), and the lengths of
# the task's id and name (UTF-8), which are kept in a table of their own.
_COLUMNS = {
    "started": FLOAT,
    "deadline": FLOAT,
    "pid": COUNT,
    "limit": FLOAT,
    "retries": COUNT,
    "id_len": COUNT,
    "name_len": COUNT,
}
ID_BYTES = 256  # a longer task id is not kept: that task cannot be recorded or revoked
NAME_BYTES = 128  # a longer name is cut (the stored record's own name is kept anyway)
_TEXT_SIZE = ID_BYTES + NAME_BYTES
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
        self._table = Columns(slots, _COLUMNS)
        self._started = self._table["started"]
        self._text = mmap.mmap(-1, slots * _TEXT_SIZE)

    @property
    def slots(self) -> int:
        return self._slots

    def start(self, slot: int, sig: Signature, limit_s: float = 0.0) -> None:
        """The task of ``sig`` starts now in ``slot``, with a hard limit of ``limit_s``
        seconds (0: none) (child). Written in place: this runs before every task."""
        task_id, name = sig.uuid.encode(), sig.name.encode()[:NAME_BYTES]
        if len(task_id) > ID_BYTES:
            task_id = b""
        now = time.monotonic()
        table = self._table
        self._started[slot] = 0.0  # cleared by finish() already, unless it never ran
        table["deadline"][slot] = now + limit_s if limit_s > 0 else 0.0
        table["pid"][slot] = _PID[0]
        table["limit"][slot] = limit_s
        table["retries"][slot] = sig.retry_count > 0
        table["id_len"][slot], table["name_len"][slot] = len(task_id), len(name)
        at = slot * _TEXT_SIZE  # the lengths say where each one ends
        self._text[at : at + len(task_id)] = task_id
        self._text[at + ID_BYTES : at + ID_BYTES + len(name)] = name
        self._started[slot] = now  # now it counts

    def finish(self, slot: int) -> None:
        """The task ended (child): the slot is idle."""
        self._started[slot] = 0.0

    def read(self, slot: int) -> Running | None:
        """The task running in ``slot``, if any (supervisor). None also when the child
        finished it, or started another, while this was read: the next read sees that one."""
        started_s = self._started[slot]
        if not started_s:
            return None
        cell = self._table.row(slot)
        at = slot * _TEXT_SIZE
        task_id = bytes(self._text[at : at + min(cell["id_len"], ID_BYTES)])
        at += ID_BYTES
        name = bytes(self._text[at : at + min(cell["name_len"], NAME_BYTES)])
        if self._started[slot] != started_s:
            return None
        return Running(
            cell["pid"],
            started_s,
            cell["deadline"],
            cell["limit"],
            bool(cell["retries"]),
            task_id.decode("utf-8", "replace") or None,
            name.decode("utf-8", "replace"),
        )
