"""States not yet written and messages not yet acked, written together in few round trips.

A quick task's final state and ack wait up to COALESCE_S to share one state write and one
ack with its neighbours: those of its batch, and of the next batches while the broker knows
more messages are ready (the child flushes at the end of a batch otherwise, so a result is
never held while the child waits for work). The one rule: a message is acked only after its
state is written (``flush`` writes states first), so a crash in between runs a task twice at
worst, never loses its result.

A final state the backend refuses for good (a result larger than a Memcache item or a MongoDB
document may be) is stored as a FAILURE saying why, and its message acked: running the task
again would only be refused again. Where no state of the task can be stored at all (its id is
no key the backend takes: spaces or 300 bytes for Memcache), its message is set aside with the
reason instead, kept for an operator; a passing state refused (RECEIVED) is only logged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from taskd import logs
from taskd.brokers import Delivery
from taskd.errors import BackendError, BrokerError
from taskd.wire import State, TaskState

log = logs.get_logger("taskd.worker")

COALESCE_S = 0.005  # longest a quick task's state and ack wait for others to share them with


class WriteBuffer:
    def __init__(
        self,
        write_states: Callable[[Sequence[TaskState]], None],
        ack: Callable[[Sequence[Delivery]], None],
        settle: Callable[[Sequence[TaskState], Sequence[Delivery]], None] | None,
        set_aside: Callable[[Delivery, str], None],
    ) -> None:
        """``settle``: both in one call, states first, where the drivers can (``taskd.pairs``);
        ``set_aside``: reject a message with a reason (its state could not be stored)."""
        self._write_states, self._ack, self._settle = write_states, ack, settle
        self._set_aside = set_aside
        self._states: dict[str, TaskState] = {}  # task id -> newest state not yet written
        # (message, its task's id), settled: acked once their states are written
        self._acks: list[tuple[Delivery, str]] = []
        self._since: float | None = None  # when the oldest unwritten thing was added
        self.refused: dict[str, str] = {}  # task id -> why its state was refused (last flush)
        self.unstored: dict[str, str] = {}  # task id -> why no state of it could be (last flush)

    def add_state(self, state: TaskState) -> None:
        """Write this state with the next flush; a newer state of the same task replaces it."""
        self._states.pop(state.task_uuid, None)
        self._states[state.task_uuid] = state
        if self._since is None:
            self._since = time.monotonic()

    def drop_state(self, task_id: str) -> bool:
        """Do not write this task's state after all; whether one was waiting."""
        return self._states.pop(task_id, None) is not None

    def ack_after_states(self, delivery: Delivery, task_id: str, *, wait: bool) -> None:
        """Ack this message (of this task) once the states are written: now, or (``wait``)
        within COALESCE_S, with whatever else settles meanwhile."""
        self._acks.append((delivery, task_id))
        if self._since is None:
            self._since = time.monotonic()
        if not wait or time.monotonic() - self._since >= COALESCE_S:
            self.flush()

    @property
    def pending(self) -> bool:
        """States or acks wait to be written."""
        return bool(self._states or self._acks)

    @property
    def due(self) -> bool:
        """Something has waited COALESCE_S or more."""
        return self._since is not None and time.monotonic() - self._since >= COALESCE_S

    def flush(self) -> None:
        """Write the waiting states, then ack the messages they settle (never the reverse)."""
        self.refused, self.unstored = {}, {}
        if self._states and self._acks and self._settle is not None:
            try:
                self._settle(list(self._states.values()), [each for each, _ in self._acks])
            except (BrokerError, BackendError) as exc:  # for good: outages are ridden out
                # Apart, so that the state refused is found and stored as a FAILURE (a result
                # larger than Redis's proto-max-bulk-len fails the pair's one script, whose
                # error would otherwise crash the child, and the message's next one).
                log.warning("settle_apart", error=str(exc))
            else:
                self._states.clear()
                self._acks = []
        if self._states:
            states = list(self._states.values())
            try:
                self._write_states(states)
            except BackendError:  # for good (outages are ridden out): which one, and why?
                self._write_apart(states)
            self._states.clear()
        if self._acks:
            acks = [each for each, task_id in self._acks if not self.set_aside(each, task_id)]
            if acks:
                self._ack(acks)
            self._acks = []
        self._since = None

    def set_aside(self, delivery: Delivery, task_id: str) -> bool:
        """Set this message aside if no state of its task could be stored (last flush)."""
        why = self.unstored.get(task_id)
        if why is not None:
            self._set_aside(delivery, f"its state could not be stored: {why}")
        return why is not None

    def _write_apart(self, states: list[TaskState]) -> None:
        """Each state on its own: a final one the backend refuses is stored as a FAILURE
        saying why (in ``refused``); anything else refused is raised."""
        for state in states:
            try:
                self._write_states([state])
            except BackendError as exc:
                if state.is_completed and self._store_failure(state, exc):
                    continue
                log.error(
                    "state_not_stored",
                    task_id=state.task_uuid,
                    state=state.state.value,
                    error=str(exc),
                )
                if state.is_completed:
                    self.unstored[state.task_uuid] = str(exc)

    def _store_failure(self, state: TaskState, exc: BackendError) -> bool:
        """A final state refused stored as a FAILURE saying why; False if that is refused too."""
        reason = f"its result could not be stored: {exc}"
        try:
            self._write_states(
                [state.with_changes(state=State.FAILURE, results=None, error=reason)]
            )
        except BackendError:
            return False
        log.error("result_refused", task_id=state.task_uuid, error=str(exc))
        self.refused[state.task_uuid] = reason
        return True
