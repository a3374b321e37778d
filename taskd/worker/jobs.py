"""A message taken and decoded (a Job), and the states its task goes through."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from taskd import logs
from taskd.brokers import Delivery
from taskd.registry import Task
from taskd.wire import GoTime, Signature, State, TaskState
from taskd.worker.execute import Kind, Outcome, attempt_of

log = logs.get_logger("taskd.worker")


@dataclass(slots=True)
class Job:
    delivery: Delivery
    sig: Signature
    task: Task | None  # None: not registered here
    received_at: GoTime
    finished: TaskState | None = None  # stored final state (or time-limit kill) of a redelivery
    elsewhere: str = ""  # left to another worker: why (peers.py)...
    wait_s: float = 0.0  # ...and when to look at it again
    announced: bool = False  # RECEIVED was recorded for it (written, or waiting to be)
    run: str = ""  # names this run of the task in a chord claim, once one is made

    def state(self, state: State, **fields: Any) -> TaskState:
        # The backend keeps the stored PENDING record's TaskName and CreatedAt (machinery's
        # merge rule); these are what a task without such a record gets.
        return TaskState(
            self.sig.uuid, state, task_name=self.sig.name, created_at=self.received_at, **fields
        )

    def claimant(self) -> str:
        """Who claims the chord of this job's group (``ResultBackend.claim_chord``): this run
        of the task, or the bare task id where it was settled from its stored state (the run
        that stored it died before its chord went out)."""
        if self.finished is not None:
            return self.sig.uuid
        if not self.run:  # made once: a claim sent again after an outage must be the same
            self.run = secrets.token_hex(6)
        return f"{self.sig.uuid}/{self.run}"


def preview(delivery: Delivery, limit: int = 200) -> str:
    """The start of a message's body, for a log line about it."""
    text = delivery.body[:limit].decode("utf-8", "replace")
    return text + ("..." if len(delivery.body) > limit else "")


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


def log_outcome(job: Job, outcome: Outcome, duration_ms: float) -> None:
    """One event per task run: task_succeeded (info), task_retrying (warning) or
    task_failed (error)."""
    attempt = attempt_of(job.sig)
    if outcome.kind is Kind.SUCCEEDED:
        log.info("task_succeeded", attempt=attempt, duration_ms=duration_ms)
    elif outcome.kind is Kind.RETRY:
        log.warning(
            "task_retrying",
            attempt=attempt,
            duration_ms=duration_ms,
            error=outcome.error,
            retry_in_s=round(outcome.retry_in_s, 3),
            retries_left=job.sig.retry_count - 1,
        )
    else:
        log.error(
            "task_failed",
            attempt=attempt,
            duration_ms=duration_ms,
            error=outcome.error,
            traceback=outcome.traceback or None,
        )
