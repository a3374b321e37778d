"""Revoke and live workers: ``taskd.revocations`` piece by piece, the child's side with
in-memory drivers, then ``taskctl revoke`` and ``taskctl workers`` against real daemons."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from taskd.boards import REVOKED as REVOKED_BOARD
from taskd.client import signature
from taskd.errors import ResultTimeout
from taskd.exitcodes import EXIT_NO_SUCH_TASK, EXIT_OK
from taskd.revocations import REFRESH_S, REVOKED, Revoke, RevokedIds, revoke
from taskd.wire import GoTime, State, TaskState, decode_signature, new_id
from taskd.worker.shared_ids import SharedIds
from taskd.workflows import chain, chord
from tests.support.fakes import MemoryBackend
from tests.support.harness import Daemon, client_for, taskctl, wait_until
from tests.support.tasks import runs
from tests.worker.test_child import Rig

QUICK = {"heartbeat_interval": 0.5}


def _state(task_id: str, state: State) -> TaskState:
    return TaskState(task_id, state, task_name="t", created_at=GoTime.now())


# -- revocations piece by piece -----------------------------------------------------------


def test_revoke_says_what_it_did_and_records_what_had_not_started() -> None:
    backend = MemoryBackend()
    states = {
        "queued": State.PENDING,
        "waiting": State.RETRY,
        "taken": State.RECEIVED,
        "running": State.STARTED,
        "done": State.SUCCESS,
    }
    backend.set_states([_state(task_id, state) for task_id, state in states.items()])
    outcomes = revoke(backend, [*states, "nobody"], terminate=False, expire_s=60)
    assert [(r.task_id, r.outcome) for r in outcomes] == [
        ("queued", Revoke.REVOKED),
        ("waiting", Revoke.REVOKED),
        ("taken", Revoke.REVOKED),
        ("running", Revoke.RUNNING),
        ("done", Revoke.FINISHED),
        ("nobody", Revoke.UNKNOWN),
    ]
    assert outcomes[3].state is not None and outcomes[3].state.state is State.STARTED
    for task_id in ("queued", "waiting", "taken"):  # FAILURE at once, the name kept
        stored = backend.states[task_id]
        assert (stored.state, stored.error, stored.task_name) == (State.FAILURE, REVOKED, "t")
    assert backend.state_of("running") is State.STARTED  # it finishes (no terminate)
    assert backend.state_of("done") is State.SUCCESS
    assert backend.state_of("nobody") is None
    board = backend.read_board(REVOKED_BOARD)
    assert set(board) == {"queued", "waiting", "taken", "running"}
    assert all(entry["terminate"] is False for entry in board.values())
    (again,) = revoke(backend, ["running"], terminate=True, expire_s=60)
    assert again.outcome is Revoke.TERMINATING
    assert backend.read_board(REVOKED_BOARD)["running"]["terminate"] is True


def test_a_childs_copy_of_the_board_is_read_at_most_once_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    board: dict[str, dict[str, Any]] = {}
    reads: list[int] = []

    def read() -> dict[str, dict[str, Any]]:
        reads.append(1)
        return dict(board)

    revoked = RevokedIds(read)
    assert "a" not in revoked and len(reads) == 1  # read on first use
    board["a"] = {"terminate": False}
    now[0] += REFRESH_S / 2
    assert "a" not in revoked and len(reads) == 1  # not yet a second old
    now[0] += REFRESH_S / 2
    assert "a" in revoked and len(reads) == 2


def test_the_supervisors_copy_is_taken_while_fresh_else_the_child_reads_its_own() -> None:
    reads: list[int] = []
    shared: list[frozenset[str] | None] = [frozenset({"a"})]
    ages: list[float] = []

    def from_supervisor(max_age_s: float) -> frozenset[str] | None:
        ages.append(max_age_s)
        return shared[0]

    revoked = RevokedIds(lambda: reads.append(1) or {"b": {}}, from_supervisor)
    assert "a" in revoked and "b" not in revoked and reads == []
    assert ages == [REFRESH_S, REFRESH_S]  # as fresh as a child's own copy would be
    shared[0] = None  # none that fresh (the beacon cannot reach the backend, say)
    assert "b" in revoked and "a" not in revoked and reads == [1]


# -- the child's side -------------------------------------------------------------------------


def test_a_revoked_message_is_settled_without_running(tmp_path: Path) -> None:
    rig = Rig()
    trace, errors = tmp_path / "trace", tmp_path / "errors"
    on_error = signature("collect_error", str(errors))
    revoked = rig.client.send("record", str(trace), "revoked", on_error=[on_error])
    kept = rig.client.send("record", str(trace), "kept")
    rig.client.revoke([revoked.task_id])
    assert rig.serve() == EXIT_OK
    assert runs(trace) == ["kept"]
    stored = rig.backend.states[revoked.task_id]
    assert (stored.state, stored.error) == (State.FAILURE, REVOKED)
    assert rig.state(kept.task_id) is State.SUCCESS
    acked = [decode_signature(b).uuid for d in rig.broker.called("ack_many") for b in d]
    acked += [decode_signature(b).uuid for b in rig.broker.called("ack")]
    assert revoked.task_id in acked and rig.broker.dead == []  # settled, not set aside
    (published,) = rig.broker.called("publish_many")  # its error callback, "revoked" first
    callback = decode_signature(published[0])
    assert (callback.name, callback.args[0].value) == ("collect_error", REVOKED)
    assert [json.loads(line) for line in errors.read_text().splitlines()] == [REVOKED]  # ran


def test_a_child_takes_the_revoked_ids_its_supervisor_published_without_a_round_trip(
    tmp_path: Path,
) -> None:
    """A child read the board itself before a task whenever its copy was a second old: one
    round trip before the task ran, for every task of a quiet queue."""
    rig = Rig()
    trace = tmp_path / "trace"
    revoked = rig.client.send("record", str(trace), "revoked")
    kept = rig.client.send("record", str(trace), "kept")
    rig.client.revoke([revoked.task_id])
    rig.child.shared_revoked = SharedIds()
    rig.child.shared_revoked.publish(rig.backend.read_board(REVOKED_BOARD))
    rig.journal.clear()
    assert rig.serve() == EXIT_OK
    assert runs(trace) == ["kept"]
    assert rig.backend.states[revoked.task_id].error == REVOKED
    assert rig.state(kept.task_id) is State.SUCCESS
    assert [call for call in rig.journal if call[0] == "read_board"] == []


# -- real daemons -----------------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("driver_kind", ["sqlite", "redis", "amqp", "sqs"], indirect=True)
def test_a_revoked_task_never_runs_and_a_running_one_is_terminated(
    driver_kind: str, namespace: str, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    config, client = client_for(driver_kind, namespace, tmp_path, worker=QUICK)
    process = daemon(config, "--concurrency", "2")
    process.wait_ready(2)
    trace, errors = tmp_path / "trace", tmp_path / "errors"
    on_error = [signature("collect_error", str(errors))]
    running = client.send("slow_record", str(trace), "long", 60.0, on_error=on_error)
    later = client.send("record", str(trace), "later", countdown=5, on_error=on_error)
    wait_until(lambda: "start:long" in runs(trace), 20, what="the long task to start")
    (long_child,) = {int(line.split(":")[1]) for line in runs(f"{trace}.pids")}

    revoked = taskctl(tmp_path, config, "revoke", later.task_id)
    assert revoked.returncode == EXIT_OK, revoked.stderr
    assert revoked.stdout == f"{later.task_id}: revoked: it will not run\n"
    assert (later.state().state, later.state().error) == (State.FAILURE, REVOKED)  # type: ignore[union-attr]
    started = time.monotonic()
    stopped = taskctl(tmp_path, config, "revoke", "--terminate", running.task_id)
    assert stopped.returncode == EXIT_OK, stopped.stderr
    assert "its worker stops it now" in stopped.stdout
    try:
        state = running.wait(30)
    except ResultTimeout as exc:  # seen once in CI (SQLite), not since: what the daemon said
        raise AssertionError(f"{exc}; the daemon's log:\n{process.log()}") from None
    assert (state.state, state.error) == (State.FAILURE, REVOKED)
    assert time.monotonic() - started < 5  # a sleep of 60 s cut short
    (terminated,) = process.events("task_terminated")
    assert (terminated["task_id"], terminated["child_pid"]) == (running.task_id, long_child)
    # Its child was replaced; the ETA passed and the revoked task was settled, never run.
    wait_until(
        lambda: any(e.get("task_id") == later.task_id for e in process.events("task_failed")),
        30,
        what="the revoked task's message to be settled",
    )
    wait_until(lambda: len(runs(errors)) == 2, 20, what="both error callbacks")
    assert [json.loads(line) for line in errors.read_text().splitlines()] == [REVOKED] * 2
    assert client.send("count", 1, 2).get(timeout=20) == 2  # the next tasks run
    assert runs(trace) == ["start:long"]
    assert long_child not in process.child_pids() and len(process.child_pids()) == 2
    assert process.process.poll() is None
    client.close()


@pytest.mark.timeout(120)
def test_revocations_survive_a_restart_and_reach_chain_links_and_chords(
    driver_kind: str, namespace: str, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    config, client = client_for(driver_kind, namespace, tmp_path, worker=QUICK)
    trace, errors = tmp_path / "trace", tmp_path / "errors"
    first = daemon(config, "--concurrency", "1")
    first.wait_ready(1)
    delayed = client.send("record", str(trace), "delayed", countdown=3)
    links = chain(
        signature("record", str(trace), "link1"),
        signature("record", str(trace), "link2", immutable=True),
        signature("record", str(trace), "link3", immutable=True),
    )
    members = [signature("record", str(trace), f"m{n}") for n in range(3)]
    on_error = signature("collect_error", str(errors))
    flow = chord(members, signature("collect", str(trace)), error_callback=on_error)
    link2, member = links.link_ids[1], flow.group.member_ids[1]
    # Revoked while a daemon runs, which then stops before any of them could run...
    outcomes = client.revoke([delayed.task_id, link2, member])
    assert [r.outcome for r in outcomes] == [Revoke.REVOKED, Revoke.UNKNOWN, Revoke.UNKNOWN]
    first.signal(15)
    first.process.wait(30)
    # ...and sent or revoked with no daemon running at all.
    chain_result = client.send_chain(links)
    chord_result = client.send_chord(flow)
    outcomes = client.revoke([link2, member])
    assert [r.outcome for r in outcomes] == [Revoke.REVOKED, Revoke.REVOKED]
    second = daemon(config, "--concurrency", "2")
    second.wait_ready(2)
    assert chain_result.wait(30).error == REVOKED  # the chain ends at its revoked link
    callback = chord_result.wait(30)
    assert (callback.state, callback.error) == (
        State.FAILURE,
        f"chord member {member} failed: {REVOKED}",
    )
    wait_until(lambda: runs(errors), 20, what="the chord's error callback")
    assert [json.loads(line) for line in errors.read_text().splitlines()] == [REVOKED]
    wait_until(
        lambda: (s := delayed.state()) is not None and s.is_completed, 20, what="the ETA task"
    )
    wait_until(lambda: "link1" in runs(trace) and "m2" in runs(trace), 20)
    assert delayed.wait(1).error == REVOKED
    assert sorted(runs(trace)) == ["link1", "m0", "m2"]  # no link2, link3, m1, delayed
    client.close()


def test_revoke_refuses_unknown_ids_and_says_which_had_finished(
    driver_kind: str, namespace: str, tmp_path: Path
) -> None:
    config, client = client_for(driver_kind, namespace, tmp_path)
    done = new_id()
    client.backend.set_state(_state(done, State.SUCCESS))
    unknown = new_id()
    result = taskctl(tmp_path, config, "revoke", done, unknown)
    assert result.returncode == EXIT_NO_SUCH_TASK
    assert result.stdout == f"{done}: not revoked, it had finished: SUCCESS\n"
    assert result.stderr == f"{unknown}: no state is stored (never sent, or expired)\n"
    assert client.backend.read_board(REVOKED_BOARD) == {}
    empty = taskctl(tmp_path, config, "revoke", " ")
    assert empty.returncode == 2 and "must not be empty" in empty.stderr
    client.close()


@pytest.mark.timeout(120)
def test_workers_lists_live_daemons_and_drops_one_that_died(
    driver_kind: str, namespace: str, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    worker = {"heartbeat_interval": 0.5, "consumer_timeout": 3}
    config, client = client_for(driver_kind, namespace, tmp_path, worker=worker)
    first, second = daemon(config, "--concurrency", "2"), daemon(config, "--concurrency", "2")
    first.wait_ready(2)
    second.wait_ready(2)
    trace = tmp_path / "trace"
    sent = [client.send("slow_record", str(trace), f"t{n}", 60.0) for n in range(4)]
    wait_until(lambda: len(runs(trace)) == 4, 30, what="four long tasks to start")
    listed: list[dict[str, Any]] = []

    def both_busy() -> bool:
        result = taskctl(tmp_path, config, "workers", "--json")
        assert result.returncode == EXIT_OK, result.stderr
        listed[:] = json.loads(result.stdout)
        children = [child for daemon in listed for child in daemon["children"]]
        return len(listed) == 2 and all(child["task"] for child in children)

    wait_until(both_busy, 20, what="both daemons to show their running tasks")
    assert sorted(daemon["pid"] for daemon in listed) == sorted([first.pid, second.pid])
    assert [len(daemon["children"]) for daemon in listed] == [2, 2]
    running = {child["task"]["id"] for daemon in listed for child in daemon["children"]}
    assert running == {result.task_id for result in sent}
    assert all(child["task"]["name"] == "slow_record" for d in listed for child in d["children"])
    text = taskctl(tmp_path, config, "workers")
    assert text.returncode == EXIT_OK and text.stdout.count("running slow_record") == 4
    first.kill()  # kill -9 of the whole daemon: nothing takes its entry down
    wait_until(
        lambda: [d["pid"] for d in client.workers()] == [second.pid],
        worker["consumer_timeout"] + 5,
        what="the dead daemon to drop out",
    )
    client.close()


def test_workers_shows_entries_of_another_shape_without_failing(
    namespace: str, tmp_path: Path
) -> None:
    """Another version's or program's entry on the workers board (any JSON object): listed
    as far as it can be read, never a traceback."""
    from taskd.boards import WORKERS

    config, client = client_for("sqlite", namespace, tmp_path)
    client.backend.post(
        WORKERS,
        {
            "odd": {"children": 5, "host": 7, "queues": [1, "q"], "started_at": "x"},
            "odder": {"children": [5, {"task": 3}, {"task": {"name": 1}}]},
        },
        60,
    )
    text = taskctl(tmp_path, config, "workers")
    assert text.returncode == EXIT_OK, text.stderr
    assert "queues 1,q" in text.stdout and "running 1 None" in text.stdout
    client.close()
