"""Sending tasks and reading their results, from applications and from the worker itself.

``Client.send`` does what machinery's ``SendTask`` does: fill in the id, routing key and
headers, record PENDING (TaskName, CreatedAt), then publish. Callbacks, chain links and
retries sent by the worker go through the same code. Up to ``client.pipeline`` sends may
still await their broker's confirm when ``send`` returns (``taskd.confirms``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, Self, TypeVar

from taskd.backends import ResultBackend, open_backend
from taskd.backends.base import Progress
from taskd.boards import live_workers
from taskd.brokers import Broker, Message, open_broker
from taskd.config import Config, load_config
from taskd.confirms import Window
from taskd.errors import BackendUnavailable, ResultTimeout
from taskd.pairs import Send, sender_for
from taskd.patience import ride_out, unavailable, unsent
from taskd.results import AsyncResult, ChainResult, ChordResult, GroupResult
from taskd.revocations import Revocation, revoke
from taskd.wire import Arg, GoTime, GroupMeta, Signature, State, TaskState, new_id
from taskd.wire.gotime import LATEST_ETA
from taskd.wire.signature import SOFT_TIME_LIMIT_HEADER, TIME_LIMIT_HEADER, build_signature
from taskd.wire.state import build_state
from taskd.workflows import Chain, Chord, Group

T = TypeVar("T")
# How long a wait for results goes before it takes in the confirms of earlier sends.
FIRST_WAIT_S = 0.05
# A wait for results rides out a backend outage (taskd.patience) until its timeout, or for
# this long where it has none.
OUTAGE_PATIENCE_S = 60.0


def when(eta: datetime | GoTime | None = None, countdown_s: float | None = None) -> GoTime | None:
    """An ETA from an absolute time or a delay in seconds (not both)."""
    if eta is not None and countdown_s is not None:
        raise ValueError("give an ETA or a countdown, not both")
    if countdown_s is not None:
        return GoTime.after(countdown_s)
    if isinstance(eta, datetime):
        eta = GoTime.from_datetime(eta)
    check_eta(eta)
    return eta


def check_eta(eta: GoTime | None) -> None:
    """ValueError for an ETA no broker can hold."""
    if eta is not None and eta > LATEST_ETA:
        raise ValueError(f"ETA {eta} is later than the latest one possible, {LATEST_ETA}")


def signature(
    name: str,
    *args: Any,
    eta: datetime | GoTime | None = None,
    countdown: float | None = None,
    retry_count: int = 0,
    retry_timeout: int = 0,
    immutable: bool = False,
    priority: int = 0,
    queue: str = "",
    on_success: Sequence[Signature] | None = None,
    on_error: Sequence[Signature] | None = None,
    task_id: str = "",
    time_limit: float | None = None,
    soft_time_limit: float | None = None,
    headers: Mapping[str, Any] | None = None,
) -> Signature:
    """A task signature; plain Python args are typed after their values (int -> int64...).

    The id is ``task_id`` if given, else one is assigned when the signature is sent or built
    into a workflow (a chord's callback gets ``chord_<uuid4>``). ``time_limit`` and
    ``soft_time_limit`` (seconds; 0: none) travel as headers and override the task's own.
    ``headers`` are machinery's Signature.Headers (the limits are added to them).

    Pass ``Arg`` objects (``Arg.of("uint8", 5)``, ``Arg.parse("[]int64:[1,2]")``) for any
    other machinery type.
    """
    return build_signature(  # Signature's fields, in order: one is built for every send
        name,
        task_id,  # empty: given when sent (or when a workflow is built)
        queue,
        when(eta, countdown),
        "",
        0,
        tuple([Arg.infer(arg) for arg in args]),
        _with_limits(headers, time_limit, soft_time_limit),
        priority,
        immutable,
        retry_count,
        retry_timeout,
        tuple(on_success) if on_success else None,
        tuple(on_error) if on_error else None,
        None,
        "",
        "",
        False,
        False,
    )


def _with_limits(
    headers: Mapping[str, Any] | None, hard_s: float | None, soft_s: float | None
) -> Mapping[str, Any] | None:
    """The headers with the time limits added: whole seconds as numbers, others as decimal
    text (AMQP headers cannot carry floats through pika)."""
    if hard_s is None and soft_s is None:
        return None if headers is None else dict(headers)  # the caller's own stays theirs
    given = ((TIME_LIMIT_HEADER, hard_s), (SOFT_TIME_LIMIT_HEADER, soft_s))
    for key, value in given:
        if value is not None and not value >= 0:
            raise ValueError(f"{key} must be a number of seconds, 0 or more, got {value!r}")
    limits = {
        key: int(value) if float(value).is_integer() else repr(float(value))
        for key, value in given
        if value is not None
    }
    return {**(headers or {}), **limits}


class Client:
    """Sends signatures and looks up results; opens the configured drivers on first use."""

    def __init__(
        self,
        config: Config | None = None,
        *,
        broker: Broker | None = None,
        backend: ResultBackend | None = None,
        pipeline: int | None = None,
        send_patience: float | None = None,
        follow_ups: bool = False,
    ) -> None:
        """``pipeline``: how many sends may await their confirms (default:
        ``client.pipeline``; 0: each send returns once confirmed). ``send_patience``: how
        long a send rides out a broker or backend it cannot reach (default:
        ``client.send_patience``; 0: it raises at once). ``follow_ups``: the daemon's own
        sends (``taskd.pairs.sender_for``)."""
        self._follow_ups = follow_ups
        self.config = config if config is not None else load_config()
        client = self.config.client
        self._send_patience = client.send_patience if send_patience is None else send_patience
        self._broker, self._backend = broker, backend
        self._send: Send | None = None  # how this pair of drivers sends (taskd.pairs)
        self._owns_drivers = broker is None and backend is None
        self._window = Window(client.pipeline if pipeline is None else pipeline, self._patiently)
        # Drivers open on first use, once, whichever threads get there first: a second one,
        # dropped, would close its connections under sends still reading their replies.
        self._opening = threading.Lock()

    @property
    def broker(self) -> Broker:
        if self._broker is None:
            with self._opening:
                if self._broker is None:
                    self._broker = open_broker(self.config)
        return self._broker

    @property
    def backend(self) -> ResultBackend:
        if self._backend is None:
            with self._opening:
                if self._backend is None:
                    self._backend = open_backend(self.config)
        return self._backend

    def flush(self) -> None:
        """Wait until the broker confirmed every send so far; SendError names those it
        refused or could not confirm (they may be sent again)."""
        self._window.flush()

    def close(self) -> None:
        """Flush, then close the drivers this client opened."""
        try:
            self.flush()
        finally:
            if self._owns_drivers:
                for driver in (self._broker, self._backend):
                    if driver is not None:
                        driver.close()
                self._broker = self._backend = None
                self._send = None

    @property
    def reading_backend(self) -> ResultBackend:
        """The result backend, once every send so far is confirmed, so that reads see them."""
        self.flush()
        return self.backend

    def wait_states(
        self,
        task_ids: Sequence[str],
        timeout_s: float | None = None,
        progress: Progress | None = None,
    ) -> list[TaskState]:
        """The backend's ``wait_states``, riding out an outage of the backend (a failover, a
        restart) for as long as the wait may last (OUTAGE_PATIENCE_S without a timeout): it
        is logged once, the wait goes on once the backend answers, and only a wait whose time
        runs out during it raises it (BackendUnavailable, not ResultTimeout)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s

        def wait() -> list[TaskState]:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            return self._wait_overlapped(task_ids, left, progress)

        # A wait without a timeout gives an outage OUTAGE_PATIENCE_S (a backend that never
        # answers, a mistyped URL, is then an error, not a silent hang).
        return ride_out(
            wait,
            may_repeat=lambda exc: isinstance(exc, BackendUnavailable),
            ends=lambda since: since + OUTAGE_PATIENCE_S if deadline is None else deadline,
            waiting_for=len(task_ids),
        )

    def _wait_overlapped(
        self, task_ids: Sequence[str], timeout_s: float | None, progress: Progress | None
    ) -> list[TaskState]:
        """Waiting overlapped with the confirms of earlier sends: a task usually runs while
        its send is being confirmed, so waiting for the confirm first would add a round
        trip. Where every state is final within FIRST_WAIT_S, the confirms are left to the
        next send, flush or close: a task that finished reached a worker, so its send was
        delivered. Else they are taken in then (a refused send raises SendError instead of
        being waited for), and the wait goes on."""
        if not len(self._window):
            return self.backend.wait_states(task_ids, timeout_s, progress)
        started = time.monotonic()
        first_s = FIRST_WAIT_S if timeout_s is None else min(FIRST_WAIT_S, timeout_s)
        try:
            return self.backend.wait_states(task_ids, first_s, progress)
        except ResultTimeout:
            self.flush()
            if timeout_s is not None and first_s >= timeout_s:
                raise
        left = None if timeout_s is None else timeout_s - (time.monotonic() - started)
        return self.backend.wait_states(task_ids, left, progress)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sending --------------------------------------------------------------------------

    def send(self, task: str | Signature, *args: Any, **options: Any) -> AsyncResult:
        """Send a task by name with args (see ``signature``), or a ready Signature."""
        if isinstance(task, Signature):
            if args or options:
                raise TypeError("pass args and options to signature(), not with a Signature")
            (sent,) = self.publish([task])
            return AsyncResult(self, sent.uuid)
        # Filled in before the Signature is built: one built per send, not two (prepare).
        fresh = not options.get("task_id")
        options["task_id"], options["queue"], options["headers"] = self._filled_in(
            options.get("task_id", ""), options.get("queue", ""), options.get("headers")
        )
        (sent,) = self._publish([self.prepare(signature(task, *args, **options))], fresh)
        return AsyncResult(self, sent.uuid)

    def send_many(self, signatures: Sequence[Signature]) -> list[AsyncResult]:
        """Send many tasks at once, in as few round trips as the drivers allow (one write for
        their PENDING states and messages with the Redis broker and results), in order."""
        return [AsyncResult(self, sent.uuid) for sent in self.publish(signatures)]

    def prepare(self, sig: Signature) -> Signature:
        """What machinery's SendTask fills in: the id, the routing key, empty headers.

        ValueError for a signature no worker could run: no task name, an impossible ETA.
        """
        if not sig.name:
            raise ValueError("a task name is needed")
        check_eta(sig.eta)
        if sig.uuid and sig.routing_key and sig.headers is not None:
            return sig
        uuid, routing_key, headers = self._filled_in(sig.uuid, sig.routing_key, sig.headers)
        return replace(sig, uuid=uuid, routing_key=routing_key, headers=headers)

    def _filled_in(
        self, uuid: str, routing_key: str, headers: Mapping[str, Any] | None
    ) -> tuple[str, str, Mapping[str, Any]]:
        """The id, routing key and headers, each filled in where it is empty."""
        return (
            uuid or new_id("task"),
            routing_key or self.broker.routing_key(self.config.default_queue),
            {} if headers is None else headers,
        )

    def publish(
        self, signatures: Sequence[Signature], *, states: Sequence[TaskState] | None = None
    ) -> list[Signature]:
        """Record each task's state (PENDING unless ``states`` says otherwise), then publish.

        The states go out first so a fast worker's RECEIVED is never overwritten by a late
        PENDING, in as few round trips as the drivers allow (``taskd.pairs``); a PENDING
        for an id given here never overwrites a state already stored (a worker's, if it beat
        it).
        """
        fresh = not any(sig.uuid for sig in signatures)  # ids given here, just now
        return self._publish([self.prepare(sig) for sig in signatures], fresh, states)

    def _publish(
        self,
        prepared: list[Signature],
        fresh: bool,
        states: Sequence[TaskState] | None = None,
    ) -> list[Signature]:
        messages = [
            Message(
                sig.routing_key,
                sig.encode(),
                sig.eta,
                sig.priority,
                sig.headers,
                sig.broker_message_group_id,
            )
            for sig in prepared
        ]
        self.broker.check_priorities(messages)  # before recording anything that is refused
        if states:
            self.backend.set_states(states)
        if self._send is None:
            broker, backend = self.broker, self.backend
            with self._opening:
                self._send = self._send or sender_for(broker, backend, self._follow_ups)
        send, now = self._send, GoTime.now()
        pending = [pending_state(s, now) for s in prepared] if states is None else []
        self._patiently(
            lambda: self._window.send(lambda: (send(messages, pending, fresh), prepared))
        )
        return prepared

    def _patiently(self, write: Callable[[], T], *, idempotent: bool = False) -> T:
        """``write()``, made again while the broker or backend cannot be reached and nothing
        was sent (``unsent``; any outage, for an ``idempotent`` write made before a send
        publishes), for up to ``client.send_patience``."""
        may_repeat = unavailable if idempotent else unsent
        return ride_out(write, may_repeat=may_repeat, ends=self._patience_ends)

    def _patience_ends(self, outage_since: float) -> float:
        return outage_since + self._send_patience

    def send_chain(self, workflow: Chain) -> ChainResult:
        """Send a chain: its head, with the other links nested inside (machinery's SendChain).
        Every link is recorded PENDING first, so each can be looked up, and revoked, at once."""
        now = GoTime.now()
        pending = [pending_state(link, now) for link in workflow.links[1:]]
        self._patiently(lambda: self.backend.set_states(pending), idempotent=True)
        self.publish([workflow.head])
        return ChainResult(self, workflow.link_ids)

    def send_group(self, workflow: Group, send_concurrency: int = 0) -> GroupResult:
        """Store the group's metadata, then send its members, ``send_concurrency`` per batch
        (0: all in one batch)."""
        meta = GroupMeta(workflow.group_uuid, workflow.member_ids, created_at=GoTime.now())
        self._patiently(lambda: self.backend.init_group(meta), idempotent=True)
        size = send_concurrency or len(workflow.members)
        for start in range(0, len(workflow.members), size):
            self.publish(workflow.members[start : start + size])
        return GroupResult(self, workflow.group_uuid, workflow.member_ids)

    def send_chord(self, workflow: Chord, send_concurrency: int = 0) -> ChordResult:
        """Send a chord's group; its callback is recorded PENDING now and sent by a worker."""
        callback = self.prepare(workflow.callback)
        pending = pending_state(callback, GoTime.now())
        self._patiently(lambda: self.backend.set_state(pending), idempotent=True)
        group_result = self.send_group(workflow.group, send_concurrency)
        return ChordResult(group_result, AsyncResult(self, callback.uuid))

    # -- results --------------------------------------------------------------------------

    def result(self, task_id: str) -> AsyncResult:
        return AsyncResult(self, task_id)

    def revoke(self, task_ids: Sequence[str], *, terminate: bool = False) -> list[Revocation]:
        """Revoke tasks: what happened to each (``taskd.revocations``)."""
        expire_s = self.config.results_expire_in_s
        return revoke(self.reading_backend, task_ids, terminate=terminate, expire_s=expire_s)

    def workers(self) -> list[dict[str, Any]]:
        """The live daemons sharing this backend, as ``taskctl workers --json`` shows them."""
        return live_workers(self.backend)

    def group_result(self, group_id: str) -> GroupResult | None:
        """The members of a stored group, or None when there is no such group."""
        meta = self.reading_backend.get_group(group_id)
        return None if meta is None else GroupResult(self, group_id, meta.task_uuids)


def pending_state(sig: Signature, created_at: GoTime) -> TaskState:
    """machinery's NewPendingTaskState."""
    return build_state(sig.uuid, State.PENDING, sig.name, None, "", created_at, 0)
