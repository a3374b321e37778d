"""A message taken and decoded (a Job), and the states its task goes through."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from taskd.brokers import Delivery
from taskd.registry import Task
from taskd.wire import GoTime, Signature, State, TaskState
from taskd.worker.execute import Kind, Outcome


@dataclass(slots=True)
class Job:
    delivery: Delivery
    sig: Signature
    task: Task | None  # None: not registered here
    received_at: GoTime
    finished: TaskState | None = None  # stored final state (or time-limit kill) of a redelivery

    def state(self, state: State, **fields: Any) -> TaskState:
        # The backend keeps the stored PENDING record's TaskName and CreatedAt (machinery's
        # merge rule); these are what a task without such a record gets.
        return TaskState(
            self.sig.uuid, state, task_name=self.sig.name, created_at=self.received_at, **fields
        )


def final_state(job: Job, outcome: Outcome) -> TaskState:
    if outcome.kind is Kind.SUCCEEDED:
        return job.state(State.SUCCESS, results=outcome.results)
    if outcome.kind is Kind.RETRY:
        return job.state(State.RETRY, error=outcome.error)
    return job.state(State.FAILURE, error=outcome.error)


def pending_again(job: Job, stored: TaskState | None) -> TaskState:
    """PENDING again, as its sender wrote it (PENDING is stored as given, not merged)."""
    pending = job.state(State.PENDING)
    return (
        pending
        if stored is None
        else pending.with_changes(task_name=stored.task_name, created_at=stored.created_at)
    )
