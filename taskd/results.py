"""Handles on sent tasks and workflows: their states, waiting for them, their values.

Waiting is the result backend's (``ResultBackend.wait_states``): woken when a worker writes
the state where the backend can tell (Redis), polled elsewhere.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from taskd.errors import TaskFailed
from taskd.wire import State, TaskState

if TYPE_CHECKING:
    from taskd.backends.base import Progress
    from taskd.client import Client


@dataclass(frozen=True, slots=True)
class AsyncResult:
    """A handle on one task's state and results."""

    client: Client
    task_id: str

    def state(self) -> TaskState | None:
        return self.client.reading_backend.get_state(self.task_id)

    def wait(self, timeout: float | None = None) -> TaskState:
        """The task's final state (SUCCESS or FAILURE); ResultTimeout after ``timeout`` s."""
        return self.client.wait_states([self.task_id], timeout)[0]

    def get(self, timeout: float | None = None) -> Any:
        """The task's return value: one result as is, several as a tuple, none as None.

        Raises TaskFailed when the task failed, ResultTimeout when it did not finish in time.
        """
        return python_value(self.wait(timeout))


@dataclass(frozen=True, slots=True)
class ChainResult:
    """A chain's links; its result is the last link's."""

    client: Client
    link_ids: tuple[str, ...]

    @property
    def task_id(self) -> str:
        return self.link_ids[-1]

    def wait(self, timeout: float | None = None) -> TaskState:
        """The last link's final state, or the state of the link that failed and stopped it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        state = None
        for link_id in self.link_ids:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            state = AsyncResult(self.client, link_id).wait(left)
            if state.state is State.FAILURE:
                break
        assert state is not None
        return state

    def get(self, timeout: float | None = None) -> Any:
        return python_value(self.wait(timeout))


@dataclass(frozen=True, slots=True)
class GroupResult:
    """A group's members, in order."""

    client: Client
    group_id: str
    member_ids: tuple[str, ...]

    def states(self) -> list[TaskState | None]:
        return self.client.reading_backend.get_states(self.member_ids)

    def wait(
        self, timeout: float | None = None, progress: Progress | None = None
    ) -> list[TaskState]:
        return self.client.wait_states(self.member_ids, timeout, progress)

    def get(self, timeout: float | None = None) -> list[Any]:
        """Each member's return value, in member order; TaskFailed if a member failed."""
        return [python_value(state) for state in self.wait(timeout)]


@dataclass(frozen=True, slots=True)
class ChordResult:
    """A chord: its group, then its callback, whose result is the chord's."""

    group: GroupResult
    callback: AsyncResult

    @property
    def task_id(self) -> str:
        return self.callback.task_id

    def wait(self, timeout: float | None = None, progress: Progress | None = None) -> TaskState:
        """The callback's final state: FAILURE with the member's error if a member failed.

        ``progress`` hears how many members have finished while the chord runs.
        """
        if progress is None:
            return self.callback.wait(timeout)

        def report(_done: int, _total: int) -> None:
            states = self.group.states()
            progress(sum(1 for s in states if s is not None and s.is_completed), len(states))

        return self.group.client.wait_states([self.callback.task_id], timeout, report)[0]

    def get(self, timeout: float | None = None) -> Any:
        return python_value(self.wait(timeout))


def python_value(state: TaskState) -> Any:
    """A finished state's results as the task returned them; TaskFailed for FAILURE."""
    if state.state is State.FAILURE:
        raise TaskFailed(state.task_uuid, state.error)
    values = state.python_results()
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)
