"""The AMQP result backend's own promises: what its queue-per-record layout must survive."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from taskd.backends import ResultBackend, open_backend
from taskd.errors import BackendError, BackendUnavailable
from taskd.wire import GoTime, GroupMeta, State, TaskResult, TaskState, new_id
from tests.support.harness import AMQP_URL, declare_machinery_state_queue, wait_until


@pytest.fixture
def open_amqp(
    amqp_namespace: str, driver_opener: Callable[..., Any]
) -> Callable[..., ResultBackend]:
    return lambda **overrides: driver_opener(open_backend, "amqp", **overrides)


@pytest.fixture
def raw_channel() -> Iterator[Any]:
    """A channel of a plain pika connection: another reader, or a claimant that dies."""
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    yield connection.channel()
    if connection.is_open:
        connection.close()


def test_a_record_another_reader_holds_is_still_found(
    open_amqp: Callable[..., ResultBackend], amqp_namespace: str, raw_channel: Any
) -> None:
    backend = open_amqp()
    task_id = new_id()
    stored = TaskState(task_id, State.SUCCESS, task_name="sum", created_at=GoTime.now())
    backend.set_state(stored)
    queue = f"{amqp_namespace}.state.{task_id}"
    method, _properties, _body = raw_channel.basic_get(queue, auto_ack=False)
    assert method is not None  # held: the queue now looks empty
    found: list[TaskState | None] = []
    reader = threading.Thread(target=lambda: found.append(backend.get_state(task_id)))
    reader.start()
    wait_until(
        lambda: raw_channel.queue_declare(queue, passive=True).method.consumer_count == 1,
        5,
        what="the backend to wait for the held record",
    )
    raw_channel.basic_nack(method.delivery_tag, requeue=True)
    reader.join(10)
    assert found == [stored]


def test_a_claimant_that_dies_holding_the_token_gives_it_back(
    open_amqp: Callable[..., ResultBackend], amqp_namespace: str, raw_channel: Any
) -> None:
    backend = open_amqp()
    group_id = new_id("group")
    backend.init_group(GroupMeta(group_id, (new_id(),), created_at=GoTime.now()))
    method, _properties, _body = raw_channel.basic_get(
        f"{amqp_namespace}.chord.{group_id}", auto_ack=False
    )
    assert method is not None
    raw_channel.connection.close()  # dies before recording a claim: the token goes back
    assert backend.claim_chord(group_id, "second") is True
    assert backend.claim_chord(group_id, "third") is False


def test_a_claim_recorded_before_a_death_is_kept_and_finished(
    open_amqp: Callable[..., ResultBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    backend, dying = open_amqp(), open_amqp()
    group_id = new_id("group")
    backend.init_group(GroupMeta(group_id, (new_id(),), created_at=GoTime.now()))
    put = dying._put  # type: ignore[attr-defined]

    def record_then_die(session: Any, writes: Any) -> None:
        put(session, writes[0])  # the claim is recorded; ChordTriggered and the ack are not
        raise BackendUnavailable("amqp", "connection lost")

    monkeypatch.setattr(dying, "_put_all", record_then_die)
    with pytest.raises(BackendUnavailable):
        dying.claim_chord(group_id, "first")
    meta = backend.get_group(group_id)
    assert meta is not None and not meta.chord_triggered
    assert backend.claim_chord(group_id, "second") is False
    assert backend.claim_chord(group_id, "first") is True  # delivered again: claims again
    meta = backend.get_group(group_id)
    assert meta is not None and meta.chord_triggered


def test_records_stay_writable_when_results_expire_in_changes(
    open_amqp: Callable[..., ResultBackend],
) -> None:
    task_id, group_id = new_id(), new_id("group")
    earlier = open_amqp()
    earlier.set_state(TaskState(task_id, State.SUCCESS, task_name="add", created_at=GoTime.now()))
    earlier.init_group(GroupMeta(group_id, (task_id,), created_at=GoTime.now()))
    later = open_amqp(results_expire_in=600)  # declares its queues with another x-expires
    sent_again = TaskState(task_id, State.PENDING, task_name="add", created_at=GoTime.now())
    later.set_state(sent_again)
    later.init_group(GroupMeta(group_id, (task_id,), created_at=GoTime.now()))
    assert later.get_state(task_id) == sent_again
    assert later.claim_chord(group_id, task_id) is True


def test_machinery_readers_get_each_state_but_pending_in_their_queue(
    open_amqp: Callable[..., ResultBackend], amqp_namespace: str, raw_channel: Any
) -> None:
    """machinery reads by consuming: it finds the states in the order they were written,
    while taskd's own reads still give the newest state every time."""
    backend = open_amqp()
    task_id = new_id()
    declare_machinery_state_queue(raw_channel, amqp_namespace, task_id)
    try:
        now = GoTime.now()
        written = [
            TaskState(task_id, state, task_name="add", created_at=now)
            for state in (State.PENDING, State.STARTED, State.SUCCESS)
        ]
        for state in written:
            backend.set_state(state)
        bodies = []
        while (got := raw_channel.basic_get(task_id, auto_ack=True))[0] is not None:
            bodies.append(got[2])
        assert bodies == [state.encode() for state in written[1:]]
        assert backend.get_state(task_id) == backend.get_state(task_id) == written[-1]
    finally:
        raw_channel.queue_delete(task_id)


def test_states_no_machinery_program_waits_for_are_dropped_not_queued(
    open_amqp: Callable[..., ResultBackend], raw_channel: Any
) -> None:
    import pika.exceptions

    backend = open_amqp()
    task_id = new_id()
    stored = TaskState(task_id, State.SUCCESS, task_name="add", created_at=GoTime.now())
    backend.set_state(stored)
    assert backend.get_state(task_id) == stored
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        raw_channel.queue_declare(task_id, passive=True)
    assert refused.value.reply_code == 404  # no queue was made for it


def test_no_copies_where_the_exchange_does_not_route_by_task_id(
    open_amqp: Callable[..., ResultBackend], amqp_namespace: str, raw_channel: Any
) -> None:
    """On a fanout exchange a copy would reach every queue bound to it: none is sent."""
    backend = open_amqp(amqp={"exchange_type": "fanout"})
    raw_channel.exchange_declare(amqp_namespace, "fanout", durable=True)
    bound = f"{amqp_namespace}.bound"
    raw_channel.queue_declare(bound, auto_delete=True)
    raw_channel.queue_bind(bound, amqp_namespace)
    try:
        task_id = new_id()
        backend.set_state(TaskState(task_id, State.SUCCESS, task_name="add"))
        assert backend.get_state(task_id) is not None
        assert raw_channel.queue_declare(bound, passive=True).method.message_count == 0
    finally:
        raw_channel.queue_delete(bound)


def member_success(task_id: str, value: int) -> TaskState:
    return TaskState(task_id, State.SUCCESS, task_name="add", results=(TaskResult("int64", value),))


def test_a_group_without_metadata_is_gathered_once_for_the_member_that_completes_it(
    open_amqp: Callable[..., ResultBackend], amqp_namespace: str, raw_channel: Any
) -> None:
    """machinery's producers store no group metadata on this backend: its members' states
    are counted in machinery's queue named by the group, as machinery's workers count them."""
    backend = open_amqp()
    group_id = new_id("group")
    members = [new_id() for _ in range(3)]
    try:
        assert backend.gather_group(group_id, 3, member_success(members[0], 1), members[0]) is None
        assert backend.gather_group(group_id, 3, member_success(members[1], 2), members[1]) is None
        last, run = member_success(members[2], 3), f"{members[2]}/run-a"
        gathered = backend.gather_group(group_id, 3, last, run)
        assert gathered is not None
        assert [(s.task_uuid, s.python_results()) for s in gathered] == [
            (members[0], [1]), (members[1], [2]), (members[2], [3]),
        ]  # fmt: skip
        assert raw_channel.queue_declare(group_id, passive=True).method.message_count == 0
        # Asked again by that run (its reply lost), or by a recovery of the member: the same
        # states; by another run of it (a copy that ran at the same time) or another member:
        # nothing (ResultBackend.claim_chord).
        assert backend.gather_group(group_id, 3, last, run) == gathered
        assert backend.gather_group(group_id, 3, last, f"{members[2]}/run-b") is None
        assert backend.gather_group(group_id, 3, last, members[2]) == gathered
        again = member_success(members[0], 1)
        assert backend.gather_group(group_id, 3, again, members[0]) is None
        # Once its callback went out, its claimant delivered again gets nothing either.
        backend.chord_fired(group_id)
        assert backend.gather_group(group_id, 3, last, members[2]) is None
    finally:
        raw_channel.queue_delete(group_id)


def test_a_member_counted_twice_does_not_complete_the_group_early(
    open_amqp: Callable[..., ResultBackend], raw_channel: Any
) -> None:
    backend = open_amqp()
    group_id, first, second = new_id("group"), new_id(), new_id()
    try:
        for _ in range(2):  # delivered again after it counted itself
            assert backend.gather_group(group_id, 2, member_success(first, 1), first) is None
        gathered = backend.gather_group(group_id, 2, member_success(second, 2), second)
        assert gathered is not None
        assert [state.task_uuid for state in gathered] == [first, second]
    finally:
        raw_channel.queue_delete(group_id)


def test_a_go_worker_s_member_state_counts_towards_the_group(
    open_amqp: Callable[..., ResultBackend], amqp_namespace: str, raw_channel: Any
) -> None:
    """As machinery's worker writes it (markTaskCompleted): no name, a zero CreatedAt."""
    backend = open_amqp()
    group_id, by_go, by_taskd = new_id("group"), new_id(), new_id()
    declare_machinery_state_queue(raw_channel, amqp_namespace, group_id)
    try:
        go_state = b'{"TaskUUID":"%s","TaskName":"","State":"SUCCESS","Results":[{"Type":"int64","Value":5}],"Error":"","CreatedAt":"0001-01-01T00:00:00Z","TTL":0}'  # noqa: E501
        raw_channel.basic_publish(amqp_namespace, group_id, go_state % by_go.encode())
        gathered = backend.gather_group(group_id, 2, member_success(by_taskd, 2), by_taskd)
        assert gathered is not None
        assert [s.python_results() for s in gathered] == [[5], [2]]
    finally:
        raw_channel.queue_delete(group_id)


def test_groups_without_metadata_need_a_direct_exchange_and_a_size(
    open_amqp: Callable[..., ResultBackend],
) -> None:
    """No routing by id, or no GroupTaskCount to count against (machinery's workers skip
    such a member too): the chord cannot be followed, rather than fire after one member."""
    fanout = open_amqp(amqp={"exchange_type": "fanout"})
    with pytest.raises(BackendError, match="group metadata is missing"):
        fanout.gather_group(new_id("group"), 1, member_success(new_id(), 1), "task_x")
    with pytest.raises(BackendError, match="group metadata is missing"):
        open_amqp().gather_group(new_id("group"), 0, member_success(new_id(), 1), "task_x")


def test_what_a_watched_task_sets_off_gets_a_queue_before_it_is_sent(
    open_amqp: Callable[..., ResultBackend], amqp_namespace: str, raw_channel: Any
) -> None:
    """A machinery reader declares a chain's next link's queue only once it gets to it, maybe
    after the link ran: machinery's workers declare it first, and so does taskd, for the
    tasks a machinery program reads (those whose states reached its queue)."""
    import pika.exceptions

    backend = open_amqp()
    watched, unwatched, next_link, not_read = (new_id() for _ in range(4))
    declare_machinery_state_queue(raw_channel, amqp_namespace, watched)
    try:
        for task_id in (watched, unwatched):
            backend.set_state(member_success(task_id, 1))
            backend.follow_readers(task_id, [next_link if task_id == watched else not_read])
        assert raw_channel.queue_declare(next_link, passive=True).method.message_count == 0
        backend.set_state(member_success(next_link, 2))  # before its reader's first look
        method, _properties, body = raw_channel.basic_get(next_link, auto_ack=True)
        assert method is not None and body == member_success(next_link, 2).encode()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            raw_channel.queue_declare(not_read, passive=True)
        assert refused.value.reply_code == 404
    finally:
        channel = raw_channel.connection.channel()
        for queue in (watched, next_link):
            channel.queue_delete(queue)


def test_copies_go_on_after_the_exchange_was_deleted(
    open_amqp: Callable[..., ResultBackend], amqp_namespace: str, raw_channel: Any
) -> None:
    """Deleted by hand while the backend runs: the next write declares it again, instead of
    failing every write on that connection."""
    backend = open_amqp()
    backend.set_state(member_success(new_id(), 1))
    raw_channel.exchange_delete(amqp_namespace)
    task_id = new_id()
    backend.set_state(member_success(task_id, 2))
    assert backend.get_state(task_id) == member_success(task_id, 2)
    raw_channel.exchange_declare(amqp_namespace, "direct", durable=True, passive=True)


def test_a_task_id_too_long_for_a_queue_name_is_refused_and_the_backend_goes_on(
    open_amqp: Callable[..., ResultBackend],
) -> None:
    """A producer's task id over AMQP's 255 bytes for a name: pika refused it while making the
    request, outside the errors a call expected, and left that half-made request on the
    channel, so every later call on the connection failed too (DuplicateGetOkCallback). Now it
    is the backend's error for good (a worker sets such a task aside) and the next call works."""
    backend = open_amqp()
    too_long = "task_" + "x" * 300
    with pytest.raises(BackendError, match="ShortStringTooLong"):
        backend.set_states([TaskState(too_long, State.SUCCESS, task_name="add")])
    fine = TaskState(new_id(), State.SUCCESS, task_name="add", created_at=GoTime.now())
    backend.set_states([fine])
    assert backend.get_states([fine.task_uuid]) == [fine]
