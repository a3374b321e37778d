"""Messages delivered again: a task that finished already, or one still running elsewhere.

A broker delivers a message again when it takes its consumer for gone: a worker that died,
but also one that did not: RabbitMQ once its own consumer_timeout passes without an ack,
Redis and SQLite once a consumer has been silent for ``worker.consumer_timeout`` (a stopped
process, a paused machine, a partition), SQS once a visibility timeout could not be
extended. So a redelivered message is looked up first (``look_up``):

- its task finished (its state stored, its ack lost) or was killed at its hard time limit:
  it is settled from that state without running a second time (``Job.finished``);
- a live worker runs it now, by the workers board (``taskd.worker.beacon``): running it here
  would run it twice at once. It is sent again for later instead, then acked (``postpone``):
  the copy is confirmed before the ack, so nothing is lost; by then the task has finished,
  and the copy is settled from its state, or its worker has died and dropped off the board
  (within ``worker.consumer_timeout``), and the copy runs. The copy carries a header
  (``taskd_postponed``) so that it is looked up in turn.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from taskd.backends import ResultBackend
from taskd.boards import WORKERS
from taskd.brokers import Broker
from taskd.errors import DriverError
from taskd.wire import GoTime
from taskd.worker.followups import sendable
from taskd.worker.jobs import Job
from taskd.worker.limits import killed_at_time_limit

if TYPE_CHECKING:
    from taskd.client import Client

log = structlog.get_logger("taskd.worker")

# On a copy ``postpone`` sent: looked up as a redelivery is (Go workers ignore the header).
POSTPONED_HEADER = "taskd_postponed"


def look_up(backend: ResultBackend, jobs: Sequence[Job], call: Callable[..., Any]) -> None:
    """Set ``finished`` or ``elsewhere`` on the redelivered jobs that it applies to;
    ``call(kind, fn, *args)`` rides out outages."""
    again = [job for job in jobs if _again(job) and job.task is not None]
    if not again:
        return
    states = call("backend", backend.get_states, [job.sig.uuid for job in again])
    unfinished = []
    for job, state in zip(again, states, strict=True):
        if state is not None and (state.is_completed or killed_at_time_limit(state)):
            job.finished = state
        else:
            unfinished.append(job)
    if unfinished:
        running = _running(backend, call)
        for job in unfinished:
            job.elsewhere = running.get(job.sig.uuid, "")


def _again(job: Job) -> bool:
    """Delivered again, or a copy ``postpone`` sent (a new message, delivered once)."""
    return job.delivery.redelivered or POSTPONED_HEADER in (job.sig.headers or {})


def _running(backend: ResultBackend, call: Callable[..., Any]) -> dict[str, str]:
    """The ids of the tasks live workers run now, each with the worker that runs it; none
    where the board cannot be read (the task then runs, as it did before). A child of this
    host that is gone is left out at once: the board is a beat behind, and a crash's
    messages come back to its siblings sooner."""
    try:
        board = call("backend", backend.read_board, WORKERS)
    except DriverError as exc:
        log.warning("workers_board_unreadable", error=str(exc))
        return {}
    here = socket.gethostname()
    return {
        child["task"]["id"]: f"{entry.get('host')}:{entry.get('pid')} child {child.get('pid')}"
        for entry in board.values()
        for child in entry.get("children") or ()
        if isinstance(child, dict) and isinstance(child.get("task"), dict)
        if entry.get("host") != here or _alive(child.get("pid"))
    }


def _alive(pid: object) -> bool:
    """A process of this host that exists and is not a zombie (dead, not yet reaped)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc to read: exists, as far as can be told
        return True
    return stat.rpartition(")")[2].split()[:1] not in (["Z"], ["X"])


def postpone(
    job: Job, delay_s: float, sender: Client, broker: Broker, call: Callable[..., Any]
) -> None:
    """Send the job's message again, due in ``delay_s``, then ack this delivery."""
    later = job.sig.with_changes(
        eta=GoTime(time.time_ns() + round(delay_s * 1e9)),
        headers={**(job.sig.headers or {}), POSTPONED_HEADER: job.delivery.deliveries},
    )
    call("broker", sender.publish, sendable([later], broker), states=())
    call("broker", broker.ack, job.delivery)
    log.warning(
        "task_running_elsewhere",
        worker=job.elsewhere,
        deliveries=job.delivery.deliveries,
        again_in_s=delay_s,
    )
