"""Revoking tasks: ``taskctl revoke ID... [--terminate]`` and ``Client.revoke``.

A revocation is an entry on the result backend's ``revoked`` board (``ResultBackend.post``),
kept ``results_expire_in`` seconds, as the task's state is, so it survives daemon restarts.
What happens to a revoked task:

- not started yet (PENDING, RECEIVED, or RETRY between attempts): its state becomes FAILURE
  with the error ``revoked`` at once, and it never runs: the child that takes its message,
  now or at its ETA, settles it as revoked instead of running it (``RevokedIds``: the
  copy its supervisor publishes, or its own where that one is not fresh, each at most a
  second old, so a message taken within a second of the revocation may still run);
- running: with ``terminate`` its child is stopped, the task recorded FAILURE ``revoked``
  and the child killed and replaced (``taskd.worker.kills``); without, it finishes, but any
  retry it asks for does not run;
- finished, or unknown: nothing is revoked, and the caller is told.

A revoked task fails like any other: its OnError callbacks run, the rest of its chain never
runs, and a chord it belongs to fails through its error path. machinery has no REVOKED state,
so Go readers see an ordinary FAILURE.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from taskd.backends import ResultBackend
from taskd.backends.base import Entry
from taskd.boards import REVOKED as BOARD
from taskd.wire import GoTime, State, TaskState

REVOKED = "revoked"  # the error of a revoked task
REFRESH_S = 1.0  # how old a child's copy of the board may get before it is read again


class Revoke(StrEnum):
    """What revoking one task did."""

    REVOKED = "revoked"  # it will not run
    TERMINATING = "terminating"  # revoked; its worker stops it now
    RUNNING = "running"  # revoked, but running: it finishes (no terminate)
    FINISHED = "finished"  # not revoked: it had finished
    UNKNOWN = "unknown"  # not revoked: no state is stored for it (never sent, or expired)


@dataclass(frozen=True, slots=True)
class Revocation:
    task_id: str
    outcome: Revoke
    state: TaskState | None  # its state before the revocation


def revoke(
    backend: ResultBackend, task_ids: Sequence[str], *, terminate: bool, expire_s: float
) -> list[Revocation]:
    """Revoke ``task_ids`` (see the module's docstring); what happened to each, in order."""
    stored = backend.get_states(task_ids)
    outcomes = [_outcome(state, terminate) for state in stored]
    wanted = [o is not Revoke.FINISHED and o is not Revoke.UNKNOWN for o in outcomes]
    entry = {"revoked_at": str(GoTime.now()), "terminate": terminate}
    backend.post(
        BOARD, {i: entry for i, want in zip(task_ids, wanted, strict=True) if want}, expire_s
    )
    not_started = [
        TaskState(
            s.task_uuid, State.FAILURE, task_name=s.task_name, created_at=GoTime.now()
        ).with_changes(error=REVOKED)
        for s, outcome in zip(stored, outcomes, strict=True)
        if s is not None and outcome is Revoke.REVOKED
    ]
    if not_started:
        backend.set_states(not_started)
    return [
        Revocation(task_id, outcome, state)
        for task_id, outcome, state in zip(task_ids, outcomes, stored, strict=True)
    ]


def _outcome(state: TaskState | None, terminate: bool) -> Revoke:
    if state is None:
        return Revoke.UNKNOWN
    if state.is_completed:
        return Revoke.FINISHED
    if state.state is State.STARTED:
        return Revoke.TERMINATING if terminate else Revoke.RUNNING
    return Revoke.REVOKED


def to_terminate(board: Mapping[str, Entry]) -> set[str]:
    """The ids on the revoked board whose running task is to be stopped."""
    return {task_id for task_id, entry in board.items() if entry.get("terminate") is True}


class RevokedIds:
    """A child's view of the revoked board: the copy its supervisor keeps in shared memory
    (``shared(max_age_s)``, None when it has none that fresh), else its own, read again when
    asked once it is REFRESH_S old (one round trip a second at most, and none while the
    child waits for messages)."""

    def __init__(
        self,
        read: Callable[[], Mapping[str, Entry]],
        shared: Callable[[float], frozenset[str] | None] | None = None,
    ) -> None:
        self._read, self._shared = read, shared
        self._ids: frozenset[str] = frozenset()
        self._read_at = -REFRESH_S

    def __contains__(self, task_id: str) -> bool:
        shared = None if self._shared is None else self._shared(REFRESH_S)
        if shared is not None:
            return task_id in shared
        now = time.monotonic()
        if now - self._read_at >= REFRESH_S:
            self._ids = frozenset(self._read())
            self._read_at = now
        return task_id in self._ids
