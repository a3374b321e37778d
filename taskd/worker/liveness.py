"""Children tell the supervisor they are alive through a slot each in shared memory.

(Not to be confused with consumer leases, ``taskd.brokers.lease``, which tell other consumers.)

A child stamps ``time.monotonic()`` and whether it is running a task every turn of its loop;
the supervisor reads the slots to find a child that stopped turning while idle (a wedged
consumer) and replaces it. No pipes, no syscalls: a stamp is a memory write.
"""

from __future__ import annotations

import mmap
import struct
import time

MAX_CHILDREN = 1024  # slots allocated up front; the pool never grows past this
_SLOT = struct.Struct("=dI4x")  # last beat (monotonic seconds), busy flag, padding


class ChildLiveness:
    def __init__(self, slots: int = MAX_CHILDREN) -> None:
        self._slots = slots
        self._mem = mmap.mmap(-1, slots * _SLOT.size)  # anonymous and shared across fork

    @property
    def slots(self) -> int:
        return self._slots

    def stamp(self, slot: int, *, busy: bool) -> None:
        _SLOT.pack_into(self._mem, slot * _SLOT.size, time.monotonic(), int(busy))

    def read(self, slot: int) -> tuple[float, bool]:
        """When the slot's child last stamped, and whether it was running a task then."""
        last, busy = _SLOT.unpack_from(self._mem, slot * _SLOT.size)
        return last, bool(busy)
