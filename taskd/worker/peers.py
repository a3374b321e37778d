"""What other workers did or do with a message, before this one runs it.

- A message delivered again may have finished already (its state stored, its ack lost) or
  been killed at its hard time limit: it is settled from that state (``Job.finished``).
- A broker delivers a message again when it takes its consumer for gone, also when it is
  not: RabbitMQ once its own consumer_timeout passes without an ack, Redis and SQLite once a
  consumer has been silent for ``worker.consumer_timeout`` (a stopped process, a paused
  machine), SQS once a visibility timeout could not be extended. Where the workers board
  (``taskd.worker.beacon``) shows a live worker running the task, it is left to it.
- A task not registered here that a live worker consuming the queue has (a rolling upgrade,
  or workers with different tasks on one queue, which machinery requeues for them) is left
  to that worker. One that no live worker has is still set aside, instead of going round for
  ever (machinery's hot loop).

Leaving a message (``postpone``): it is sent again, due a little later, then acked. The copy
is confirmed before the ack, so nothing is lost; it carries a header (``taskd_postponed``) so
that it is looked at in turn, and by then the task has finished (the copy is settled from its
state), or its worker has gone and dropped off the board (the copy runs), or a worker that
has the task takes it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from taskd import logs
from taskd.backends import ResultBackend
from taskd.backends.base import Entry
from taskd.boards import WORKERS, listed
from taskd.brokers import Broker
from taskd.brokers.lease import MACHINE, process_alive
from taskd.errors import DriverError
from taskd.wire import GoTime
from taskd.worker.followups import sendable
from taskd.worker.jobs import Job
from taskd.worker.limits import killed_at_time_limit

if TYPE_CHECKING:
    from taskd.client import Client

log = logs.get_logger("taskd.worker")

# On a copy ``postpone`` sent: looked up as a redelivery is (Go workers ignore the header).
POSTPONED_HEADER = "taskd_postponed"  # how many times it was left to others
MAX_LEFT = 10  # a task this worker lacks is left to peers this many times at most


class Peers:
    """The board as read once (``read``): none where it cannot be read, and then a worker
    does as it did without it."""

    def __init__(self, entries: list[Entry]) -> None:
        self._entries = entries

    @classmethod
    def read(cls, backend: ResultBackend, call: Callable[..., Any]) -> Peers:
        try:
            board = call("backend", backend.read_board, WORKERS)
        except DriverError as exc:
            log.warning("workers_board_unreadable", error=str(exc))
            return cls([])
        return cls([entry for entry in board.values() if isinstance(entry, dict)])

    def running(self) -> dict[str, str]:
        """The ids of the tasks live workers run now, each with the worker that runs it. A
        child of this machine (``lease.MACHINE``: host, boot and pid namespace) that is gone
        is left out at once: the board is a beat behind, and a crash's messages come back to
        its siblings sooner."""
        return {
            child["task"].get("id"): f"{_name(entry)} child {child.get('pid')}"
            for entry in self._entries
            for child in listed(entry.get("children"))
            if isinstance(child, dict) and isinstance(child.get("task"), dict)
            if entry.get("machine") != MACHINE or _alive(child.get("pid"))
        }

    def able(self, task: str, queue: str) -> str:
        """A live worker consuming ``queue`` that has ``task``, or ""."""
        return next((_name(entry) for entry in self._entries if _able(entry, task, queue)), "")


def _able(entry: Entry, task: str, queue: str) -> bool:
    tasks, queues = entry.get("tasks"), entry.get("queues")
    return (
        isinstance(tasks, list) and task in tasks and isinstance(queues, list) and queue in queues
    )


def _name(entry: Entry) -> str:
    return f"{entry.get('host')}:{entry.get('pid')}"


def _alive(pid: object) -> bool:
    return isinstance(pid, int) and pid > 0 and process_alive(pid)


def look_up(
    backend: ResultBackend, jobs: Sequence[Job], call: Callable[..., Any], wait_s: float
) -> None:
    """Set ``finished``, or ``elsewhere`` (whom to leave it to) and ``wait_s`` (when to look
    again: ``wait_s`` for a running task, the time for a worker that died to drop off the
    board; a tenth of it for a task a peer has), on the jobs that it applies to."""
    again = [job for job in jobs if _again(job) and job.task is not None]
    unfinished = []
    if again:
        states = call("backend", backend.readable_states, [job.sig.uuid for job in again])
        for job, state in zip(again, states, strict=True):
            if state is not None and (state.is_completed or killed_at_time_limit(state)):
                job.finished = state
            else:
                unfinished.append(job)
    # (Those to drop are dropped; one left to peers MAX_LEFT times is theirs no longer: a
    # board that says what no consumer does, such as a peer on another broker's queue.)
    unknown = [job for job in jobs if job.task is None and _times_left(job) < MAX_LEFT]
    if not unfinished and not unknown:
        return
    peers = Peers.read(backend, call)
    running = peers.running() if unfinished else {}
    for job in unfinished:
        if runner := running.get(job.sig.uuid):
            job.elsewhere, job.wait_s = f"runs on {runner}", wait_s
    for job in unknown:
        if able := peers.able(job.sig.name, job.delivery.queue):
            job.elsewhere, job.wait_s = f"registered by {able}", wait_s / 10


def _again(job: Job) -> bool:
    """Delivered again, or a copy ``postpone`` sent (a new message, delivered once)."""
    return job.delivery.redelivered or POSTPONED_HEADER in (job.sig.headers or {})


def _times_left(job: Job) -> int:
    """How many times this message was left to other workers (``postpone``)."""
    times = (job.sig.headers or {}).get(POSTPONED_HEADER, 0)
    return times if isinstance(times, int) else 0


def postpone(job: Job, sender: Client, broker: Broker, call: Callable[..., Any]) -> None:
    """Send the job's message again, due in ``job.wait_s``, then ack this delivery."""
    later = job.sig.with_changes(
        eta=GoTime(time.time_ns() + round(job.wait_s * 1e9)),
        headers={**(job.sig.headers or {}), POSTPONED_HEADER: _times_left(job) + 1},
    )
    call("broker", sender.publish, sendable([later], broker), states=())
    call("broker", broker.ack, job.delivery)
    log.warning(
        "task_left_to_peer",
        reason=job.elsewhere,
        deliveries=job.delivery.deliveries,
        again_in_s=job.wait_s,
    )
