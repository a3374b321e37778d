"""A worker child: fetch, decode, execute, record, acknowledge; until told to stop.

Round trips: one fetch per batch; quick tasks (under 2 ms on average) share one state write
and one ack per batch (at most 5 ms late); a task that takes longer gets STARTED before it
runs and its final state and ack right after. Backends apply machinery's merge rule, so no
state is read first (but for redelivered messages, to skip any that had finished). A state is
always stored before its message is acked. Transient driver errors never lose a message: the
call is retried with capped backoff while the message stays leased, and if the child dies
meanwhile the broker delivers the message again.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from taskd.backends import ResultBackend, open_backend
from taskd.brokers import Broker, Delivery, open_broker
from taskd.client import Client
from taskd.config import Config
from taskd.errors import (
    BackendError,
    BackendUnavailable,
    BrokerUnavailable,
    ConfigError,
    DecodeError,
    DriverError,
    TaskNotFound,
)
from taskd.exitcodes import EXIT_CHILD_BOOT_FAILURE, EXIT_FAILURE, EXIT_OK
from taskd.registry import Registry, Task
from taskd.wire import GoTime, Signature, State, TaskState, decode_signature
from taskd.worker import workflow
from taskd.worker.execute import Kind, Outcome, RetryPolicy, attempt_of, execute
from taskd.worker.heartbeat import Heartbeats

log = structlog.get_logger("taskd.worker")

T = TypeVar("T")

BACKOFF_FIRST_S = 0.1  # first pause after a driver error...
BACKOFF_MAX_S = 5.0  # ...doubling up to this
STOP_GRACE_S = 3.0  # asked to stop during an outage: wait this long for the driver, then leave
FAST_TASK_S = 0.002  # a task averaging under this writes no STARTED and shares its writes...
COALESCE_S = 0.005  # ...waiting at most this long for others to share them with
DURATION_WEIGHT = 0.3  # weight of the newest run in a task's running average duration
AUTO_PREFETCH = 32  # messages per fetch while tasks are quick, with worker.prefetch 0


@dataclass(slots=True)
class Job:
    delivery: Delivery
    sig: Signature
    task: Task | None  # None: not registered here
    received_at: GoTime
    finished: TaskState | None = None  # stored final state of a redelivered message

    def state(self, state: State, **fields: Any) -> TaskState:
        # The backend keeps the stored PENDING record's TaskName and CreatedAt (machinery's
        # merge rule); these are what a task without such a record gets.
        return TaskState(
            self.sig.uuid, state, task_name=self.sig.name, created_at=self.received_at, **fields
        )


class Child:
    def __init__(
        self, config: Config, registry: Registry, queue: str, slot: int, heartbeats: Heartbeats
    ) -> None:
        self.config, self.registry, self.queue = config, registry, queue
        self.slot, self.heartbeats = slot, heartbeats
        self.policy = RetryPolicy(config.worker.retry_jitter, config.worker.retry_max_delay)
        self.stopping = False
        self._outages: dict[str, tuple[float, int]] = {}  # driver kind -> (since, attempts)
        self._unwritten: dict[str, TaskState] = {}  # task id -> newest state not yet written
        self._unwritten_since: float | None = None
        self._unacked: list[Delivery] = []  # settled; acked once their states are written
        self._durations: dict[str, float] = {}  # task name -> running average of run time
        self._recent_s = 1.0  # running average of every task's run time (capped at 1 s)
        self.broker: Broker
        self.backend: ResultBackend
        self.sender: Client

    # -- lifecycle ------------------------------------------------------------------------

    def run(self) -> int:
        """The child's whole life; returns its exit status."""
        self._install_signals()
        structlog.contextvars.bind_contextvars(pid=os.getpid(), child=self.slot)
        try:
            self.broker = self._retrying("broker", open_broker, self.config)
            self.backend = self._retrying("backend", open_backend, self.config)
        except (DriverError, ConfigError) as exc:  # will not go away by waiting
            log.critical("child_boot_failed", error=str(exc))
            return EXIT_CHILD_BOOT_FAILURE
        except _GiveUp:
            return EXIT_OK
        self.sender = Client(self.config, broker=self.broker, backend=self.backend)
        log.info("child_ready", queue=self.queue)
        try:
            while not self.stopping:
                self.heartbeats.beat(self.slot, busy=False)
                deliveries = self._fetch()
                if deliveries:
                    self.heartbeats.beat(self.slot, busy=True)
                    self._process(deliveries)
        except _GiveUp as exc:
            log.warning("child_left_during_outage", driver=str(exc))
        except Exception:
            log.exception("child_crashed")
            return EXIT_FAILURE
        finally:
            self._close()
        log.info("child_stopped")
        return EXIT_OK

    def _install_signals(self) -> None:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGQUIT, _on_quit)
        for ignored in (signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(ignored, signal.SIG_IGN)  # the supervisor decides what these mean
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())

    def _on_term(self, _signum: int, _frame: object) -> None:
        self.stopping = True  # finish the running task, hand the rest back, exit

    def _close(self) -> None:
        for driver in (getattr(self, "broker", None), getattr(self, "backend", None)):
            if driver is not None:
                try:
                    driver.close()
                except DriverError as exc:
                    log.warning("driver_close_failed", error=str(exc))

    # -- fetching and decoding ------------------------------------------------------------

    def _batch_size(self) -> int:
        """``worker.prefetch``, or with 0 (auto): many while this child's tasks are quick,
        one when they take time (a long task must not hold others back from idle children)."""
        if self.config.worker.prefetch:
            return self.config.worker.prefetch
        return AUTO_PREFETCH if self._recent_s < FAST_TASK_S else 1

    def _fetch(self) -> list[Delivery]:
        try:
            deliveries = self.broker.fetch(
                self.queue,
                max_messages=self._batch_size(),
                wait_s=self.config.worker.poll_interval,
            )
        except BrokerUnavailable as exc:
            self._pause_for_outage("broker", exc)
            return []
        except DriverError as exc:  # a broken queue (WRONGTYPE...): say so, slowly, and go on
            log.error("fetch_failed", error=str(exc))
            self._pause_for_outage("broker", exc)
            return []
        self._recovered("broker")
        return deliveries

    def _decode(self, delivery: Delivery, received_at: GoTime) -> Job | None:
        """A Job, or None after setting aside a message that can never run."""
        try:
            sig = decode_signature(delivery.body)
            if not sig.uuid or not sig.name:
                raise DecodeError("UUID and Name must not be empty")
        except DecodeError as exc:
            reason = f"malformed message: {exc.reason}"
            log.error(
                "message_rejected",
                queue=delivery.queue,
                reason=reason,
                body=_preview(delivery.body),
            )
            self._retrying("broker", self.broker.reject, delivery, reason)
            return None
        try:
            task: Task | None = self.registry.get(sig.name, delivery.queue)
        except TaskNotFound:
            task = None
            if sig.ignore_when_task_not_registered:
                log.warning(
                    "task_dropped", task_id=sig.uuid, task=sig.name, reason="not registered"
                )
                self._retrying("broker", self.broker.ack, delivery)
                return None
        return Job(delivery, sig, task, received_at)

    def _process(self, deliveries: Sequence[Delivery]) -> None:
        received_at = GoTime.now()
        jobs = [job for d in deliveries if (job := self._decode(d, received_at)) is not None]
        self._look_up_redelivered(jobs)
        for job in jobs[1:]:
            if job.task is not None:
                self._queue_state(job.state(State.RECEIVED))
        auto = not self.config.worker.prefetch
        for index, job in enumerate(jobs):
            if self.stopping:
                self._hand_back(jobs[index:])
                return
            later = jobs[index + 1 :]
            if auto and later and job.task is not None and not self._is_fast(job):
                self._hand_back(later)  # others can run them while this one takes its time
                self._run(job)
                break
            self._run(job)
        self._flush()

    def _look_up_redelivered(self, jobs: Sequence[Job]) -> None:
        """A message whose worker died may have finished before it died (its state stored,
        its ack lost): such a job is settled again without running a second time."""
        again = [job for job in jobs if job.delivery.redelivered and job.task is not None]
        if not again:
            return
        states = self._retrying("backend", self.backend.get_states, [j.sig.uuid for j in again])
        for job, state in zip(again, states, strict=True):
            if state is not None and state.is_completed:
                job.finished = state

    def _hand_back(self, jobs: Sequence[Job]) -> None:
        """Jobs not started go back to the head of the queue, in order, as PENDING again."""
        unannounced = {job.sig.uuid for job in jobs if self._unwritten.pop(job.sig.uuid, None)}
        self._flush()
        # A RECEIVED already written is undone; one still queued is just not written.
        runnable = [j for j in jobs if j.task is not None and j.sig.uuid not in unannounced]
        ids = [job.sig.uuid for job in runnable]
        stored = self._retrying("backend", self.backend.get_states, ids) if ids else []
        waiting = [  # PENDING again, as the sender wrote it (PENDING is stored as given)
            job.state(State.PENDING).with_changes(
                task_name=previous.task_name, created_at=previous.created_at
            )
            if previous
            else job.state(State.PENDING)
            for job, previous in zip(runnable, stored, strict=True)
        ]
        if waiting:
            self._retrying("backend", self.backend.set_states, waiting)
        self._retrying("broker", self.broker.release_many, [job.delivery for job in jobs])
        log.info("messages_released", count=len(jobs), queue=self.queue)

    # -- writing states and acks in groups --------------------------------------------------

    def _queue_state(self, state: TaskState) -> None:
        """Write this state with the next flush; a newer state of the same task replaces it."""
        self._unwritten.pop(state.task_uuid, None)
        self._unwritten[state.task_uuid] = state
        if self._unwritten_since is None:
            self._unwritten_since = time.monotonic()

    def _flush(self) -> None:
        """Write the queued states, then ack the messages they settle (never the reverse)."""
        if self._unwritten:
            self._retrying("backend", self.backend.set_states, list(self._unwritten.values()))
            self._unwritten.clear()
        if self._unacked:
            self._retrying("broker", self.broker.ack_many, self._unacked)
            self._unacked = []
        self._unwritten_since = None

    def _is_fast(self, job: Job) -> bool:
        return self._durations.get(job.sig.name, FAST_TASK_S) < FAST_TASK_S

    def _note_duration(self, name: str, seconds: float) -> None:
        average = self._durations.get(name)
        self._durations[name] = (
            seconds if average is None else average + DURATION_WEIGHT * (seconds - average)
        )
        self._recent_s += DURATION_WEIGHT * (min(seconds, 1.0) - self._recent_s)

    # -- running and settling -------------------------------------------------------------

    def _run(self, job: Job) -> None:
        sig = job.sig
        structlog.contextvars.bind_contextvars(
            task_id=sig.uuid, task=sig.name, queue=job.delivery.queue
        )
        try:
            known = self._known_outcome(job)
            if known is not None:  # nothing runs
                self._settle(job, known, quick=False)
                self._log_outcome(job, known, 0.0)
                return
            assert job.task is not None
            fast = self._is_fast(job)
            if not fast:
                # Visible before a task that may take a while; a task that takes well under a
                # millisecond would only have STARTED overwritten before anyone could see it.
                self._queue_state(job.state(State.STARTED))
                self._flush()
            started = time.perf_counter()
            outcome = execute(job.task, sig, job.delivery.queue, self.policy)
            elapsed_s = time.perf_counter() - started
            self._note_duration(sig.name, elapsed_s)
            self._settle(job, outcome, quick=fast and elapsed_s < FAST_TASK_S)
            self._log_outcome(job, outcome, round(elapsed_s * 1000, 3))
        finally:
            structlog.contextvars.unbind_contextvars("task_id", "task", "queue")

    def _known_outcome(self, job: Job) -> Outcome | None:
        """The outcome of a job that must not run: unknown task, already finished before its
        worker died, or one whose workers keep dying (worker.max_deliveries)."""
        limit, deliveries = self.config.worker.max_deliveries, job.delivery.deliveries
        if job.task is None:
            return Outcome(Kind.FAILED, error=str(TaskNotFound(job.sig.name)), dead_letter=True)
        if job.finished is not None:
            log.warning(
                "task_already_finished", state=job.finished.state.value, deliveries=deliveries
            )
            if job.finished.state is State.SUCCESS:
                return Outcome(Kind.SUCCEEDED, results=job.finished.results or ())
            return Outcome(Kind.FAILED, error=job.finished.error)
        if limit and deliveries > limit:
            reason = (
                f"delivered {deliveries} times, and each time its worker died before it"
                " finished (worker.max_deliveries)"
            )
            return Outcome(Kind.FAILED, error=reason, dead_letter=True)
        return None

    def _settle(self, job: Job, outcome: Outcome, *, quick: bool) -> None:
        """Record the outcome, send what it sets off, then ack (or dead-letter) the message.

        A quick task with nothing to set off has its state and ack written with others, at
        most COALESCE_S later; anything else is written before the next step.
        """
        sig = job.sig
        if outcome.kind is Kind.SUCCEEDED:
            self._queue_state(job.state(State.SUCCESS, results=outcome.results))
        elif outcome.kind is Kind.RETRY:
            self._queue_state(job.state(State.RETRY, error=outcome.error))
        else:
            self._queue_state(job.state(State.FAILURE, error=outcome.error))
        dead_letter = outcome.dead_letter or (
            outcome.kind is Kind.FAILED and sig.stop_task_deletion_on_error
        )
        if not dead_letter and not _sets_off(sig, outcome):
            self._unacked.append(job.delivery)
            if not quick or time.monotonic() - (self._unwritten_since or 0) >= COALESCE_S:
                self._flush()
            return
        self._flush()  # the final state is stored before anything it sets off
        if outcome.kind is Kind.SUCCEEDED:
            follow = self._chord(workflow.chord_after_success, sig)
            self._send(workflow.on_success(sig, outcome.results) + list(follow.send))
        elif outcome.kind is Kind.RETRY:
            assert outcome.retry is not None
            retry = outcome.retry
            if not retry.routing_key:
                retry = retry.with_changes(routing_key=job.delivery.queue)
            self._retrying("broker", self.sender.publish, [retry], states=())
        else:
            follow = self._chord(workflow.chord_after_failure, sig, outcome.error, GoTime.now())
            if follow.record:
                self._retrying("backend", self.backend.set_states, list(follow.record))
            self._send(workflow.on_error(sig.on_error or (), outcome.error) + list(follow.send))
        if dead_letter:
            # Kept where an operator can replay it once the task exists (or, as on SQS,
            # for a dead-letter queue to take) instead of being lost.
            self._retrying("broker", self.broker.reject, job.delivery, outcome.error)
        else:
            self._retrying("broker", self.broker.ack, job.delivery)

    def _chord(
        self, step: Callable[..., workflow.FollowUp], sig: Signature, *args: Any
    ) -> workflow.FollowUp:
        try:
            return self._retrying("backend", step, self.backend, sig, *args)
        except BackendError as exc:  # group metadata expired or unreadable
            log.error("chord_failed", group=sig.group_uuid, error=str(exc))
            return workflow.FollowUp()

    def _send(self, signatures: Sequence[Signature]) -> None:
        if signatures:
            self._retrying("broker", self.sender.publish, signatures)

    def _log_outcome(self, job: Job, outcome: Outcome, duration_ms: float) -> None:
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

    # -- riding out outages ---------------------------------------------------------------

    def _retrying(self, kind: str, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call a driver until it answers: transient errors wait with capped backoff.

        The message being settled stays leased meanwhile; if this child is stopped or killed
        before the driver comes back, the broker delivers the message again.
        """
        while True:
            try:
                result = call(*args, **kwargs)
            except (BrokerUnavailable, BackendUnavailable) as exc:
                since, _attempts = self._outages.get(kind, (time.monotonic(), 0))
                if self.stopping and time.monotonic() - since >= STOP_GRACE_S:
                    raise _GiveUp(kind) from exc  # asked to stop: the lease hands it all back
                self._pause_for_outage(kind, exc)
                continue
            self._recovered(kind)
            return result

    def _pause_for_outage(self, kind: str, exc: Exception) -> None:
        """Log an outage once, then wait a little longer each time (with jitter)."""
        since, attempts = self._outages.get(kind, (time.monotonic(), 0))
        if attempts == 0:
            log.warning(f"{kind}_unavailable", error=str(exc))
        self._outages[kind] = (since, attempts + 1)
        pause = min(BACKOFF_FIRST_S * 2 ** min(attempts, 10), BACKOFF_MAX_S)
        if self.stopping:
            pause = min(pause, STOP_GRACE_S / 4)
        self.heartbeats.beat(self.slot, busy=True)  # alive, just waiting
        time.sleep(pause * random.uniform(0.5, 1.0))

    def _recovered(self, kind: str) -> None:
        outage = self._outages.pop(kind, None)
        if outage is not None:
            log.info(f"{kind}_recovered", outage_s=round(time.monotonic() - outage[0], 3))


class _GiveUp(Exception):  # control flow, not an error
    """Stopping during an outage: leave now; whatever is not acked is delivered again."""


def _sets_off(sig: Signature, outcome: Outcome) -> bool:
    """Whether an outcome sends more messages (callbacks, chord, retry)."""
    if outcome.kind is Kind.RETRY:
        return True
    if sig.chord_callback is not None and sig.group_uuid:
        return True
    return bool(sig.on_success if outcome.kind is Kind.SUCCEEDED else sig.on_error)


def _on_quit(_signum: int, _frame: object) -> None:
    os._exit(EXIT_OK)  # exit now; whatever this child held is delivered again


def _preview(body: bytes, limit: int = 200) -> str:
    text = body[:limit].decode("utf-8", "replace")
    return text + ("..." if len(body) > limit else "")
