"""A worker child: fetch, decode, execute, record, acknowledge; until told to stop.

Following one message: ``serve`` fetches a batch; ``_handle_batch`` accepts each message
(``_accept``: malformed ones are set aside, unregistered ones dropped or failed), then
``_handle`` runs one job and ``_settle`` records its outcome, sends what it sets off and acks
it. Helpers hold the rest: ``Pacing`` (batch sizes, quick tasks), ``WriteBuffer`` (states
and acks shared between quick tasks, a state always written before its ack) and ``Outages``
(transient driver errors ridden out; the message stays leased meanwhile, and comes back if
the child dies), ``SetAside`` (dead letters; one the broker refuses stays leased), ``limits``
(a task's time limits; the supervisor enforces the hard one) and ``Recycling`` (leaving for a
fresh child after max_tasks_per_child or max_memory_per_child).

Round trips: one fetch per batch; quick tasks share one state write and one ack; a task that
takes longer gets STARTED before it runs and its final state and ack right after. Backends
apply machinery's merge rule, so no state is read first (but a redelivered message's).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial

import structlog

from taskd import logs
from taskd.backends import ResultBackend
from taskd.boards import REVOKED as REVOKED_BOARD
from taskd.brokers import Broker, Delivery, open_broker
from taskd.client import Client
from taskd.config import Config
from taskd.errors import (
    BrokerUnavailable,
    ConfigError,
    DecodeError,
    DriverError,
    DriverStale,
    GiveUp,
    TaskNotFound,
)
from taskd.exitcodes import EXIT_CHILD_BOOT_FAILURE, EXIT_CHILD_RECYCLE, EXIT_FAILURE, EXIT_OK
from taskd.pairs import settler_for
from taskd.registry import Registry, Task
from taskd.revocations import REVOKED, RevokedIds
from taskd.wire import GoTime, State, decode_signature
from taskd.worker import followups, peers, signals
from taskd.worker.execute import Kind, Outcome, RetryPolicy, attempt_of, execute, outcome_of_stored
from taskd.worker.jobs import Job, final_state, log_outcome, pending_again
from taskd.worker.limits import limits_of
from taskd.worker.liveness import ChildLiveness, reached_backend
from taskd.worker.metrics import task_metrics
from taskd.worker.outages import Outages
from taskd.worker.pacing import FAST_TASK_S, Pacing
from taskd.worker.recycling import Recycling
from taskd.worker.running import RunningTasks
from taskd.worker.setaside import SetAside
from taskd.worker.shared_ids import SharedIds
from taskd.worker.writes import WriteBuffer

log = logs.get_logger("taskd.worker")


class Child:
    def __init__(
        self,
        config: Config,
        registry: Registry,
        queue: str,
        slot: int,
        liveness: ChildLiveness,
        *,
        connect_broker: Callable[[Config], Broker] = open_broker,
        connect_backend: Callable[[Config], ResultBackend] = reached_backend,
    ) -> None:
        self.config, self.registry, self.queue = config, registry, queue
        self.slot, self.liveness = slot, liveness
        self._connect_broker, self._connect_backend = connect_broker, connect_backend
        self.policy = RetryPolicy(config.worker.retry_jitter, config.worker.retry_max_delay)
        self.stopping = self.ready = False
        self.pacing = Pacing(config.worker.prefetch)
        self.recycling = Recycling(config.worker)  # max_tasks_per_child, max_memory_per_child
        self.tasks: RunningTasks | None = None  # what it runs, for its supervisor (if any)
        self.shared_revoked: SharedIds | None = None  # its supervisor's copy of the board
        self.metrics = task_metrics()  # None unless the supervisor serves metrics.listen
        beat, report = partial(liveness.stamp, slot, busy=True), partial(liveness.outage, slot)
        self.outages = Outages(lambda: self.stopping, beat, report)
        self.broker: Broker
        self.backend: ResultBackend
        self.sender: Client
        self.writes: WriteBuffer
        self.set_aside: SetAside

    # -- lifecycle ------------------------------------------------------------------------

    def run(self) -> int:
        """The child's whole life as a forked process; returns its exit status."""
        signals.install(self._on_term)
        structlog.contextvars.bind_contextvars(pid=os.getpid(), child=self.slot)
        return self.serve()

    def serve(self) -> int:
        """Connect, then fetch and handle messages until ``stopping``; the exit status."""
        try:
            self.broker = self.outages.call("broker", self._connect_broker, self.config)
            self.backend = self.outages.call("backend", self._connect_backend, self.config)
        except (DriverError, ConfigError) as exc:  # will not go away by waiting
            log.critical("child_boot_failed", error=str(exc))
            self._close()
            return EXIT_CHILD_BOOT_FAILURE
        except GiveUp:
            self._close()
            return EXIT_OK
        # pipeline=0: what a task sends is confirmed before its message is acked; outages
        # are the child's to ride out (self.outages), not each send's.
        self.sender = Client(
            self.config,
            broker=self.broker,
            backend=self.backend,
            pipeline=0,
            send_patience=0,
            follow_ups=True,
        )
        self.revoked = RevokedIds(
            lambda: self.outages.call("backend", self.backend.read_board, REVOKED_BOARD),
            None if self.shared_revoked is None else self.shared_revoked.read,
        )
        self.set_aside = SetAside(self.broker, self.outages.call)
        settle = settler_for(self.broker, self.backend)  # states and acks in one call, or None
        self.writes = WriteBuffer(
            lambda states: self.outages.call("backend", self.backend.set_states, states),
            lambda deliveries: self.outages.call("broker", self.broker.ack_many, deliveries),
            None
            if settle is None
            else lambda states, acks: self.outages.call("broker", settle, states, acks),
            self.set_aside.reject,
        )
        try:
            while not self.stopping:
                self.liveness.stamp(self.slot, busy=False)
                deliveries = self._fetch()
                if deliveries:
                    with self.liveness.busy(self.slot):  # stamps from a thread meanwhile
                        self._handle_batch(deliveries)
                else:
                    self.writes.flush()  # what the last batch left to share, before waiting
            self.writes.flush()
        except GiveUp as exc:
            log.warning("child_left_during_outage", driver=str(exc))
        except Exception:
            log.exception("child_crashed")
            return EXIT_FAILURE
        finally:
            self._close()
        log.info("child_stopped")
        return EXIT_CHILD_RECYCLE if self.recycling.due else EXIT_OK

    def _on_term(self, _signum: int, _frame: object) -> None:
        self.stopping = True  # finish the running task, hand the rest back, exit

    def _close(self) -> None:
        for driver in (getattr(self, "broker", None), getattr(self, "backend", None)):
            if driver is not None:
                try:
                    driver.close()
                except DriverError as exc:
                    log.warning("driver_close_failed", error=str(exc))

    # -- one batch ------------------------------------------------------------------------

    def _fetch(self) -> list[Delivery]:
        try:
            deliveries = self.broker.fetch(
                self.queue,
                max_messages=self.recycling.batch_size(self.pacing.batch_size()),
                # Writes waiting to be shared, or the first fetch (ready as soon as it
                # returns, not after an idle wait): look without waiting; the loop waits next.
                wait_s=0.0
                if self.writes.pending or not self.ready
                else self.config.worker.poll_interval,
            )
        except BrokerUnavailable as exc:
            self.outages.pause("broker", exc)
            return []
        except DriverStale as exc:  # a fresh child opens anew what the URL names now
            log.error("driver_stale", error=str(exc))
            self.recycling.reason, self.stopping = "driver_stale", True
            return []
        except DriverError as exc:  # a broken queue (WRONGTYPE...): say so, slowly, and go on
            log.error("fetch_failed", error=str(exc))
            self.outages.pause("broker", exc)
            return []
        self.outages.ended("broker")
        if not self.ready:  # its backend answered at boot, its broker now: its queue exists
            self.ready = True
            log.info("child_ready", queue=self.queue)  # logged before taskd_ready can be
            bounded = self.broker.counts_deliveries and self.config.worker.max_deliveries > 0
            self.liveness.mark_ready(self.slot, bounded=bounded)
        return deliveries

    def _handle_batch(self, deliveries: Sequence[Delivery]) -> None:
        received_at = GoTime.now()
        jobs = [job for d in deliveries if (job := self._accept(d, received_at)) is not None]
        peers.look_up(self.backend, jobs, self.outages.call, self.config.worker.consumer_timeout)
        # Visible as waiting behind the first, unless all are quick: then each is done before
        # its RECEIVED could be read, and writing it would only cost a write.
        if not all(self.pacing.is_quick(job.sig.name) for job in jobs):
            for job in jobs[1:]:
                if job.task is not None and job.finished is None and not job.elsewhere:
                    self.writes.add_state(job.state(State.RECEIVED))
                    job.announced = True
        more: bool | None = None  # others to come: the batch's, else the broker's (asked once)
        for index, job in enumerate(jobs):
            if self.stopping:
                self._hand_back(jobs[index:])
                return
            waiting = jobs[index + 1 :]
            if waiting and self._would_hold_back(job):
                self._hand_back(waiting)  # idle children can run them meanwhile
                waiting = []
            more = bool(waiting) or self.broker.more_ready(self.queue)
            self._handle(job, more=more)
            if not waiting:
                break
        if more is None:  # no job to run
            more = self.broker.more_ready(self.queue)
        if self.writes.pending and (self.writes.due or not more):
            self.writes.flush()  # else the next batch's quick tasks share the write

    def _accept(self, delivery: Delivery, received_at: GoTime) -> Job | None:
        """A Job, or None after setting aside a message that can never run (or dropping one
        whose task is not registered, where its sender asked for that)."""
        try:
            sig = decode_signature(delivery.body)
            if not sig.uuid or not sig.name:
                raise DecodeError("UUID and Name must not be empty")
        except DecodeError as exc:
            reason = f"malformed message: {exc.reason}"
            self.set_aside.malformed(delivery, reason, received_at, self.writes)
            return None
        except Exception as exc:  # unforeseen: still the message's, and must not stop the worker
            reason = f"malformed message: it could not be read: {type(exc).__name__}: {exc}"
            self.set_aside.malformed(delivery, reason, received_at, self.writes)
            return None
        try:
            task: Task | None = self.registry.get(sig.name, delivery.queue)
        except TaskNotFound:
            task = None
            if sig.ignore_when_task_not_registered:
                log.warning(
                    "task_dropped", task_id=sig.uuid, task=sig.name, reason="not registered"
                )
                self.outages.call("broker", self.broker.ack, delivery)
                return None
        return Job(delivery, sig, task, received_at)

    def _would_hold_back(self, job: Job) -> bool:
        """Whether running this job first would keep the rest of its batch from idle children
        (a task not known to be quick, under auto prefetch) or see them killed with it (one
        with a hard time limit: each would count a delivery), where a hand-back is free."""
        if self.broker.counts_releases or job.task is None or self.pacing.is_quick(job.sig.name):
            return False
        return self.pacing.auto or limits_of(job.sig, job.task, self.config.worker).hard_s > 0

    def _hand_back(self, jobs: Sequence[Job]) -> None:
        """Jobs not started go back to the head of the queue, in order, as PENDING again."""
        unwritten = {job.sig.uuid for job in jobs if self.writes.drop_state(job.sig.uuid)}
        self.writes.flush()
        # A RECEIVED already written is undone; one still waiting was just not written.
        announced = [j for j in jobs if j.announced and j.sig.uuid not in unwritten]
        if announced:
            ids = [job.sig.uuid for job in announced]
            stored = self.outages.call("backend", self.backend.readable_states, ids)
            pending = [
                pending_again(job, prev) for job, prev in zip(announced, stored, strict=True)
            ]
            self.outages.call("backend", self.backend.set_states, pending)
        self.outages.call("broker", self.broker.release_many, [job.delivery for job in jobs])
        log.info("messages_released", count=len(jobs), queue=self.queue)

    # -- one job --------------------------------------------------------------------------

    def _handle(self, job: Job, *, more: bool) -> None:
        """Run and settle one job; with no ``more`` to come (the batch's, or known to be
        ready), its state and ack are written at once, before its logging and bookkeeping."""
        structlog.contextvars.bind_contextvars(
            task_id=job.sig.uuid, task=job.sig.name, queue=job.delivery.queue
        )
        try:
            if job.elsewhere:  # a live worker runs it, or has it where this one has not
                peers.postpone(job, self.sender, self.broker, self.outages.call)
                return
            outcome = self._outcome_without_running(job)
            if outcome is not None:
                self._settle(job, outcome, share=False)
                self._log_outcome(job, outcome, 0.0)
                return
            assert job.task is not None
            limits = limits_of(job.sig, job.task, self.config.worker)
            # A retry's STARTED overwrites the RETRY its attempt killed at a hard time limit
            # left, so a crash of this attempt is never taken for that kill (limits.py).
            may_follow_a_kill = limits.hard_s > 0 and attempt_of(job.sig) > 1
            quick = self.pacing.is_quick(job.sig.name) and not may_follow_a_kill
            if not quick:  # visible before a task that may take a while
                self.writes.add_state(job.state(State.STARTED))
                self.writes.flush()
            started = time.perf_counter()
            if self.tasks is not None:  # what it runs, for its supervisor
                self.tasks.start(self.slot, job.sig, limits.hard_s)
            try:
                outcome = execute(job.task, job.sig, job.delivery.queue, self.policy, limits)
            finally:
                if self.tasks is not None:
                    self.tasks.finish(self.slot)
            elapsed_s = time.perf_counter() - started
            self.pacing.ran(job.sig.name, elapsed_s)
            self._settle(job, outcome, share=more and quick and elapsed_s < FAST_TASK_S)
            self._log_outcome(job, outcome, round(elapsed_s * 1000, 3))
            if self.recycling.ran():
                self.stopping = True  # the rest of its batch is handed back; a new child follows
        finally:
            structlog.contextvars.unbind_contextvars("task_id", "task", "queue")

    def _died_after_finishing(self, job: Job) -> bool:
        """Set aside a message that sets off more, finished (its state kept), whose workers
        then died past worker.max_deliveries: in what it sets off, as this one would."""
        limit, deliveries = self.config.worker.max_deliveries, job.delivery.deliveries
        if job.finished is None or not limit or deliveries <= limit:
            return False
        reason = f"{job.finished.state.value} stored, then delivered {deliveries} times, its"
        reason += " worker dying before the ack (in what it sets off?): worker.max_deliveries"
        log.error("message_rejected", queue=job.delivery.queue, reason=reason)
        self.set_aside.reject(job.delivery, reason)
        return True

    def _outcome_without_running(self, job: Job) -> Outcome | None:
        """The outcome of a job that must not run: already finished before its worker died,
        revoked, unknown task, or one whose workers keep dying (worker.max_deliveries)."""
        limit, deliveries = self.config.worker.max_deliveries, job.delivery.deliveries
        if job.finished is not None:
            log.warning(
                "task_already_finished", state=job.finished.state.value, deliveries=deliveries
            )
            return outcome_of_stored(job.finished, job.sig, self.policy)
        if job.sig.uuid in self.revoked:
            return Outcome(Kind.FAILED, error=REVOKED)
        if job.task is None:
            return Outcome(Kind.FAILED, error=str(TaskNotFound(job.sig.name)), dead_letter=True)
        if limit and deliveries > limit:
            reason = (
                f"delivered {deliveries} times, and each time its worker died before it"
                " finished (worker.max_deliveries)"
            )
            return Outcome(Kind.FAILED, error=reason, dead_letter=True)
        return None

    def _settle(self, job: Job, outcome: Outcome, *, share: bool) -> None:
        """Record the outcome, send what it sets off, then ack (or dead-letter) the message;
        with ``share`` (a quick task, others to come) and nothing to set off, its state and
        ack are written with others, a few milliseconds later at most, else before going on."""
        self.writes.add_state(final_state(job, outcome))
        dead_letter = outcome.dead_letter or (
            outcome.kind is Kind.FAILED and job.sig.stop_task_deletion_on_error
        )
        if not dead_letter and not followups.sets_off(job.sig, outcome):
            self.writes.ack_after_states(job.delivery, job.sig.uuid, wait=share)
            return
        self.writes.flush()  # the final state is stored before anything it sets off
        if self._died_after_finishing(job):
            return
        if self.writes.set_aside(job.delivery, job.sig.uuid):  # no state of it can be stored
            return
        if job.sig.uuid in self.writes.refused:  # stored as a FAILURE: it sets off what that does
            outcome = Outcome(Kind.FAILED, error=self.writes.refused[job.sig.uuid])
        follow = self.outages.call("backend", followups.after, self.backend, job, outcome)
        if job.finished is not None:  # settled before, its ack lost: what no worker took yet
            follow = self.outages.call("backend", followups.not_taken, self.backend, follow)
        try:
            followups.set_off(follow, self.backend, self.broker, self.sender, self.outages.call)
        except followups.REFUSALS as exc:  # for good: kept aside, not a crash loop
            log.error("followups_refused", error=str(exc))
            dead_letter, outcome = True, replace(outcome, error=f"{followups.REFUSED}: {exc}")
        if dead_letter:
            # Kept where an operator can replay it once the task exists (or, as on SQS,
            # for a dead-letter queue to take) instead of being lost.
            self.set_aside.reject(job.delivery, outcome.error)
        else:
            self.outages.call("broker", self.broker.ack, job.delivery)

    def _log_outcome(self, job: Job, outcome: Outcome, duration_ms: float) -> None:
        self.liveness.count_done(self.slot, failed=outcome.kind is Kind.FAILED)
        if self.metrics is not None:
            self.metrics.record(job, outcome, duration_ms)
        log_outcome(job, outcome, duration_ms)
