"""Children tell the supervisor they are alive through a slot each in shared memory.

(Not to be confused with consumer leases, ``taskd.brokers.lease``, which tell other consumers.)

A child stamps ``time.monotonic()`` and whether it is running a task every turn of its loop,
and while it rides out a driver outage; while it runs tasks a thread of its own (``busy``)
stamps every BUSY_BEAT_S, so a long task still shows a live child. A child also marks its
slot ready once its broker and backend have answered (and then signals the supervisor, so
that it looks at once), and counts the tasks it finished. The supervisor reads the slots to
replace a child that stopped turning while idle (a wedged consumer), to tell systemd when
the pool is ready and whether it makes progress (``taskd.worker.service``), and to count
tasks done. No pipes, no syscalls: a stamp is a memory write.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType

from taskd.backends import ResultBackend, open_backend
from taskd.config import Config
from taskd.worker.cells import COUNT, FLOAT, Columns

MAX_CHILDREN = 1024  # slots allocated up front; the pool never grows past this
BUSY_BEAT_S = 1.0  # while a child runs tasks, its slot is stamped this often
READY_SIGNAL = signal.SIGUSR1  # a child tells its supervisor it is ready (it looks then)
# A slot is a row: the last beat (monotonic seconds), busy and ready flags, tasks done and
# of those failed, and since when its broker (kind 1) or backend (2) has been unreachable
# (monotonic seconds; kind 0: reachable).
_COLUMNS = {
    "beat": FLOAT,
    "busy": COUNT,
    "ready": COUNT,
    "done": COUNT,
    "failed": COUNT,
    "outage_since": FLOAT,
    "outage_kind": COUNT,
    "bounded": COUNT,  # a task that kills the child is set aside after worker.max_deliveries
}
OUTAGE_KINDS = ("", "broker", "backend")
# Looked up once per child. A task id's form, never a task's (task_<uuid4>): a Redis user
# whose ACL allows task ids and redis.key_prefix alone may read it.
PROBE_TASK_ID = "task_taskd-readiness-probe"


def reached_backend(config: Config) -> ResultBackend:
    """The configured backend, once it has answered a read: drivers connect lazily, and a
    child is ready only when its backend, too, has been reached."""
    backend = open_backend(config)
    try:
        backend.get_state(PROBE_TASK_ID)
    except BaseException:
        backend.close()  # the caller tries again with a new one
        raise
    return backend


@dataclass(frozen=True, slots=True)
class SlotView:
    beat_s: float  # time.monotonic() of the last stamp (of the fork, before the child's first)
    busy: bool  # running tasks at that stamp
    ready: bool  # its broker and backend answered
    tasks_done: int  # tasks this child finished
    outage: str = ""  # "broker" or "backend" while the child cannot reach it...
    outage_since_s: float = 0.0  # ...since this time.monotonic()
    tasks_failed: int = 0  # of tasks_done, those that failed


class ChildLiveness:
    def __init__(self, slots: int = MAX_CHILDREN) -> None:
        self._slots = slots
        self._table = Columns(slots, _COLUMNS)  # read by the supervisor while children write
        self._beat, self._busy = self._table["beat"], self._table["busy"]
        self._clock: _BusyClock | None = None  # the child's own, made in the child
        self.retired_done = self.retired_failed = 0  # by children that have exited
        self.supervisor_pid: int | None = None  # told READY_SIGNAL when a child is ready

    @property
    def slots(self) -> int:
        return self._slots

    def reset(self, slot: int) -> None:
        """A new child in ``slot``: stamped now, idle, not ready, nothing done (supervisor)."""
        for name in _COLUMNS:
            self._table[name][slot] = 0
        self._beat[slot] = time.monotonic()

    def stamp(self, slot: int, *, busy: bool) -> None:
        self._beat[slot] = time.monotonic()
        self._busy[slot] = busy

    def bounded(self, slot: int) -> bool:
        """Whether a task that kills the child in ``slot`` is set aside after so many deaths
        (``mark_ready``): where it is, its next child need not wait (supervisor)."""
        return bool(self._table["bounded"][slot])

    def mark_ready(self, slot: int, *, bounded: bool = False) -> None:
        """Ready, and the supervisor woken to see it (not at its next tick); ``bounded``:
        its broker counts deliveries and worker.max_deliveries is set."""
        self._table["bounded"][slot] = int(bounded)
        self._table["ready"][slot] = 1
        if self.supervisor_pid is not None:
            with contextlib.suppress(ProcessLookupError):  # it died: this child follows it
                os.kill(self.supervisor_pid, READY_SIGNAL)

    def count_done(self, slot: int, *, failed: bool) -> None:
        """One more task finished in ``slot`` (only its child writes it)."""
        self._table["done"][slot] += 1
        if failed:
            self._table["failed"][slot] += 1

    def retire(self, slot: int) -> None:
        """The child in ``slot`` exited: keep its counts before the slot is reused."""
        view = self.view(slot)
        self.retired_done += view.tasks_done
        self.retired_failed += view.tasks_failed

    def totals(self, slots: Iterable[int]) -> tuple[int, int]:
        """Tasks done and failed since the start, by the children in ``slots`` and those
        retired."""
        views = [self.view(slot) for slot in slots]
        done = self.retired_done + sum(view.tasks_done for view in views)
        return done, self.retired_failed + sum(view.tasks_failed for view in views)

    def read(self, slot: int) -> tuple[float, bool]:
        """When the slot's child last stamped, and whether it was running a task then."""
        return self._beat[slot], bool(self._busy[slot])

    def view(self, slot: int) -> SlotView:
        cell = self._table.row(slot)
        return SlotView(
            cell["beat"],
            bool(cell["busy"]),
            bool(cell["ready"]),
            cell["done"],
            OUTAGE_KINDS[cell["outage_kind"]],
            cell["outage_since"],
            cell["failed"],
        )

    def outage(self, slot: int, kind: str, since_s: float) -> None:
        """The child cannot reach its ``kind`` ("broker", "backend"; "" when it can again)
        since ``since_s`` (time.monotonic()), for the status systemd shows."""
        self._table["outage_since"][slot] = since_s  # before the kind that makes it count
        self._table["outage_kind"][slot] = OUTAGE_KINDS.index(kind)

    def busy(self, slot: int) -> _BusyClock:
        """``with liveness.busy(slot):`` around running tasks: stamped busy now and every
        BUSY_BEAT_S until the block ends, from a thread (started on first use, in the child)."""
        if self._clock is None or self._clock.pid != os.getpid() or self._clock.slot != slot:
            self._clock = _BusyClock(self, slot)
        return self._clock

    def beat(self, slot: int) -> None:
        """Stamp the time only, keeping the busy flag."""
        self._beat[slot] = time.monotonic()


class _BusyClock:
    """Stamps one slot from a daemon thread while the block it guards runs.

    The thread needs the interpreter: a child that is stopped, or stuck in C code that holds
    the GIL, stops stamping, which is what the supervisor's progress check looks for.
    """

    def __init__(self, liveness: ChildLiveness, slot: int) -> None:
        self.liveness, self.slot, self.pid = liveness, slot, os.getpid()
        self._busy = False
        self._thread: threading.Thread | None = None

    def __enter__(self) -> None:
        self.liveness.stamp(self.slot, busy=True)
        self._busy = True
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="taskd-busy-clock", daemon=True)
            self._thread.start()

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self._busy = False

    def _run(self) -> None:
        while True:
            time.sleep(BUSY_BEAT_S)
            if self._busy:  # the time only: the busy flag is the main thread's to write
                self.liveness.beat(self.slot)
