"""The ResultBackend contract, run against every driver."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from taskd.backends import ResultBackend, open_backend
from taskd.errors import BackendError, ResultTimeout
from taskd.wire import GoTime, GroupMeta, State, TaskResult, TaskState, new_id
from tests.support.harness import wait_until


@pytest.fixture
def open_driver(drivers: Callable[..., Any]) -> Callable[..., ResultBackend]:
    return lambda **overrides: drivers(open_backend, **overrides)


@pytest.fixture
def backend(open_driver: Callable[..., ResultBackend]) -> ResultBackend:
    return open_driver()


def state(task_id: str, name: State = State.SUCCESS, **fields: Any) -> TaskState:
    return TaskState(
        task_id, name, task_name="sum", created_at=GoTime(1_700_000_000_123_456_789), **fields
    )


def test_states_round_trip_in_order(backend: ResultBackend) -> None:
    ids = [new_id() for _ in range(3)]
    stored = [
        state(ids[0], results=(TaskResult("int64", 6),)),
        state(ids[1], State.FAILURE, error="boom"),
        state(ids[2], State.STARTED),
    ]
    backend.set_states(stored)
    missing = new_id()
    assert backend.get_states([ids[2], missing, ids[0], ids[1]]) == [
        stored[2],
        None,
        stored[0],
        stored[1],
    ]
    assert backend.get_state(missing) is None


def test_a_write_replaces_the_record(backend: ResultBackend) -> None:
    task_id = new_id()
    backend.set_state(state(task_id, State.PENDING))
    backend.set_state(state(task_id, State.SUCCESS, results=(TaskResult("string", "done"),)))
    got = backend.get_state(task_id)
    assert got is not None
    assert got.state is State.SUCCESS
    assert got.python_results() == ["done"]
    backend.purge(task_id)
    assert backend.get_state(task_id) is None


def test_states_expire(open_driver: Callable[..., ResultBackend]) -> None:
    backend = open_driver(results_expire_in=1)
    task_id = new_id()
    backend.set_state(state(task_id))
    assert backend.get_state(task_id) is not None
    wait_until(lambda: backend.get_state(task_id) is None, 5, 0.1, "the state to expire")


def test_groups_and_chord_claims(backend: ResultBackend) -> None:
    group_id = new_id("group")
    members = (new_id(), new_id())
    backend.init_group(GroupMeta(group_id, members, created_at=GoTime.now()))
    meta = backend.get_group(group_id)
    assert meta is not None
    assert meta.task_uuids == members
    assert not meta.chord_triggered
    assert backend.claim_chord(group_id, members[0]) is True
    assert backend.claim_chord(group_id, members[1]) is False
    # The same claimant again (its reply was lost, or it died before sending): not spent.
    assert backend.claim_chord(group_id, members[0]) is True
    claimed = backend.get_group(group_id)
    assert claimed is not None and claimed.chord_triggered
    assert backend.get_group(new_id("group")) is None


def test_members_counted_each_once_count_up_and_again_never_count_short(
    backend: ResultBackend,
) -> None:
    group_id = new_id("group")
    members = tuple(new_id() for _ in range(3))
    backend.init_group(GroupMeta(group_id, members, created_at=GoTime.now()))
    assert [backend.count_chord_member(group_id, member) for member in members] == [1, 2, 3]
    again = backend.count_chord_member(group_id, members[0])  # delivered again
    assert again is not None and again >= 3
    other = new_id("group")  # a machinery producer's group: no metadata here
    counted = backend.count_chord_member(other, members[0])
    assert counted is None or counted == 1


def test_a_run_of_a_member_claims_for_itself_and_a_recovery_for_any_run(
    backend: ResultBackend,
) -> None:
    """Two copies of one member running at once (one delivered again while the other still
    ran) do not both fire the chord; a delivery settled from the member's stored state (its
    run died after storing it) takes over that run's claim, so the chord is not lost."""
    group_id = new_id("group")
    members = (new_id(), new_id())
    backend.init_group(GroupMeta(group_id, members, created_at=GoTime.now()))
    assert backend.claim_chord(group_id, f"{members[0]}/run-a") is True
    assert backend.claim_chord(group_id, f"{members[0]}/run-a") is True  # its reply was lost
    assert backend.claim_chord(group_id, f"{members[0]}/run-b") is False  # a concurrent copy
    assert backend.claim_chord(group_id, members[1]) is False  # another member's recovery
    assert backend.claim_chord(group_id, members[0][:-1]) is False  # a prefix is not the id
    assert backend.claim_chord(group_id, members[0]) is True  # this member's recovery
    backend.chord_fired(group_id)
    assert backend.claim_chord(group_id, members[0]) is False
    assert backend.claim_chord(group_id, f"{members[0]}/run-a") is False


def test_a_chord_that_fired_is_claimed_by_nobody_again(backend: ResultBackend) -> None:
    group_id = new_id("group")
    members = (new_id(), new_id())
    backend.init_group(GroupMeta(group_id, members, created_at=GoTime.now()))
    assert backend.claim_chord(group_id, members[0]) is True
    backend.chord_fired(group_id)
    # Its claimant delivered again (its ack lost after the callback went out): spent.
    assert backend.claim_chord(group_id, members[0]) is False
    assert backend.claim_chord(group_id, members[1]) is False
    fired = backend.get_group(group_id)
    assert fired is not None and fired.chord_triggered


def test_claiming_an_unknown_group_is_an_error(backend: ResultBackend) -> None:
    with pytest.raises(BackendError, match="missing or expired"):
        backend.claim_chord(new_id("group"), new_id())


def test_a_chord_is_claimed_once_across_processes(
    driver_kind: str, make_config: Callable[..., Any], backend: ResultBackend
) -> None:
    group_id = new_id("group")
    backend.init_group(GroupMeta(group_id, (new_id(),), created_at=GoTime.now()))
    config = make_config(driver_kind)
    read_end, write_end = os.pipe()
    pids = []
    for _ in range(8):
        pid = os.fork()
        if pid == 0:
            try:
                own = open_backend(config)
                claimed = own.claim_chord(group_id, f"member-{os.getpid()}")
                os.write(write_end, b"1" if claimed else b"0")
                own.close()
            finally:
                os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    os.close(write_end)
    answers = os.read(read_end, 64)
    os.close(read_end)
    assert sorted(answers) == sorted(b"10000000")


def test_later_states_keep_the_pending_name_and_time(backend: ResultBackend) -> None:
    """machinery's merge rule, applied by every backend so workers write without reading."""
    task_id, created = new_id(), GoTime.parse("2026-11-27T10:00:00.123456789Z")
    backend.set_state(TaskState(task_id, State.PENDING, task_name="add", created_at=created))
    backend.set_states(
        [
            TaskState(task_id, State.STARTED, task_name="other", created_at=GoTime.now()),
            TaskState(
                task_id,
                State.SUCCESS,
                task_name="other",
                created_at=GoTime.now(),
                results=(TaskResult("int64", 2),),
            ),
        ]
    )
    got = backend.get_state(task_id)
    assert got == TaskState(
        task_id,
        State.SUCCESS,
        task_name="add",
        created_at=created,
        results=(TaskResult("int64", 2),),
    )
    # A new PENDING (the task sent again) replaces the record as given.
    again = GoTime.now()
    backend.set_state(TaskState(task_id, State.PENDING, task_name="add", created_at=again))
    assert backend.get_state(task_id) == TaskState(
        task_id, State.PENDING, task_name="add", created_at=again
    )


def test_a_state_without_a_record_is_stored_as_given(backend: ResultBackend) -> None:
    task_id, now = new_id(), GoTime.now()
    backend.set_state(TaskState(task_id, State.FAILURE, task_name="x", created_at=now, error="e"))
    assert backend.get_state(task_id) == TaskState(
        task_id, State.FAILURE, task_name="x", created_at=now, error="e"
    )


def test_pending_begun_before_publishing(backend: ResultBackend) -> None:
    """Stored once completed; a re-sent id's PENDING replaces its record; and where the
    driver splits the write (so it may land after a worker's), a fresh id's never
    overwrites a later state already stored."""
    new, resent = new_id(), new_id()
    backend.set_state(state(resent))
    complete = backend.begin_pending([state(new, State.PENDING)], fresh=True)
    complete()
    assert backend.get_state(new) == state(new, State.PENDING)
    backend.begin_pending([state(resent, State.PENDING)], fresh=False)()
    assert backend.get_state(resent).state is State.PENDING
    if type(backend).begin_pending is not ResultBackend.begin_pending:
        late = new_id()
        backend.set_state(state(late, State.STARTED))  # a worker's, written first
        backend.begin_pending([state(late, State.PENDING)], fresh=True)()
        assert backend.get_state(late).state is State.STARTED


# -- boards: live workers and revocations ----------------------------------------------------


def test_a_board_keeps_entries_by_key_until_taken_down(backend: ResultBackend) -> None:
    board = f"test-{new_id()}"
    assert backend.read_board(board) == {}
    backend.post(board, {"a": {"n": 1, "text": "é"}, "b": {"nested": [1, {"x": None}]}}, 60)
    backend.post(board, {"a": {"n": 2}}, 60)  # replaces a, keeps b
    assert backend.read_board(board) == {"a": {"n": 2}, "b": {"nested": [1, {"x": None}]}}
    backend.post(board, {"b": None, "c": {}}, 60)
    assert backend.read_board(board) == {"a": {"n": 2}, "c": {}}
    assert backend.read_board(f"other-{board}") == {}  # boards are apart


def test_board_entries_expire_each_on_its_own(backend: ResultBackend) -> None:
    board = f"test-{new_id()}"
    backend.post(board, {"short": {"n": 1}}, 1)
    backend.post(board, {"long": {"n": 2}}, 60)
    assert set(backend.read_board(board)) == {"short", "long"}
    wait_until(lambda: set(backend.read_board(board)) == {"long"}, 5, 0.1, "one entry to expire")
    backend.post(board, {"another": {}}, 60)  # a post after the expiry does not bring it back
    assert set(backend.read_board(board)) == {"long", "another"}


def test_concurrent_posts_to_one_board_lose_nothing(
    driver_kind: str, make_config: Callable[..., Any], backend: ResultBackend
) -> None:
    board = f"test-{new_id()}"
    config = make_config(driver_kind)
    pids = []
    for writer in range(6):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                own = open_backend(config)
                for n in range(5):
                    own.post(board, {f"w{writer}-{n}": {"writer": writer}}, 60)
                own.close()
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    assert all(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0 for pid in pids)
    assert set(backend.read_board(board)) == {f"w{w}-{n}" for w in range(6) for n in range(5)}


# -- waiting for results ------------------------------------------------------------------


def test_waiting_returns_once_every_state_is_final(
    backend: ResultBackend, open_driver: Callable[..., ResultBackend]
) -> None:
    ids = [new_id() for _ in range(3)]
    backend.set_states([state(task_id, State.PENDING) for task_id in ids])
    writer = open_driver()  # another process's, as a worker's would be

    def finish_them() -> None:
        time.sleep(0.2)  # the waiter is waiting by now (it is a test of waking it)
        writer.set_states([state(ids[0], State.STARTED)])
        writer.set_states([state(ids[0]), state(ids[1], State.FAILURE, error="no")])
        time.sleep(0.1)
        writer.set_states([state(ids[2])])

    thread = threading.Thread(target=finish_them)
    thread.start()
    told: list[tuple[int, int]] = []
    got = backend.wait_states(ids, 20, lambda done, total: told.append((done, total)))
    thread.join()
    assert [(s.task_uuid, s.state) for s in got] == [
        (ids[0], State.SUCCESS),
        (ids[1], State.FAILURE),
        (ids[2], State.SUCCESS),
    ]
    assert told[0][1] == 3 and told[-1] == (3, 3)


def test_waiting_too_long_names_the_task_and_its_state(backend: ResultBackend) -> None:
    done, late = new_id(), new_id()
    backend.set_states([state(done), state(late, State.STARTED)])
    with pytest.raises(ResultTimeout, match=f"task {late} not finished after 0.3s .state STARTED"):
        backend.wait_states([done, late], 0.3)
