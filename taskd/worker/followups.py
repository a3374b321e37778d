"""What a finished task sets off: OnSuccess/OnError callbacks and chord callbacks.

machinery's rules: results are appended to each OnSuccess callback's args unless the finished
task is Immutable; the error is prepended to each OnError callback after the last retry; a
chord's callback runs once all members succeeded, with their results in member order unless
the callback is Immutable. Beyond machinery, a chord whose member finally fails runs the
callback's OnError signatures (the chord's error callback) once, and records the callback as
FAILURE with the member's error, instead of never finishing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from taskd import logs
from taskd.backends import ResultBackend
from taskd.brokers import Broker
from taskd.errors import BackendError, BackendUnavailable, DriverError
from taskd.wire import Arg, GoTime, Signature, State, TaskResult, TaskState
from taskd.worker.execute import Kind, Outcome
from taskd.worker.jobs import Job

if TYPE_CHECKING:
    from taskd.client import Client

log = logs.get_logger("taskd.worker")


@dataclass(frozen=True, slots=True)
class FollowUp:
    """What an outcome sets off: new tasks to send (each recorded PENDING first), the same
    task to send again (a retry, whose RETRY state stands), states to record for tasks
    that will never run, and the group whose chord is spent once ``send`` went out."""

    send: tuple[Signature, ...] = ()
    again: Signature | None = None
    record: tuple[TaskState, ...] = ()
    fires_chord: str = ""


# The dead letter's reason (then the refusal), for a message whose follow-ups the broker or
# backend refused for good: kept for an operator to replay once the cause is mended.
REFUSED = "what it sets off was refused"

# Why a chord can no longer fire, most often: what its members' chord_failed says to do.
CHORD_LIFETIME = (
    "a chord must end within results_expire_in of its send: its group's record and its"
    " members' results expire after that"
)

# What says a follow-up will never go out as it is (outages are ridden out, not raised): a
# driver's refusal for good, or a follow-up no worker could run, found by Client.prepare
# before anything is sent (ValueError: no task name, an ETA past the latest; a producer's).
REFUSALS = (DriverError, ValueError)


def set_off(
    follow: FollowUp,
    backend: ResultBackend,
    broker: Broker,
    sender: Client,
    call: Callable[..., Any],
) -> None:
    """Record, send (as the broker can take them), then mark the chord spent, so that a
    member delivered again does not fire it twice; ``call(kind, fn, *args)`` rides out
    outages."""
    if follow.record:
        call("backend", backend.set_states, list(follow.record))
    if follow.send:
        with _failed_if_refused(follow.send, backend, call):
            call("broker", sender.publish, sendable(follow.send, broker))
    if follow.fires_chord:
        call("backend", backend.chord_fired, follow.fires_chord)
    if follow.again is not None:
        with _failed_if_refused([follow.again], backend, call):
            call("broker", sender.publish, sendable([follow.again], broker), states=())


@contextlib.contextmanager
def _failed_if_refused(
    signatures: Sequence[Signature], backend: ResultBackend, call: Callable[..., Any]
) -> Iterator[None]:
    """Where the send in the block is refused for good, the tasks it sends (and the rest of
    their chains) are recorded FAILURE saying so, before the error passes on: they run only
    if an operator requeues the message that sets them off, and whoever waits on one would
    otherwise wait on PENDING for ever."""
    try:
        yield
    except REFUSALS as exc:
        error = f"not sent: {exc} (what sends it is set aside with the dead letters)"
        try:
            call("backend", backend.set_states, never_running(signatures, error, GoTime.now()))
        except DriverError as also:
            log.error("refusal_not_recorded", error=str(also))
        raise


def sendable(signatures: Sequence[Signature], broker: Broker) -> list[Signature]:
    """Follow-ups as this broker can take them: a priority it cannot honour (set by a
    producer on another broker, or a Go one, which ignores it on Redis) is dropped."""
    if broker.supports_priority or not any(sig.priority for sig in signatures):
        return list(signatures)
    log.warning("priority_ignored", reason=f"the {broker.driver} broker has none")
    return [sig.with_changes(priority=0) for sig in signatures]


def sets_off(sig: Signature, outcome: Outcome) -> bool:
    """Whether an outcome sends more messages (callbacks, chord, retry), or may: a success
    whose result the backend refuses fails after all (``WriteBuffer``), and sets off what
    a failure does."""
    if outcome.kind is Kind.RETRY:
        return True
    if sig.chord_callback is not None and sig.group_uuid:
        return True
    return bool(sig.on_error or sig.on_success)  # failed: OnSuccess recorded as never to run


def after(backend: ResultBackend, job: Job, outcome: Outcome) -> FollowUp:
    """What ``outcome`` of ``job`` sets off. Reads the backend for a chord, which the job's
    claimant claims; BackendUnavailable passes to the caller, which calls again."""
    sig, queue, claimant = job.sig, job.delivery.queue, job.claimant()
    if outcome.kind is Kind.RETRY:
        assert outcome.retry is not None
        retry = outcome.retry
        return FollowUp(again=retry if retry.routing_key else retry.with_changes(routing_key=queue))
    if outcome.kind is Kind.SUCCEEDED:
        chord = _chord(chord_after_success, backend, sig, claimant, outcome.results)
        follow = FollowUp(
            send=(*on_success(sig, outcome.results), *chord.send),
            record=chord.record,
            fires_chord=chord.fires_chord,
        )
        return _readable(backend, sig, follow)
    now = GoTime.now()
    chord = _chord(chord_after_failure, backend, sig, claimant, outcome.error, now)
    stopped = never_to_run(sig, f"chain stopped: {sig.uuid} failed: {outcome.error}", now)
    follow = FollowUp(
        send=(*on_error(sig.on_error or (), outcome.error), *chord.send),
        record=(*chord.record, *stopped),
        fires_chord=chord.fires_chord,
    )
    return _readable(backend, sig, follow)


def not_taken(backend: ResultBackend, follow: FollowUp) -> FollowUp:
    """For a task settled again from its stored state (its message came back: its ack was
    lost, or its worker died before it): the tasks to send but those a worker has taken
    already, which were sent then. Each was recorded PENDING before it was sent, so one
    still PENDING (or gone) goes again: maybe twice, never lost."""
    if not follow.send:
        return follow
    stored = backend.readable_states([sent.uuid for sent in follow.send])
    send = tuple(
        sent
        for sent, state in zip(follow.send, stored, strict=True)
        if state is None or state.state is State.PENDING
    )
    return replace(follow, send=send)


def _readable(backend: ResultBackend, sig: Signature, follow: FollowUp) -> FollowUp:
    """Whoever reads this task's states gets to read those of the tasks it sets off."""
    ids = [sent.uuid for sent in follow.send if sent.uuid]
    if ids:
        backend.follow_readers(sig.uuid, ids)
    return follow


def _chord(
    step: Callable[..., FollowUp], backend: ResultBackend, sig: Signature, *args: Any
) -> FollowUp:
    try:
        return step(backend, sig, *args)
    except BackendUnavailable:
        raise
    except BackendError as exc:  # group metadata expired or unreadable: it can never fire
        log.error("chord_failed", group=sig.group_uuid, error=str(exc), fix=CHORD_LIFETIME)
        return _never_fired(backend, sig, f"chord not fired: {exc} ({CHORD_LIFETIME})")


def _never_fired(backend: ResultBackend, sig: Signature, error: str) -> FollowUp:
    """A chord that can never fire: its callback is FAILURE saying why, instead of PENDING
    (or no state at all) for whoever waits on it; unless it has a later state (it fired
    before its group's record went)."""
    callback = sig.chord_callback
    if callback is None or not callback.uuid:
        return FollowUp()
    (stored,) = backend.readable_states([callback.uuid])  # unreadable: written over
    if stored is not None and stored.state is not State.PENDING:
        return FollowUp()
    return FollowUp(record=tuple(never_running([callback], error, GoTime.now())))


def _as_args(results: Sequence[TaskResult]) -> tuple[Arg, ...]:
    return tuple(Arg(result.type, result.value) for result in results)


def on_success(sig: Signature, results: Sequence[TaskResult]) -> list[Signature]:
    """The OnSuccess callbacks, with the results appended unless ``sig`` is Immutable."""
    extra = () if sig.immutable else _as_args(results)
    return [cb.with_changes(args=(*(cb.args or ()), *extra)) for cb in sig.on_success or ()]


def never_to_run(sig: Signature, error: str, now: GoTime) -> list[TaskState]:
    """FAILURE for the OnSuccess callbacks of a task that failed for good, and theirs: the
    rest of its chain, whose links were recorded PENDING when it was sent, never runs, and
    whoever waits on one is told why (machinery leaves them PENDING for ever)."""
    return never_running(sig.on_success or (), error, now)


def never_running(signatures: Sequence[Signature], error: str, now: GoTime) -> list[TaskState]:
    """FAILURE with ``error`` for these tasks and the OnSuccess callbacks of each, theirs..."""
    return [
        state
        for sig in signatures
        if sig.uuid
        for state in (
            TaskState(sig.uuid, State.FAILURE, task_name=sig.name, error=error, created_at=now),
            *never_to_run(sig, error, now),
        )
    ]


def on_error(callbacks: Sequence[Signature], error: str) -> list[Signature]:
    """OnError callbacks with the error prepended as a string argument."""
    return [cb.with_changes(args=(Arg("string", error), *(cb.args or ()))) for cb in callbacks]


def chord_after_success(
    backend: ResultBackend, sig: Signature, claimant: str, results: Sequence[TaskResult]
) -> FollowUp:
    """A member succeeded: when every member has, the first to claim sends the callback."""
    callback = sig.chord_callback
    if callback is None or not sig.group_uuid:
        return FollowUp()
    counted = backend.count_chord_member(sig.group_uuid, sig.uuid)
    if counted is not None and counted < sig.group_task_count:
        return FollowUp()  # others still run: the last one counted reads the states
    group = backend.get_group(sig.group_uuid)
    if group is None:  # expired, or a machinery producer's on a backend storing none
        finished = TaskState(sig.uuid, State.SUCCESS, task_name=sig.name, results=tuple(results))
        gathered = backend.gather_group(sig.group_uuid, sig.group_task_count, finished, claimant)
        if gathered is None:
            return FollowUp()
        states: Sequence[TaskState | None] = gathered
    else:
        states = backend.readable_states(group.task_uuids)
        if not all(state is not None and state.state is State.SUCCESS for state in states):
            return FollowUp()  # not finished yet, or a member failed and fired the error path
        if not backend.claim_chord(sig.group_uuid, claimant):
            return FollowUp()
    if not callback.immutable:
        appended = [result for state in states if state for result in state.results or ()]
        callback = callback.with_changes(args=(*(callback.args or ()), *_as_args(appended)))
    return FollowUp(send=(callback,), fires_chord=sig.group_uuid)


def chord_after_failure(
    backend: ResultBackend, sig: Signature, claimant: str, error: str, now: GoTime
) -> FollowUp:
    """A member failed for good: the chord fails once, running its error callbacks."""
    callback = sig.chord_callback
    if callback is None or not sig.group_uuid:
        return FollowUp()
    if not backend.claim_chord(sig.group_uuid, claimant):
        return FollowUp()
    failed = TaskState(
        callback.uuid,
        State.FAILURE,
        task_name=callback.name,
        error=f"chord member {sig.uuid} failed: {error}",
        created_at=now,
    )
    error_callbacks = tuple(on_error(callback.on_error or (), error))
    return FollowUp(send=error_callbacks, record=(failed,), fires_chord=sig.group_uuid)
