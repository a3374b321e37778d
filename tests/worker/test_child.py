"""The worker child in-process, with in-memory drivers: the hot loop's promises one by one."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from taskd import chain, chord
from taskd.backends.base import SPENT_CLAIM
from taskd.brokers import Delivery, Message
from taskd.client import Client, signature
from taskd.config import Config, WorkerConfig
from taskd.errors import BackendError, BrokerError, ConfigError
from taskd.exitcodes import EXIT_CHILD_BOOT_FAILURE, EXIT_OK
from taskd.registry import Registry, load_registry
from taskd.wire import GoTime, State, TaskResult, TaskState, decode_signature
from taskd.worker.child import Child
from taskd.worker.jobs import Job
from taskd.worker.liveness import ChildLiveness
from tests.support.fakes import CountingMemoryBroker, MemoryBackend, MemoryBroker
from tests.support.tasks import lines, runs

QUEUE = "tasks"


class Rig:
    """A child wired to in-memory drivers that stops once its queue is empty."""

    def __init__(
        self,
        broker_class: type[MemoryBroker] = MemoryBroker,
        backend_class: type[MemoryBackend] = MemoryBackend,
        **worker: Any,
    ) -> None:
        self.journal: list[tuple[str, Any]] = []
        self.broker = broker_class(self.journal, on_idle=self.stop)
        self.backend = backend_class(self.journal)
        worker.setdefault("poll_interval", 0.01)
        self.config = Config(default_queue=QUEUE, worker=WorkerConfig(**worker))
        self.registry: Registry = load_registry(["tests.support.tasks"])
        self.client = Client(self.config, broker=self.broker, backend=self.backend)
        self.child = Child(
            self.config,
            self.registry,
            QUEUE,
            0,
            ChildLiveness(1),
            connect_broker=lambda _config: self.broker,
            connect_backend=lambda _config: self.backend,
        )

    def stop(self) -> None:
        self.child.stopping = True

    def serve(self) -> int:
        self.broker.calls.clear()  # what the sends did is not the child's doing
        return self.child.serve()

    def state(self, task_id: str) -> State | None:
        return self.backend.state_of(task_id)


def test_tasks_run_and_each_message_is_acked_after_its_state_is_written() -> None:
    rig = Rig()
    sent = [rig.client.send("count", *range(n)) for n in range(5)]
    assert rig.serve() == EXIT_OK
    assert [rig.backend.states[r.task_id].python_results() for r in sent] == [[n] for n in range(5)]
    written: dict[str, int] = {}
    for index, (method, detail) in enumerate(rig.journal):
        if method == "set_states":
            written.update({task_id: index for task_id, state in detail if state is State.SUCCESS})
        elif method == "ack_many":
            for body in detail:
                assert written[decode_signature(body).uuid] < index  # never acked before
    acked = [body for detail in rig.broker.called("ack_many") for body in detail]
    assert sorted(decode_signature(b).uuid for b in acked) == sorted(r.task_id for r in sent)
    assert rig.broker.closed and rig.backend.closed


def test_a_child_that_cannot_build_its_drivers_reports_a_boot_failure() -> None:
    rig = Rig()

    def broken(_config: Config) -> Any:
        raise ConfigError("broker", "no driver for 'nope'")

    rig.child = Child(rig.config, rig.registry, QUEUE, 0, ChildLiveness(1), connect_broker=broken)
    assert rig.child.serve() == EXIT_CHILD_BOOT_FAILURE


def test_an_outage_is_ridden_out_and_loses_nothing() -> None:
    rig = Rig()
    sent = rig.client.send("count", 1, 2)
    rig.backend.fail("set_states", 2)
    rig.broker.fail("ack_many", 2)
    assert rig.serve() == EXIT_OK
    assert rig.state(sent.task_id) is State.SUCCESS
    assert len(rig.broker.called("ack_many")) == 1  # once it answered, once only


def test_a_stop_hands_back_the_rest_of_the_batch_as_pending(tmp_path: Path) -> None:
    rig = Rig(prefetch=3)  # a fixed batch: nothing is handed back before a slow task

    def stop_now() -> None:
        rig.child.stopping = True

    rig.registry.register(stop_now)
    first = rig.client.send("stop_now")
    rest = [rig.client.send("record", str(tmp_path / "trace"), str(n)) for n in range(2)]
    assert rig.serve() == EXIT_OK
    assert rig.state(first.task_id) is State.SUCCESS
    assert [rig.state(r.task_id) for r in rest] == [State.PENDING, State.PENDING]
    (released,) = rig.broker.called("release_many")
    assert [decode_signature(b).uuid for b in released] == [r.task_id for r in rest]
    assert [before for _body, before in rig.broker.queues[QUEUE]] == [0, 0]  # not counted
    assert runs(tmp_path / "trace") == []


@pytest.mark.parametrize(
    ("broker_class", "hands_back"),
    [(MemoryBroker, True), (CountingMemoryBroker, False)],
    ids=["free hand-back", "counted hand-back"],
)
def test_a_slow_task_hands_back_its_batch_only_where_that_is_free(
    broker_class: type[MemoryBroker], hands_back: bool
) -> None:
    rig = Rig(broker_class)
    for _ in range(40):  # this child has seen "count" be quick: it takes batches now
        rig.child.pacing.ran("count", 0.0001)
    unknown = rig.client.send("noop")  # never seen: not known to be quick
    quick = [rig.client.send("count", n) for n in range(3)]
    assert rig.serve() == EXIT_OK
    assert rig.broker.called("fetch")[0] > 1
    released = rig.broker.called("release_many")
    if hands_back:
        assert [[decode_signature(b).uuid for b in r] for r in released] == [
            [q.task_id for q in quick]
        ]
    else:
        assert released == []
    assert {rig.state(r.task_id) for r in [unknown, *quick]} == {State.SUCCESS}


def test_a_task_found_slow_mid_batch_hands_back_the_rest_without_undoing_unwritten_states(
    tmp_path: Path,
) -> None:
    rig = Rig()
    for _ in range(10):  # quick tasks before: this child takes batches
        rig.child.pacing.ran("count", 0.0001)
    rig.child.pacing.ran("slow_record", 0.0019)  # just quick: its batch gets no RECEIVED
    trace = str(tmp_path / "trace")
    sent = [rig.client.send("slow_record", trace, str(n), 0.05) for n in range(3)]
    assert rig.serve() == EXIT_OK
    assert rig.broker.called("release_many")  # the first run was slow: the rest went back
    # Nothing was announced, so there is nothing to look up or set PENDING again.
    assert rig.backend.called("get_states") == []
    written = [state for states in rig.backend.called("set_states") for _id, state in states]
    assert State.RECEIVED not in written
    assert State.PENDING not in written
    assert {rig.state(r.task_id) for r in sent} == {State.SUCCESS}


def test_messages_that_can_never_run_are_set_aside_and_recorded() -> None:
    rig = Rig()
    rig.broker.publish(QUEUE, b"not json")
    deep = b'{"UUID":"task_deep","Name":"count","Args":' + b"[" * 5_000 + b"]" * 5_000 + b"}"
    rig.broker.publish(QUEUE, deep)  # more than the JSON parsers can nest
    unknown = rig.client.send("no_such_task")
    ignored = rig.client.send(
        rig.client.prepare(
            decode_signature(
                b'{"UUID":"task_ignored","Name":"nope","IgnoreWhenTaskNotRegistered":true}'
            )
        )
    )
    after = rig.client.send("count", 7)
    assert rig.serve() == EXIT_OK
    malformed, too_deep, unregistered = rig.broker.dead
    assert malformed.body == b"not json" and malformed.reason.startswith("malformed message")
    assert too_deep.body == deep and "nested too deeply" in too_deep.reason
    assert rig.state("task_deep") is State.FAILURE  # its sender is told, though it is unreadable
    assert "nested too deeply" in rig.backend.states["task_deep"].error
    assert decode_signature(unregistered.body).uuid == unknown.task_id
    assert rig.backend.states[unknown.task_id].state is State.FAILURE
    assert "not registered" in rig.backend.states[unknown.task_id].error
    assert rig.state(ignored.task_id) is State.PENDING  # dropped as its sender asked
    assert rig.state(after.task_id) is State.SUCCESS


def test_a_message_that_fails_to_decode_unforeseen_is_set_aside_not_a_crash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import taskd.worker.child

    def decode(body: bytes) -> Any:
        if b"task_strange" in body:
            raise RecursionError("maximum recursion depth exceeded")  # as deep chains once did
        return decode_signature(body)

    monkeypatch.setattr(taskd.worker.child, "decode_signature", decode)
    rig = Rig()
    rig.broker.publish(QUEUE, b'{"UUID":"task_strange","Name":"count"}')
    after = rig.client.send("count", 7)
    assert rig.serve() == EXIT_OK
    (strange,) = rig.broker.dead
    assert strange.reason == (
        "malformed message: it could not be read: RecursionError: maximum recursion depth exceeded"
    )
    assert rig.state("task_strange") is State.FAILURE
    assert rig.state(after.task_id) is State.SUCCESS


def test_a_chain_hundreds_of_links_long_runs_to_its_end() -> None:
    rig = Rig()
    sent = rig.client.send_chain(chain(*[signature("count", 1) for _ in range(300)]))
    assert rig.serve() == EXIT_OK
    assert {rig.state(link_id) for link_id in sent.link_ids} == {State.SUCCESS}
    assert rig.backend.states[sent.task_id].python_results() == [2]  # its 1 and the result


class UnreadableMemoryBackend(MemoryBackend):
    """Holds records no reader can read under some task ids (another program's values, keys
    of another type) until a state is written over them."""

    unreadable: set[str] = set()

    def get_states(self, task_ids: Sequence[str]) -> list[TaskState | None]:
        if self.unreadable.intersection(task_ids):
            raise BackendError(self.driver, "stored state is not valid: not valid JSON")
        return super().get_states(task_ids)

    def set_states(self, states: Sequence[TaskState]) -> None:
        super().set_states(states)
        self.unreadable = self.unreadable - {state.task_uuid for state in states}


def test_an_unreadable_stored_state_is_written_over_not_a_crash_at_each_delivery() -> None:
    """A message delivered again is looked up in the backend first: one record that could not
    be read crashed the child before worker.max_deliveries was looked at, at every delivery,
    for good. Now it counts as no state (the run writes over it), and the others of the
    batch, a chord's members too, are read as they are."""
    rig = Rig(backend_class=UnreadableMemoryBackend)
    first, second = rig.client.send("count", 1), rig.client.send("count", 2)
    rig.broker.queues[QUEUE] = type(rig.broker.queues[QUEUE])(
        (body, 2) for body, _deliveries in rig.broker.queues[QUEUE]
    )  # both delivered again: their worker died
    rig.backend.unreadable = {first.task_id}
    with capture_logs() as logs:
        assert rig.serve() == EXIT_OK
    assert [rig.state(first.task_id), rig.state(second.task_id)] == [State.SUCCESS] * 2
    unreadable = [entry["task_id"] for entry in logs if entry["event"] == "state_unreadable"]
    assert unreadable == [first.task_id]


def test_a_chord_member_whose_record_cannot_be_read_does_not_fail_the_chord() -> None:
    rig = Rig(backend_class=UnreadableMemoryBackend)
    workflow = chord([signature("count", 1), signature("count", 2)], signature("count"))
    sent = rig.client.send_chord(workflow)
    rig.backend.unreadable = {workflow.group.member_ids[1]}  # until its run writes over it
    with capture_logs() as logs:
        assert rig.serve() == EXIT_OK
    assert "chord_failed" not in [entry["event"] for entry in logs]
    assert rig.state(sent.task_id) is State.SUCCESS
    assert rig.backend.states[sent.task_id].python_results() == [2]  # both members' results


class KeyRefusingMemoryBackend(MemoryBackend):
    """Refuses, for good, any state whose task id has a space, as Memcache refuses such keys."""

    def set_states(self, states: Sequence[TaskState]) -> None:
        for state in states:
            if " " in state.task_uuid:
                raise BackendError(self.driver, "Key contains whitespace", state.task_uuid)
        super().set_states(states)


@pytest.mark.parametrize("sets_off", [False, True], ids=["quick", "with_callback"])
def test_a_task_whose_state_can_never_be_stored_is_set_aside_not_a_crash(sets_off: bool) -> None:
    """A producer's task id the result backend cannot key (Memcache: spaces, 250 bytes):
    every write of its state, its FAILURE too, was refused, which crashed the child at each
    delivery, for good. Now it is set aside with the reason and the others go on."""
    rig = Rig(backend_class=KeyRefusingMemoryBackend)
    callback = ',"OnSuccess":[{"UUID":"task_cb","Name":"count"}]' if sets_off else ""
    body = '{"UUID":"task with space","Name":"count"' + callback + "}"
    rig.broker.publish(QUEUE, body.encode())
    after = rig.client.send("count", 7)
    with capture_logs() as logs:
        assert rig.serve() == EXIT_OK
    (letter,) = rig.broker.dead
    assert letter.body == body.encode()
    assert (
        letter.reason
        == "its state could not be stored: memory: task with space: Key contains whitespace"
    )
    assert "state_not_stored" in [entry["event"] for entry in logs]
    assert rig.state("task_cb") is None  # nothing it sets off went out: it runs when requeued
    assert rig.state(after.task_id) is State.SUCCESS


def test_a_malformed_message_whose_failure_cannot_be_stored_is_still_set_aside() -> None:
    rig = Rig(backend_class=KeyRefusingMemoryBackend)
    body = b'{"UUID":"task with space","Name":""}'  # no name: malformed, its sender told...
    rig.broker.publish(QUEUE, body)
    after = rig.client.send("count", 7)
    assert rig.serve() == EXIT_OK  # ...where the backend takes its id: not a crash loop here
    (letter,) = rig.broker.dead
    assert (letter.body, letter.reason) == (
        body,
        "malformed message: UUID and Name must not be empty",
    )
    assert rig.state(after.task_id) is State.SUCCESS


def test_a_redelivered_message_that_had_finished_does_not_run_again(tmp_path: Path) -> None:
    rig = Rig()
    trace = tmp_path / "trace"
    sent = rig.client.send("record", str(trace), "once")
    done = TaskState(sent.task_id, State.SUCCESS, task_name="record", created_at=GoTime.now())
    rig.backend.set_states([done])
    body, _before = rig.broker.queues[QUEUE].popleft()
    rig.broker.queues[QUEUE].append((body, 1))  # its worker died after storing the result
    assert rig.serve() == EXIT_OK
    assert runs(trace) == []
    assert rig.broker.called("ack_many") == [[body]]
    assert rig.state(sent.task_id) is State.SUCCESS


class DelayingMemoryBroker(MemoryBroker):
    """Keeps messages with an ETA aside (``delayed``) instead of queueing them at once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.delayed: list[Message] = []

    def publish_many(self, messages: Sequence[Message]) -> None:
        self.delayed += [m for m in messages if m.eta is not None]
        super().publish_many([m for m in messages if m.eta is None])


def _a_pid_gone() -> int:
    import subprocess

    process = subprocess.Popen(["true"])
    process.wait()  # reaped: its pid names no process
    return process.pid


@pytest.mark.parametrize("runner", ["another host", "a live process here", "a dead one here"])
def test_a_message_delivered_again_while_a_live_worker_runs_it_waits(
    runner: str, tmp_path: Path
) -> None:
    """A broker delivers a message again when it takes its consumer for gone (RabbitMQ's
    consumer_timeout, a consumer silent past worker.consumer_timeout): the task ran a second
    time, at once, beside the first. Where the workers board shows a live worker running it,
    it is sent again for later, then acked, and does not run here; where that worker is a
    process of this host that is gone, it runs."""
    import os

    from taskd.boards import WORKERS
    from taskd.brokers.lease import MACHINE

    rig = Rig(DelayingMemoryBroker, consumer_timeout=15)
    trace = tmp_path / "trace"
    sent = rig.client.send("record", str(trace), "once")
    started = TaskState(sent.task_id, State.STARTED, task_name="record", created_at=GoTime.now())
    rig.backend.set_states([started])
    body, _before = rig.broker.queues[QUEUE].popleft()
    rig.broker.queues[QUEUE].append((body, 1))  # delivered again
    machine, pid = {
        "another host": ("elsewhere.example/boot/ns", 4242),
        "a live process here": (MACHINE, os.getpid()),
        "a dead one here": (MACHINE, _a_pid_gone()),
    }[runner]
    task = {"id": sent.task_id, "name": "record", "started_at": str(GoTime.now())}
    children = [{"slot": 0, "pid": pid, "task": task}]
    entry = {"host": "h", "machine": machine, "pid": 1, "children": children}
    rig.backend.post(WORKERS, {"h:1": entry}, 60)
    assert rig.serve() == EXIT_OK
    assert rig.broker.called("ack_many") + rig.broker.called("ack") != []
    if runner == "a dead one here":
        assert runs(trace) == ["once"]
        assert rig.broker.delayed == []
        return
    assert runs(trace) == []
    assert rig.state(sent.task_id) is State.STARTED  # the runner's, left alone
    (later,) = rig.broker.delayed
    assert decode_signature(later.body).uuid == sent.task_id
    assert later.eta is not None
    assert 14 < (later.eta.unix_ns - GoTime.now().unix_ns) / 1e9 <= 15


@pytest.mark.parametrize(
    "peer", ["on this queue", "on another queue", "none", "on this queue, left 10 times"]
)
def test_a_task_not_registered_here_is_left_to_a_live_worker_that_has_it(peer: str) -> None:
    """A rolling upgrade (or workers with different tasks on one queue, as machinery allows):
    a task this worker lacks was FAILURE and set aside even where another live worker of the
    queue has it. It is now sent again a little later for that one; where no live worker of
    the queue has it, or it went round MAX_LEFT times already (a board that says what no
    consumer does), it still fails, instead of going round for ever."""
    from taskd.boards import WORKERS
    from taskd.worker.peers import MAX_LEFT, POSTPONED_HEADER

    rig = Rig(DelayingMemoryBroker, consumer_timeout=15)
    left = MAX_LEFT if peer.endswith("left 10 times") else 0
    sent = rig.client.send("newer_task", 1, headers={POSTPONED_HEADER: left} if left else None)
    if peer != "none":
        queue = "other" if peer == "on another queue" else QUEUE
        entry = {"host": "peer.example", "pid": 7, "queues": [queue], "tasks": ["newer_task"]}
        rig.backend.post(WORKERS, {"peer.example:7": entry}, 60)
    assert rig.serve() == EXIT_OK
    if peer != "on this queue":
        assert rig.state(sent.task_id) is State.FAILURE
        assert len(rig.broker.dead) == 1 and rig.broker.delayed == []
        return
    assert rig.state(sent.task_id) is State.PENDING  # as its sender wrote it
    assert rig.broker.dead == []
    (later,) = rig.broker.delayed
    assert decode_signature(later.body).uuid == sent.task_id
    assert later.eta is not None
    assert 1 < (later.eta.unix_ns - GoTime.now().unix_ns) / 1e9 <= 1.5


def test_a_message_whose_workers_keep_dying_is_set_aside(tmp_path: Path) -> None:
    rig = Rig(max_deliveries=3)
    sent = rig.client.send("record", str(tmp_path / "trace"), "x")
    body, _before = rig.broker.queues[QUEUE].popleft()
    rig.broker.queues[QUEUE].append((body, 3))  # three workers died holding it
    assert rig.serve() == EXIT_OK
    assert rig.state(sent.task_id) is State.FAILURE
    assert "max_deliveries" in rig.backend.states[sent.task_id].error
    assert [letter.body for letter in rig.broker.dead] == [body]
    assert runs(tmp_path / "trace") == []


class FollowUpsCrashBackend(MemoryBackend):
    """A fault taskd did not foresee in what a finished task sets off (a driver library's
    exception of a new kind): it ends the child each time."""

    def get_group(self, group_id: str) -> Any:
        raise RuntimeError("unforeseen")


def test_a_finished_message_whose_follow_ups_keep_ending_its_workers_is_set_aside() -> None:
    """Before, such a message was settled from its stored state at each delivery, before
    worker.max_deliveries was looked at, and crashed every child that took it, for good."""
    rig = Rig(backend_class=FollowUpsCrashBackend, max_deliveries=3)
    sent = rig.client.send_chord(chord([signature("sum", [1])], signature("sum", [0])))
    (member,) = sent.group.member_ids
    body, _before = rig.broker.queues[QUEUE].popleft()
    result = (TaskResult("int64", 1),)
    done = TaskState(member, State.SUCCESS, task_name="sum", results=result)
    rig.backend.set_states([done.with_changes(created_at=GoTime.now())])
    rig.broker.queues[QUEUE].append((body, 3))  # three workers died holding it since
    assert rig.serve() == EXIT_OK
    (letter,) = rig.broker.dead
    assert letter.body == body and "worker.max_deliveries" in letter.reason
    stored = rig.backend.states[member]
    assert (stored.state, stored.results) == (State.SUCCESS, result)  # kept as it finished


def test_follow_ups_drop_a_priority_the_broker_cannot_honour() -> None:
    rig = Rig()
    callback = rig.client.prepare(decode_signature(b'{"UUID":"cb_1","Name":"count","Priority":3}'))
    rig.client.send("count", 1, on_success=[callback])
    assert rig.serve() == EXIT_OK
    assert rig.state("cb_1") is State.SUCCESS


class BacklogMemoryBroker(MemoryBroker):
    """A broker whose last fetch saw more messages waiting (as Redis's after a full batch)."""

    def more_ready(self, queue: str) -> bool:
        return bool(self.queues.get(queue))


@pytest.mark.parametrize("broker_class", [MemoryBroker, BacklogMemoryBroker])
def test_quick_tasks_share_writes_across_fetches_while_more_are_ready(
    broker_class: type[MemoryBroker],
) -> None:
    rig = Rig(broker_class, prefetch=2)
    for _ in range(40):
        rig.child.pacing.ran("count", 0.0001)  # known to be quick
    sent = [rig.client.send("count", n) for n in range(4)]
    assert rig.serve() == EXIT_OK
    assert all(rig.state(r.task_id) is State.SUCCESS for r in sent)
    fetched = rig.broker.called("fetch")
    written, acked = rig.backend.called("set_states"), rig.broker.called("ack_many")
    if broker_class is MemoryBroker:  # nothing known to wait: written after each batch
        assert (len(written), len(acked)) == (2, 2)
    else:  # two batches of two, one write of their states and one ack
        assert (len(written), [len(bodies) for bodies in acked]) == (1, [4])
        assert len(fetched) == 3  # the third, without waiting, found nothing: then written
    for index, (method, detail) in enumerate(rig.journal):  # never an ack before its state
        if method == "ack_many":
            ids = {decode_signature(body).uuid for body in detail}
            states = [d for m, d in rig.journal[:index] if m == "set_states"]
            stored = {task_id for batch in states for task_id, state in batch}
            assert ids <= stored


def test_the_last_quick_task_of_a_batch_is_written_before_its_bookkeeping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its result is on its way before the child logs it: the round trip's critical path.
    The first task of the batch still waits to share that write."""
    rig = Rig(prefetch=2)
    for _ in range(40):
        rig.child.pacing.ran("count", 0.0001)  # known to be quick
    logged = lambda job, _outcome, _ms: rig.journal.append(("logged", job.sig.uuid))  # noqa: E731
    monkeypatch.setattr("taskd.worker.child.log_outcome", logged)
    first, last = (rig.client.send("count", n).task_id for n in range(2))
    assert rig.serve() == EXIT_OK
    acked_at = {
        decode_signature(body).uuid: index
        for index, (method, detail) in enumerate(rig.journal)
        if method == "ack_many"
        for body in detail
    }
    logged_at = {
        detail: index for index, (method, detail) in enumerate(rig.journal) if method == "logged"
    }
    assert acked_at[first] == acked_at[last]  # one write for both
    assert logged_at[first] < acked_at[first]
    assert acked_at[last] < logged_at[last]


def test_a_chord_member_whose_group_metadata_is_missing_says_so() -> None:
    """As for a Go producer on machinery's AMQP backend, which stores no group metadata: the
    callback cannot be sent, and the log and the callback's state say why instead of the
    callback staying PENDING (or unknown) for whoever waits on it."""
    rig = Rig()
    callback = rig.client.prepare(signature("count"))
    member = signature("count", 1).with_changes(
        group_uuid="group_missing", group_task_count=1, chord_callback=callback
    )
    sent = rig.client.send(member)
    with capture_logs() as logs:
        assert rig.serve() == EXIT_OK
    assert rig.state(sent.task_id) is State.SUCCESS
    failed = [entry for entry in logs if entry["event"] == "chord_failed"]
    assert [entry["group"] for entry in failed] == ["group_missing"]
    assert "group metadata is missing" in failed[0]["error"]
    assert "results_expire_in" in failed[0]["fix"]
    stored = rig.backend.states[callback.uuid]
    assert stored.state is State.FAILURE
    assert (
        stored.error.startswith("chord not fired: ") and "group metadata is missing" in stored.error
    )
    assert not any(
        decode_signature(body).uuid == callback.uuid for body, _ in rig.broker.queues[QUEUE]
    )  # never sent


@pytest.mark.parametrize("fired_before", [False, True])
def test_a_chord_whose_group_expired_before_its_last_member_ended_fails_its_callback(
    fired_before: bool,
) -> None:
    """Members running longer than results_expire_in (or queued behind a backlog that long):
    the group's record expires and the chord can never fire. Its callback was PENDING until it
    expired too, so a waiter timed out not knowing why; now it is FAILURE saying so, unless
    the chord had fired (a member delivered again later leaves the callback's state alone)."""
    rig = Rig()
    workflow = chord([signature("count", 1), signature("count", 2)], signature("count"))
    sent = rig.client.send_chord(workflow)
    if fired_before:
        done = TaskState(workflow.callback.uuid, State.SUCCESS, task_name="count")
        rig.backend.set_states([done])
    del rig.backend.groups[workflow.group.group_uuid]  # expired
    assert rig.serve() == EXIT_OK
    assert {rig.state(member_id) for member_id in workflow.group.member_ids} == {State.SUCCESS}
    stored = rig.backend.states[sent.task_id]
    if fired_before:
        assert stored.state is State.SUCCESS
    else:
        assert stored.state is State.FAILURE
        assert "group metadata is missing or expired" in stored.error
        assert "results_expire_in" in stored.error


@pytest.mark.parametrize("member_fails", [False, True], ids=["callback", "error_callback"])
def test_a_chord_member_delivered_again_after_the_chord_fired_does_not_fire_it_again(
    tmp_path: Path, member_fails: bool
) -> None:
    """Its ack was lost (on SQS, its visibility ran out under load and another child took
    it): it is settled from its stored state, but the chord's callbacks went out already."""
    rig = Rig()
    trace, errors = tmp_path / "callback", tmp_path / "errors"
    last = signature("fail", "member broke") if member_fails else signature("sum", [2])
    workflow = chord([signature("sum", [1]), last], signature("total_once", str(trace)),
                     error_callback=signature("collect_error", str(errors)))  # fmt: skip
    sent = rig.client.send_chord(workflow)
    last_body, _before = rig.broker.queues[QUEUE][-1]
    assert rig.serve() == EXIT_OK
    fired = (lines(errors), runs(trace))
    assert fired == ((["member broke"], []) if member_fails else ([], ["3"]))
    rig.broker.queues[QUEUE].append((last_body, 1))
    rig.child.stopping = False
    with capture_logs() as logs:
        assert rig.serve() == EXIT_OK
    assert "task_already_finished" in [entry["event"] for entry in logs]
    assert (lines(errors), runs(trace)) == fired  # once
    assert rig.state(sent.task_id) is (State.FAILURE if member_fails else State.SUCCESS)


def test_a_chord_claimed_by_a_member_whose_worker_died_fires_when_it_comes_back(
    tmp_path: Path,
) -> None:
    """The last member's run stored its result, claimed the chord and died before sending the
    callback: its message comes back, is settled from the stored state, and takes the claim
    over (ResultBackend.claim_chord), so the callback goes out, once."""
    rig = Rig()
    trace = tmp_path / "callback"
    sent = rig.client.send_chord(
        chord([signature("sum", [1]), signature("sum", [2])], signature("total_once", str(trace)))
    )
    members = sent.group.member_ids
    bodies = [body for body, _before in rig.broker.queues[QUEUE]]
    rig.broker.queues[QUEUE].clear()
    for task_id, value in zip(members, (1, 2), strict=True):
        result = (TaskResult("int64", value),)
        done = TaskState(task_id, State.SUCCESS, task_name="sum", results=result)
        rig.backend.set_states([done.with_changes(created_at=GoTime.now())])
    rig.backend.claims[sent.group.group_id] = f"{members[1]}/the-run-that-died"
    rig.broker.queues[QUEUE].append((bodies[1], 1))
    assert rig.serve() == EXIT_OK
    assert runs(trace) == ["3"]
    assert rig.backend.claims[sent.group.group_id] == SPENT_CLAIM


def test_each_run_of_a_task_claims_as_itself() -> None:
    """Two runs of one member (a copy delivered again while the other still ran) are two
    claimants; one settled from the stored state claims for every run of it."""
    member = signature("sum", [1]).with_changes(uuid="task_m", group_uuid="group_g")
    delivery = Delivery(QUEUE, member.encode(), 2)
    first, second = (Job(delivery, member, None, GoTime.now()) for _ in range(2))
    assert first.claimant() == first.claimant()  # the same claim when it asks again
    assert first.claimant().startswith("task_m/")
    assert second.claimant().startswith("task_m/") and second.claimant() != first.claimant()
    first.finished = TaskState("task_m", State.SUCCESS)
    assert first.claimant() == "task_m"


@pytest.mark.parametrize("link_taken", [True, False], ids=["link_ran", "link_never_sent"])
def test_a_chain_link_delivered_again_sends_on_only_what_no_worker_took(
    tmp_path: Path, link_taken: bool
) -> None:
    """The head of a chain comes back after it finished (its ack lost): the next link goes
    again only if no worker has taken it, so it is never lost (its worker may have died
    before sending it) and does not run twice for a lost ack."""
    rig = Rig()
    trace = tmp_path / "trace"
    links = chain(signature("add", 1, 2), signature("collect", str(trace)))
    sent = rig.client.send_chain(links)
    head_body, _before = rig.broker.queues[QUEUE][0]
    if link_taken:
        assert rig.serve() == EXIT_OK  # the head, then the link, ran
    else:  # the head's worker stored its result and died before sending the link
        rig.broker.queues[QUEUE].popleft()
        head_id = sent.link_ids[0]
        done = TaskState(head_id, State.SUCCESS, task_name="add", results=(TaskResult("int64", 3),))
        rig.backend.set_states([done])
    rig.broker.queues[QUEUE].append((head_body, 1))
    rig.child.stopping = False
    assert rig.serve() == EXIT_OK
    assert lines(trace) == [[3]]  # once, with the head's result
    assert rig.state(sent.task_id) is State.SUCCESS


class RefusingMemoryBroker(MemoryBroker):
    """Refuses every publish for good once ``refusing`` is set (a message larger than the
    broker takes, a key of the wrong type)."""

    refusing = False

    def publish_many(self, messages: Sequence[Message]) -> None:
        if self.refusing:
            raise BrokerError(self.driver, "refused on purpose", messages[0].queue)
        super().publish_many(messages)


@pytest.mark.parametrize(
    ("callback", "error"),
    [
        ('"Name":"count","ETA":"9999-12-31T23:59:59Z"', "is later than the latest one possible"),
        ('"Name":""', "a task name is needed"),
    ],
)
def test_a_callback_no_worker_could_run_is_failure_and_its_task_set_aside(
    callback: str, error: str
) -> None:
    """A producer's callback that can never be sent (any producer may write one) was a crash
    at each delivery: now it is refused as a broker's refusal for good is."""
    rig = Rig()
    body = '{"UUID":"task_head","Name":"count","OnSuccess":[{"UUID":"task_cb",' + callback + "}]}"
    rig.broker.publish(QUEUE, body.encode())
    after = rig.client.send("count", 7)
    assert rig.serve() == EXIT_OK
    assert rig.state("task_head") is State.SUCCESS  # it ran; what it sets off cannot go out
    (letter,) = rig.broker.dead
    assert letter.reason.startswith("what it sets off was refused: ") and error in letter.reason
    state = rig.backend.states["task_cb"]
    assert state.state is State.FAILURE and error in state.error
    assert rig.state(after.task_id) is State.SUCCESS


@pytest.mark.parametrize("follow_up", ["callback", "retry"])
def test_tasks_a_refused_send_was_to_run_are_failure_saying_so(
    follow_up: str, tmp_path: Path
) -> None:
    """What a task sets off refused for good: its message is set aside, and the tasks that
    send was to run (a chain's next links, or the task's own retry) are FAILURE saying why,
    instead of PENDING (RETRY) for whoever waits on them for ever."""
    rig = Rig(RefusingMemoryBroker)
    trace = str(tmp_path / "trace")
    if follow_up == "callback":
        sent = rig.client.send_chain(
            chain(signature("record", trace, "a"), signature("count"), signature("count"))
        )
        waiting_on = list(sent.link_ids[1:])
    else:
        sent = rig.client.send("flaky_traced", trace, 1, retry_count=1)
        waiting_on = [sent.task_id]
    rig.broker.refusing = True
    assert rig.serve() == EXIT_OK
    assert len(runs(trace)) == 1
    for task_id in waiting_on:
        state = rig.backend.states[task_id]
        assert state.state is State.FAILURE and "not sent" in state.error, state
        assert "refused on purpose" in state.error
    (letter,) = rig.broker.dead
    assert letter.reason.startswith("what it sets off was refused: ")


def test_workers_board_entries_of_another_shape_name_no_runner_and_no_peer() -> None:
    """The board holds JSON objects only (taskd.backends.board_json), but what is inside one
    is another version's or program's to choose: it must not raise where a child looks up
    the runner of a redelivered task (which would crash it at each delivery)."""
    from taskd.worker.peers import Peers

    odd = [
        {"children": 5, "tasks": "add", "queues": {"q": 1}},
        {"children": [None, "a", {"task": {}}, {"task": 7}]},
        {"children": [{"task": {"id": "task_x"}, "pid": "not a pid"}], "machine": "elsewhere"},
    ]
    peers = Peers(odd)
    assert set(peers.running()) <= {None, "task_x"}
    assert peers.running()["task_x"].endswith("child not a pid")
    assert peers.able("add", "q") == ""
