"""Time limits and recycling piece by piece: which limits apply, the soft alarm, the table of
deadlines, the supervisor's stop-record-kill, and the child's side with in-memory drivers."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from taskd.backends import open_backend
from taskd.client import signature
from taskd.config import Config, WorkerConfig
from taskd.errors import SoftTimeLimitExceeded
from taskd.exitcodes import EXIT_CHILD_RECYCLE, EXIT_OK
from taskd.registry import describe, task
from taskd.wire import GoTime, Signature, State, TaskState, decode_signature
from taskd.worker import kills, recycling
from taskd.worker.execute import ATTEMPT_HEADER
from taskd.worker.kills import Kills
from taskd.worker.limits import TIME_LIMIT_EXCEEDED, Limits, SoftLimit, limits_of
from taskd.worker.recycling import Recycling
from taskd.worker.running import RunningTasks
from taskd.worker.supervisor import ChildProcess
from tests.support.harness import wait_until
from tests.support.tasks import runs
from tests.worker import test_supervisor
from tests.worker.test_child import QUEUE, Rig
from tests.worker.test_supervisor import FakeChild

run_supervisor = test_supervisor.run_supervisor  # its fixture, for a recycled child


def _plain(seconds: float) -> float:
    return seconds


@task(time_limit=20, soft_time_limit=15)
def _decorated() -> None:
    """A task with limits of its own."""


def _sig(**headers: Any) -> Signature:
    return Signature(name="t", uuid="task_1", headers=headers)


# -- which limits apply -----------------------------------------------------------------------


def test_a_header_beats_the_decorator_which_beats_the_config() -> None:
    worker = WorkerConfig(time_limit=30, soft_time_limit=25)
    plain, decorated = describe(_plain, "plain", "tests"), describe(_decorated, "dec", "tests")
    assert limits_of(_sig(), plain, worker) == Limits(30, 25)
    assert limits_of(_sig(), decorated, worker) == Limits(20, 15)
    assert limits_of(_sig(time_limit=5, soft_time_limit="2.5"), decorated, worker) == Limits(5, 2.5)
    assert limits_of(_sig(time_limit=0), decorated, worker) == Limits(0, 15)  # 0: none
    assert limits_of(_sig(time_limit=None), decorated, worker) == Limits(20, 15)  # null: unset
    assert limits_of(_sig(), plain, WorkerConfig()) == Limits(0, 0)


@pytest.mark.parametrize("value", ["soon", -1, True, [3], float("inf"), "nan"])
def test_a_header_that_is_no_number_of_seconds_is_an_error_naming_it(value: Any) -> None:
    limits = limits_of(_sig(soft_time_limit=value), describe(_plain, "p", "t"), WorkerConfig())
    assert limits.error == (
        f"header 'soft_time_limit' must be a number of seconds, 0 or more (0: none), got {value!r}"
    )


def test_the_decorator_refuses_a_bad_limit_when_the_module_loads() -> None:
    with pytest.raises(ValueError, match="time_limit must be a number of seconds"):
        task(time_limit=-1)
    with pytest.raises(ValueError, match="soft_time_limit must be a number of seconds"):
        task(soft_time_limit="a while")


# -- the soft limit ---------------------------------------------------------------------------


def test_the_soft_limit_raises_in_the_block_and_puts_back_what_it_found() -> None:
    def handler(_signum: int, _frame: object) -> None:
        raise AssertionError("the outer alarm went off during the block")

    before = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 30)  # someone else's alarm (a test runner's)
    try:
        started = time.monotonic()
        with pytest.raises(SoftTimeLimitExceeded), SoftLimit(0.05):
            time.sleep(10)
        assert time.monotonic() - started < 5
        assert signal.getsignal(signal.SIGALRM) is handler
        assert 20 < signal.getitimer(signal.ITIMER_REAL)[0] <= 30  # re-armed with what was left
        with SoftLimit(5):
            pass  # over in time: nothing raised, nothing left armed
        assert signal.getsignal(signal.SIGALRM) is handler
        assert signal.getitimer(signal.ITIMER_REAL)[0] > 20
        with SoftLimit(0):
            assert signal.getsignal(signal.SIGALRM) is handler  # 0: not armed at all
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)


def test_the_soft_limit_does_nothing_outside_the_main_thread() -> None:
    import threading

    outcome: list[str] = []

    def run() -> None:
        with SoftLimit(0.01):
            time.sleep(0.05)
        outcome.append("finished")

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(5)
    assert outcome == ["finished"]


# -- the table and the supervisor's side ------------------------------------------------------


def test_the_table_holds_a_task_only_while_it_runs() -> None:
    clocks = RunningTasks(2)
    sig = Signature(name="n" * 300, uuid="task_x", retry_count=1)
    assert clocks.read(1) is None
    before = time.monotonic()
    clocks.start(1, sig, 5.0)
    running = clocks.read(1)
    assert running is not None
    assert (running.pid, running.task_id, running.retries_left) == (os.getpid(), "task_x", True)
    assert running.task_name == "n" * 128  # cut; the stored record keeps its own name
    assert before <= running.started_s <= time.monotonic()
    assert running.started_s + 5.0 == running.deadline_s
    assert clocks.read(0) is None
    clocks.finish(1)
    assert clocks.read(1) is None
    clocks.start(0, Signature(name="plain", uuid="task_y"))  # no hard limit
    running = clocks.read(0)
    assert running is not None
    assert (running.task_id, running.task_name, running.deadline_s) == ("task_y", "plain", 0)
    assert Kills(clocks).wait_s([ChildProcess(os.getpid(), 0, 0.0, 0)], 1.0) == 1.0
    clocks.finish(0)
    assert clocks.read(0) is None
    clocks.start(0, Signature(name="n", uuid="x" * 300), 1.0)
    long_id = clocks.read(0)
    assert long_id is not None and long_id.task_id is None  # cannot be recorded


@pytest.fixture
def sqlite_config(tmp_path: Path) -> Config:
    url = f"sqlite://{tmp_path}/limits.db"
    return Config(broker=url, result_backend=url)


@pytest.fixture
def sleeper() -> Iterator[Callable[..., ChildProcess]]:
    """``sleeper(clocks, sig, limit_s)``: a forked child that starts ``sig`` under a hard
    limit in slot 0 and sleeps; killed at teardown if still there."""
    started: list[int] = []

    def start(clocks: RunningTasks, sig: Signature, limit_s: float) -> ChildProcess:
        pid = os.fork()
        if pid == 0:
            try:
                clocks.start(0, sig, limit_s)
                time.sleep(60)
            finally:
                os._exit(0)
        started.append(pid)
        wait_until(lambda: clocks.read(0) is not None and clocks.read(0).pid == pid, 5)  # type: ignore[union-attr]
        return ChildProcess(pid, 0, time.monotonic(), 0)

    yield start
    for pid in started:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        os.waitpid(pid, 0)


@pytest.mark.parametrize(("retry_count", "recorded"), [(0, State.FAILURE), (2, State.RETRY)])
def test_a_task_past_its_deadline_is_recorded_then_killed(
    sqlite_config: Config,
    sleeper: Callable[..., ChildProcess],
    retry_count: int,
    recorded: State,
) -> None:
    clocks = RunningTasks(1)
    keeper = Kills(clocks)
    child = sleeper(clocks, Signature(name="sleepy", uuid="task_k", retry_count=retry_count), 0.2)
    assert keeper.enforce_time_limits([child], sqlite_config) == []  # not yet
    assert 0 < keeper.wait_s([child], 1.0) <= 0.2  # the loop wakes at the deadline
    wait_until(lambda: keeper.wait_s([child], 1.0) == 0, 5)
    assert keeper.enforce_time_limits([child], sqlite_config) == [child]
    _pid, status = os.waitpid(child.pid, 0)
    assert os.waitstatus_to_exitcode(status) == -signal.SIGKILL
    backend = open_backend(sqlite_config)
    stored = backend.get_state("task_k")
    backend.close()
    assert stored is not None
    assert (stored.state, stored.error, stored.task_name) == (
        recorded,
        TIME_LIMIT_EXCEEDED,
        "sleepy",
    )


def test_a_task_that_ends_as_it_is_stopped_is_left_to_go_on(
    sqlite_config: Config, sleeper: Callable[..., ChildProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    clocks = RunningTasks(1)
    child = sleeper(clocks, Signature(name="sleepy", uuid="task_k"), 0.05)
    real_stopped = kills._stopped

    def stopped_just_after_it_finished(pid: int) -> bool:
        result = real_stopped(pid)
        clocks.finish(0)  # as if the task had returned the instant before the stop
        return result

    monkeypatch.setattr(kills, "_stopped", stopped_just_after_it_finished)
    wait_until(lambda: Kills(clocks).wait_s([child], 1.0) == 0, 5)
    assert Kills(clocks).enforce_time_limits([child], sqlite_config) == []

    def state() -> str:
        return Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]

    wait_until(lambda: state() == "S", 5, what="the child to sleep on")  # not stopped ("T")
    backend = open_backend(sqlite_config)
    assert backend.get_state("task_k") is None  # nothing recorded
    backend.close()


def test_a_slot_left_by_a_dead_child_does_not_count_for_its_successor(
    sleeper: Callable[..., ChildProcess], sqlite_config: Config
) -> None:
    clocks = RunningTasks(1)
    child = sleeper(clocks, Signature(name="sleepy", uuid="task_k"), 0.01)
    successor = ChildProcess(child.pid + 1_000_000, 0, time.monotonic(), 0)
    assert Kills(clocks).wait_s([successor], 1.0) == 1.0
    assert Kills(clocks).enforce_time_limits([successor], sqlite_config) == []


# -- the child's side -------------------------------------------------------------------------


def test_a_redelivered_message_killed_at_its_limit_is_retried_without_running(
    tmp_path: Path,
) -> None:
    rig = Rig()
    trace = tmp_path / "trace"
    sent = rig.client.send("record", str(trace), "x", retry_count=2)
    killed = TaskState(
        sent.task_id, State.RETRY, error=TIME_LIMIT_EXCEEDED, created_at=GoTime.now()
    )
    rig.backend.set_states([killed])  # what the supervisor stored before the kill
    body, _before = rig.broker.queues[QUEUE].popleft()
    rig.broker.queues[QUEUE].append((body, 1))  # ...and its message came back
    rig.child.stopping = False
    original_fetch = rig.broker.fetch
    fetched: list[int] = []

    def fetch_once(queue: str, *, max_messages: int, wait_s: float) -> Any:
        fetched.append(1)
        if len(fetched) > 1:  # the retry waits for its ETA: stop before it runs
            rig.stop()
            return []
        return original_fetch(queue, max_messages=max_messages, wait_s=wait_s)

    rig.broker.fetch = fetch_once  # type: ignore[method-assign]
    assert rig.serve() == EXIT_OK
    assert runs(trace) == []
    assert rig.broker.called("ack_many") == [[body]]
    (published,) = rig.broker.called("publish_many")
    retry = decode_signature(published[0])
    assert (retry.uuid, retry.retry_count, retry.headers[ATTEMPT_HEADER]) == (sent.task_id, 1, 2)
    assert retry.eta is not None
    state = rig.backend.states[sent.task_id]
    assert (state.state, state.error) == (State.RETRY, TIME_LIMIT_EXCEEDED)


def test_a_soft_limit_in_the_child_lets_the_task_return(tmp_path: Path) -> None:
    rig = Rig(soft_time_limit=0.05)
    trace = tmp_path / "trace"
    cut = rig.client.send("soft_limited", str(trace), 30.0)
    assert rig.serve() == EXIT_OK
    assert rig.backend.states[cut.task_id].python_results() == ["cut short"]
    assert runs(trace) == ["start", "cleaned_up"]


def test_a_child_leaves_for_a_fresh_one_after_max_tasks_without_taking_more(
    tmp_path: Path,
) -> None:
    rig = Rig(max_tasks_per_child=3)
    for _ in range(40):  # quick tasks: many a fetch, were it not for the limit
        rig.child.pacing.ran("record", 0.0001)
    sent = [rig.client.send("record", str(tmp_path / "trace"), str(n)) for n in range(5)]
    assert rig.serve() == EXIT_CHILD_RECYCLE
    assert runs(tmp_path / "trace") == ["0", "1", "2"]
    assert all(size <= 3 for size in rig.broker.called("fetch"))
    assert [rig.state(r.task_id) for r in sent[3:]] == [State.PENDING, State.PENDING]
    assert len(rig.broker.queues[QUEUE]) == 2  # left for the next child, not counted
    assert rig.child.recycling.reason == "max_tasks_per_child"


def test_a_child_hands_back_its_batch_when_its_memory_is_too_much(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = Rig(max_memory_per_child=100, prefetch=4)
    sizes = iter([50.0, 120.0, 120.0])
    monkeypatch.setattr(recycling, "resident_mib", lambda: next(sizes))
    sent = [rig.client.send("record", str(tmp_path / "trace"), str(n)) for n in range(4)]
    assert rig.serve() == EXIT_CHILD_RECYCLE
    assert runs(tmp_path / "trace") == ["0", "1"]  # the second task took it over the limit
    (released,) = rig.broker.called("release_many")
    assert [decode_signature(b).uuid for b in released] == [r.task_id for r in sent[2:]]
    assert rig.child.recycling.reason == "max_memory_per_child"


def test_recycling_counts_tasks_and_caps_batches() -> None:
    limit = Recycling(WorkerConfig(max_tasks_per_child=2))
    assert limit.batch_size(32) == 2
    assert limit.ran() is False and limit.batch_size(32) == 1
    assert limit.ran() is True and limit.due
    unlimited = Recycling(WorkerConfig())
    assert unlimited.batch_size(32) == 32
    assert not any(unlimited.ran() for _ in range(100))
    assert recycling.resident_mib() > 1


def test_a_recycled_child_is_replaced_at_once_as_no_crash(
    run_supervisor: Callable[..., Any], tmp_path: Path
) -> None:
    class RecyclesFirst(FakeChild):
        def serve(self) -> int:
            if not list(tmp_path.glob("recycled-*")):
                (tmp_path / f"recycled-{os.getpid()}").touch()
                return EXIT_CHILD_RECYCLE
            (tmp_path / f"fresh-{os.getpid()}").touch()
            return self.idle_until_stopped()

    boss = run_supervisor(RecyclesFirst, lambda: list(tmp_path.glob("fresh-*")))
    assert boss.exit_code == EXIT_OK
    assert boss.respawns.early_deaths == 0  # no backoff: it was no crash
    assert len(list(tmp_path.glob("fresh-*"))) == 1


def test_a_task_that_may_be_killed_runs_without_others_held_behind_it(tmp_path: Path) -> None:
    """Messages held by a child killed at a time limit would come back counted as deliveries
    that died (worker.max_deliveries): with a fixed prefetch too, they are handed back first."""
    rig = Rig(prefetch=3)
    trace = str(tmp_path / "trace")
    limited = signature("record", trace, "limited").with_changes(headers={"time_limit": 30})
    first = rig.client.send(limited)
    rest = [rig.client.send("record", trace, str(n)) for n in range(2)]
    assert rig.serve() == EXIT_OK
    first_release = rig.broker.called("release_many")[0]
    assert [decode_signature(b).uuid for b in first_release] == [r.task_id for r in rest]
    assert {rig.state(r.task_id) for r in [first, *rest]} == {State.SUCCESS}


def test_a_quick_task_keeps_its_quick_path_under_a_time_limit_but_for_retries(
    tmp_path: Path,
) -> None:
    """No STARTED for a quick task under a (safety-net) time limit; a retry writes it, so its
    own crash is not taken for the kill of the attempt before it."""
    rig = Rig(time_limit=300)
    for _ in range(40):
        rig.child.pacing.ran("record", 0.0001)
    trace = str(tmp_path / "trace")
    first = rig.client.send("record", trace, "first")
    retry = rig.client.send(
        signature("record", trace, "retry").with_changes(headers={ATTEMPT_HEADER: 2})
    )
    assert rig.serve() == EXIT_OK
    writes = [entry for states in rig.backend.called("set_states") for entry in states]
    assert {task_id for task_id, state in writes if state is State.STARTED} == {retry.task_id}
    assert {rig.state(first.task_id), rig.state(retry.task_id)} == {State.SUCCESS}


def test_a_chord_member_killed_for_good_fails_the_chord_once(tmp_path: Path) -> None:
    from taskd.workflows import chord

    rig = Rig()
    trace, errors = str(tmp_path / "trace"), str(tmp_path / "errors")
    workflow = chord(
        [signature("record", trace, "a"), signature("record", trace, "b")],
        signature("count"),
        signature("collect_error", errors),
    )
    rig.client.send_chord(workflow)
    killed_id = workflow.group.members[0].uuid
    killed = TaskState(killed_id, State.FAILURE, error=TIME_LIMIT_EXCEEDED, created_at=GoTime.now())
    rig.backend.set_states([killed])  # the supervisor's record, then the kill
    body, _before = rig.broker.queues[QUEUE].popleft()
    assert decode_signature(body).uuid == killed_id
    rig.broker.queues[QUEUE].appendleft((body, 1))  # its message came back
    assert rig.serve() == EXIT_OK
    assert runs(trace) == ["b"]  # the killed member never ran again
    assert Path(errors).read_text() == f'"{TIME_LIMIT_EXCEEDED}"\n'  # the error callback, once
    callback = rig.backend.states[workflow.callback.uuid]
    assert callback.state is State.FAILURE
    assert callback.error == f"chord member {killed_id} failed: {TIME_LIMIT_EXCEEDED}"
