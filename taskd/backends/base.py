"""The result backend interface: task states and group metadata, stored as machinery's JSON."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Self

from taskd import logs
from taskd.config import Config
from taskd.confirms import Confirm, confirmed
from taskd.errors import (
    BackendError,
    BackendUnavailable,
    DecodeError,
    NotSupported,
    ResultTimeout,
)
from taskd.wire import GroupMeta, TaskState, decode_group, decode_state

Entry = dict[str, Any]  # a board's entry: a JSON object
Progress = Callable[[int, int], None]  # (tasks finished, tasks in all), told while waiting
POLL_FIRST_S = 0.0002  # result polling starts fast (a no-op task takes about a millisecond)...
POLL_GROWTH = 1.15
POLL_MAX_S = 0.05  # ...and backs off to this
SPENT_CLAIM = ""  # the claimant of a chord that fired: no task has an empty id


def claim_covers(owner: str, claimant: str) -> bool:
    """Whether a chord claim recorded for ``owner`` is ``claimant``'s (``claim_chord``): the
    same run, or any run of the task a bare task id names (task ids hold no "/")."""
    return owner == claimant or owner.partition("/")[0] == claimant


log = logs.get_logger("taskd.backends")


class ResultBackend(ABC):
    """Where task states live, each kept ``results_expire_in`` seconds after its last write."""

    driver: ClassVar[str]

    @classmethod
    @abstractmethod
    def from_config(cls, url: str, config: Config) -> Self:
        """A driver for ``url``; connecting may be lazy. Raises ConfigError for a bad URL."""

    @abstractmethod
    def set_states(self, states: Sequence[TaskState]) -> None:
        """Store several states in few round trips, by machinery's merge rule.

        A PENDING state replaces its task's record; any later state keeps the stored record's
        TaskName and CreatedAt (``wire.state.merged``), as machinery's Redis backend does, so
        a worker need not read a record before writing it.
        """

    @abstractmethod
    def get_states(self, task_ids: Sequence[str]) -> list[TaskState | None]:
        """The stored state of each task, in order; None where there is none (or it expired)."""

    def readable_states(self, task_ids: Sequence[str]) -> list[TaskState | None]:
        """``get_states`` for a worker's decisions, where a record that cannot be read
        (another program's value under a task's id, a key of another type) counts as none:
        the worker carries on, and the task's next state is written over it. Outages raise."""
        try:
            return self.get_states(task_ids)
        except BackendUnavailable:
            raise
        except BackendError:  # one record spoils the batch's read: read each on its own
            return [self._readable_state(task_id) for task_id in task_ids]

    def _readable_state(self, task_id: str) -> TaskState | None:
        try:
            (state,) = self.get_states([task_id])
        except BackendUnavailable:
            raise
        except BackendError as exc:
            log.warning("state_unreadable", task_id=task_id, error=str(exc))
            return None
        return state

    @abstractmethod
    def init_group(self, group: GroupMeta) -> None:
        """Store a group's metadata; senders call this before publishing any member."""

    @abstractmethod
    def get_group(self, group_id: str) -> GroupMeta | None:
        """A group's metadata, or None."""

    @abstractmethod
    def claim_chord(self, group_id: str, claimant: str) -> bool:
        """Mark the group's chord as triggered, atomically: True for one claimant only.

        A claimant is one run of a member task, ``<task id>/<run>``: the same run gets True
        again until ``chord_fired`` (its reply was lost), another run of the same member
        does not, so two copies of a member running at once (one delivered again while the
        other still ran) do not both fire the chord. A bare ``<task id>`` is a delivery
        settled from the member's stored state, whose run died after storing it: it takes
        over any claim of that member's runs (``claim_covers``), so the chord is not lost.
        """

    @abstractmethod
    def chord_fired(self, group_id: str) -> None:
        """The claimant sent the chord's callback (or its error callbacks): from now on no
        claim succeeds, the claimant's own included, so a member delivered again after its
        chord fired (its ack lost) does not fire it twice. Drivers record ``SPENT_CLAIM``
        as the claimant, for the claim's remaining lifetime."""

    def count_chord_member(self, group_id: str, task_id: str) -> int | None:
        """Count ``task_id``, a member of the chord's group that succeeded; how many have.

        So that only the last member reads every member's state (each reading all of them
        made a chord of n members read n² states: 2,000 members took 32 s on Redis). The
        count may run ahead where a member is counted twice, never behind: a member that
        sees it short of the group's size leaves the chord to the others. None where the
        driver keeps no count, or none for this group (one ``init_group`` did not store, or
        whose count is lost): then each member reads the states, as machinery's do."""
        return None

    def gather_group(
        self, group_id: str, task_count: int, finished: TaskState, claimant: str
    ) -> list[TaskState] | None:
        """For a chord whose group has no metadata here, as a machinery producer leaves one
        on a backend that stores none (machinery's AMQP backend): count ``finished``, a
        member's success, towards the group's ``task_count``. The members' states, once the
        group is done, for one ``claimant`` only (again for it, or for one that covers it,
        as ``claim_chord``); None for the others. BackendError where the driver has no such
        groups: their metadata expired."""
        raise BackendError(self.driver, "group metadata is missing or expired", group_id)

    def follow_readers(self, task_id: str, follow_ups: Sequence[str]) -> None:
        """Readers of ``task_id``'s states will read those of ``follow_ups`` too (the tasks
        it sets off: its chain's next link, its chord's callback), before they are sent. A
        driver whose readers need something for that does it here (machinery's readers on
        the AMQP backend, whose queues must exist before a state reaches them); for the
        others every state is readable by anyone, and there is nothing to do."""
        return None

    @abstractmethod
    def post(self, board: str, entries: Mapping[str, Entry | None], ttl_s: float) -> None:
        """Pin ``entries`` on the shared ``board``, each kept ``ttl_s`` seconds from now.

        A board is a small map of keys to JSON objects that every daemon and taskctl sharing
        this backend can read: live workers' beats (``taskd.worker.beacon``) and revocations
        (``taskd.revocations``). An entry replaces its key's previous one; None takes it
        down. One call is atomic for concurrent readers and writers of the same board (no
        entry another writer pinned meanwhile is lost) and prunes what has expired, so a
        board holds only what is live and a post costs a few round trips whatever its size.
        """

    @abstractmethod
    def read_board(self, board: str) -> dict[str, Entry]:
        """The ``board``'s entries that have not expired, by key ({} for an unknown board)."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""

    def check(self, *, writes: bool = True, serves: bool = False) -> None:
        """Refuse, before anything depends on it, a server taskd cannot use as configured
        (``taskd start``, ``check-config`` and a reload call this): ConfigError naming the
        key. May ask the server; BackendUnavailable then is no error. Without ``writes``
        (a caller that only reads), what only writes need is not asked of the user.
        ``serves``: the caller is the daemon (or its check-config), told of what the server
        may lose on a restart. Nothing by default."""
        return

    def begin_pending(self, states: Sequence[TaskState], *, fresh: bool) -> Confirm:
        """Start storing senders' PENDING states; the function returned completes the write.

        Called before the messages go out, so the write is on its way ahead of anything a
        worker writes once it has one; the sender completes it after publishing, so the two
        round trips overlap. ``fresh``: ids nobody used before; a driver that splits the
        write (so it may land after a worker's) must then keep a record already stored,
        which can only be that worker's later state. A driver that cannot split a write
        stores the states here and returns a no-op.
        """
        self.set_states(states)
        return confirmed

    def set_state(self, state: TaskState) -> None:
        self.set_states([state])

    def get_state(self, task_id: str) -> TaskState | None:
        return self.get_states([task_id])[0]

    def purge(self, task_id: str) -> None:
        """Forget a task's state."""
        raise NotSupported(self.driver, "purge")

    def wait_states(
        self,
        task_ids: Sequence[str],
        timeout_s: float | None = None,
        progress: Progress | None = None,
    ) -> list[TaskState]:
        """Wait until every task is SUCCESS or FAILURE; their states, in order.

        Raises ResultTimeout (naming the first unfinished task) after ``timeout_s``. This
        one polls: only the unfinished tasks are read again, after a pause that grows (a
        no-op task takes about a millisecond; a long one should not be polled hot). A driver
        that can be told when a state is written overrides it.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        awaited = Awaited(task_ids)
        interval = POLL_FIRST_S
        while True:
            waiting = awaited.unfinished()
            awaited.saw(zip(waiting, self.get_states(waiting), strict=True))
            if awaited.all_final(deadline, timeout_s, progress):
                return awaited.states()
            pause = interval if deadline is None else min(interval, deadline - time.monotonic())
            time.sleep(max(pause, 0.0))
            interval = min(interval * POLL_GROWTH, POLL_MAX_S)

    # -- for drivers that store machinery's JSON ------------------------------------------

    def _load_state(self, raw: bytes | str, task_id: str) -> TaskState:
        try:
            return decode_state(raw)
        except DecodeError as exc:
            raise BackendError(self.driver, f"stored state is not valid: {exc}", task_id) from exc

    def _load_group(self, raw: bytes | str, group_id: str) -> GroupMeta:
        try:
            return decode_group(raw)
        except DecodeError as exc:
            raise BackendError(self.driver, f"stored group is not valid: {exc}", group_id) from exc


def is_final(state: TaskState | None) -> bool:
    """SUCCESS or FAILURE (None: no state)."""
    return state is not None and state.is_completed


class Awaited:
    """The tasks one ``wait_states`` waits on and the last state read of each. Which are
    unfinished is kept as states come in, so a state heard costs O(1): waiting on a group
    of 10,000 members checks 10,000 states, not 10,000 for each one pushed (minutes of CPU)."""

    def __init__(self, task_ids: Sequence[str]) -> None:
        self.task_ids = task_ids
        self.seen: dict[str, TaskState | None] = {}
        self._unfinished = Counter(task_ids)  # in their order: a timeout names the first
        self._left = len(task_ids)

    def unfinished(self) -> list[str]:
        return list(self._unfinished)

    def saw(self, pairs: Iterable[tuple[str, TaskState | None]]) -> None:
        """Take in (task id, state read) pairs; a final state is never read again."""
        for task_id, state in pairs:
            self.seen[task_id] = state
            if is_final(state):
                self._left -= self._unfinished.pop(task_id, 0)

    def all_final(
        self, deadline: float | None, timeout_s: float | None, progress: Progress | None
    ) -> bool:
        """Whether every task finished; past the deadline, ResultTimeout naming the first
        that did not and the state it was in. Tells ``progress`` first."""
        if progress is not None:
            progress(len(self.task_ids) - self._left, len(self.task_ids))
        if not self._left:
            return True
        if deadline is not None and time.monotonic() >= deadline:
            first = next(iter(self._unfinished))
            last = self.seen.get(first)
            raise ResultTimeout(first, timeout_s or 0.0, last.state if last else None)
        return False

    def states(self) -> list[TaskState]:
        """Every task's final state, in order (once ``all_final``)."""
        return [self.seen[task_id] for task_id in self.task_ids]  # type: ignore[misc]
