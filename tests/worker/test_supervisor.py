"""The supervisor in-process, with fake children: boot failure, a crash, a stall, a drain.

``Supervisor.run`` runs in the test's own process (its signal handlers are restored after);
its children are forks running a fake ``run`` that reports through files.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from taskd.boards import REVOKED as REVOKED_BOARD
from taskd.boards import WORKERS
from taskd.config import Config, WorkerConfig
from taskd.exitcodes import EXIT_CHILD_BOOT_FAILURE, EXIT_FAILURE, EXIT_OK
from taskd.registry import Registry
from taskd.revocations import REVOKED
from taskd.wire import Signature, State
from taskd.worker import supervisor
from taskd.worker.beacon import Beacon
from taskd.worker.liveness import ChildLiveness
from taskd.worker.respawns import Respawns
from taskd.worker.running import RunningTasks
from taskd.worker.service import Service
from taskd.worker.supervisor import HANDLED, Supervisor
from tests.support.fakes import MemoryBackend
from tests.support.harness import wait_until


class FakeChild:
    """A forked child that sets itself up as the real one does, then ``serve``s."""

    def __init__(
        self, config: Config, registry: Registry, queue: str, slot: int, liveness: ChildLiveness
    ) -> None:
        self.slot, self.liveness = slot, liveness
        self.stopping = False
        self.tasks: RunningTasks | None = None

    def run(self) -> int:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        return self.serve()

    def _on_term(self, _signum: int, _frame: object) -> None:
        self.stopping = True

    def serve(self) -> int:
        raise NotImplementedError

    def idle_until_stopped(self) -> int:
        while not self.stopping:
            self.liveness.stamp(self.slot, busy=False)
            time.sleep(0.02)
        return EXIT_OK


def mark(folder: Path, name: str) -> None:
    (folder / f"{name}-{os.getpid()}").touch()


def marks(folder: Path, name: str) -> list[Path]:
    return sorted(folder.glob(f"{name}-*"))


@pytest.fixture
def run_supervisor(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Supervisor]]:
    """``run_supervisor(child_class, when_to_stop, children=1)``: run a supervisor until it
    exits, sending it SIGTERM from a thread once ``when_to_stop()`` holds."""
    monkeypatch.setattr(supervisor, "LOOP_TICK_S", 0.05)
    saved = {signum: signal.getsignal(signum) for signum in HANDLED}
    started: list[Supervisor] = []

    def run(
        child_class: type[FakeChild],
        when_to_stop: Callable[[], bool] | None,
        children: int = 1,
        shutdown_timeout: float = 10.0,
        backend: MemoryBackend | None = None,
    ) -> Supervisor:
        config = Config(worker=WorkerConfig(shutdown_timeout=shutdown_timeout))
        backend = backend or MemoryBackend()  # the beacon's and the kills' (supervisor side)
        boss = Supervisor(
            config,
            Registry(),
            concurrency=children,
            make_child=child_class,
            connect_backend=lambda _config: backend,
        )
        started.append(boss)

        def stop_when_ready() -> None:
            assert when_to_stop is not None
            wait_until(when_to_stop, 20, what="the children to get there")
            os.kill(os.getpid(), signal.SIGTERM)

        if when_to_stop is not None:
            threading.Thread(target=stop_when_ready, daemon=True).start()
        boss.exit_code = boss.run()
        return boss

    yield run
    for boss in started:  # whatever a failed test left running, before its signals go back
        for pid in boss.children:  # to their default (a child's SIGUSR1 would end pytest)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_children_that_cannot_boot_stop_the_daemon(
    run_supervisor: Callable[..., Supervisor],
) -> None:
    class CannotBoot(FakeChild):
        def serve(self) -> int:
            return EXIT_CHILD_BOOT_FAILURE

    boss = run_supervisor(CannotBoot, None, children=2)
    assert boss.exit_code == EXIT_FAILURE  # not a crash loop: the daemon itself gives up
    assert boss.children == {}


def test_a_child_that_becomes_ready_wakes_the_supervisor(
    run_supervisor: Callable[..., Supervisor], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child says it is ready with a signal (READY_SIGNAL), so the pool is ready at once,
    not at the loop's next tick (made an hour long here)."""
    monkeypatch.setattr(supervisor, "LOOP_TICK_S", 3600.0)
    ready = threading.Event()
    tick = Service.tick

    def tick_and_see(self: Service, pool: Supervisor) -> None:
        tick(self, pool)
        if self.ready:
            ready.set()

    monkeypatch.setattr(Service, "tick", tick_and_see)

    class Ready(FakeChild):
        def serve(self) -> int:
            self.liveness.mark_ready(self.slot)
            return self.idle_until_stopped()

    boss = run_supervisor(Ready, lambda: ready.wait(20) or True, children=2)
    assert ready.is_set(), "the pool was not seen ready until the loop's tick"
    assert boss.exit_code == EXIT_OK


@pytest.mark.parametrize("tick_s", [0.05, 3600.0], ids=["ticking", "hour-long-tick"])
def test_a_crashed_child_is_replaced_after_its_delay(
    run_supervisor: Callable[..., Supervisor],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tick_s: float,
) -> None:
    """A child that died young is replaced once its delay (1 s) is over: not in a hot loop,
    and not only at the loop's next tick (an hour long in one case) or the next signal."""
    monkeypatch.setattr(supervisor, "LOOP_TICK_S", tick_s)

    class CrashesFirst(FakeChild):
        def serve(self) -> int:
            if not marks(tmp_path, "crashed"):
                mark(tmp_path, "crashed")
                os._exit(70)
            mark(tmp_path, "replacement")
            return self.idle_until_stopped()

    def replaced_or_given_up() -> bool:  # stops the supervisor either way
        deadline = time.monotonic() + 10
        while not marks(tmp_path, "replacement") and time.monotonic() < deadline:
            time.sleep(0.05)
        return True

    boss = run_supervisor(CrashesFirst, replaced_or_given_up)
    assert boss.exit_code == EXIT_OK
    assert len(marks(tmp_path, "crashed")) == 1
    assert len(marks(tmp_path, "replacement")) == 1, "not replaced before a tick or a signal"
    assert boss.respawns.early_deaths == 1
    crashed, replacement = marks(tmp_path, "crashed")[0], marks(tmp_path, "replacement")[0]
    assert replacement.stat().st_mtime - crashed.stat().st_mtime >= 0.9  # paced, not at once


def test_a_stalled_child_is_killed_and_replaced(
    run_supervisor: Callable[..., Supervisor], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervisor, "CHILD_STALL_S", 0.5)

    class StallsFirst(FakeChild):
        def serve(self) -> int:
            if not marks(tmp_path, "stalled"):
                mark(tmp_path, "stalled")
                time.sleep(60)  # idle and silent: wedged
                mark(tmp_path, "woke")
                return EXIT_OK
            mark(tmp_path, "replacement")
            return self.idle_until_stopped()

    boss = run_supervisor(StallsFirst, lambda: marks(tmp_path, "replacement"))
    assert boss.exit_code == EXIT_OK
    assert marks(tmp_path, "woke") == []  # killed, not left to finish its sleep
    assert len(marks(tmp_path, "replacement")) == 1


def test_a_child_is_never_taken_for_stalled_before_it_has_lived_that_long(
    run_supervisor: Callable[..., Supervisor], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Silence counts from the fork at the earliest: a slot that reads as never stamped
    (a stamp of 0, seen once) does not get a young child killed."""
    monkeypatch.setattr(ChildLiveness, "read", lambda _self, _slot: (0.0, False))
    checks: list[float] = []
    check = Supervisor._check_liveness

    def counted(boss: Supervisor, now: float) -> None:
        if marks(tmp_path, "ready"):
            checks.append(now)
        check(boss, now)

    monkeypatch.setattr(Supervisor, "_check_liveness", counted)

    class Idles(FakeChild):
        def serve(self) -> int:
            mark(tmp_path, "ready")
            return self.idle_until_stopped()

    boss = run_supervisor(Idles, lambda: len(checks) >= 5)
    assert boss.exit_code == EXIT_OK
    assert len(marks(tmp_path, "ready")) == 1  # not killed and replaced


def test_a_drain_lets_children_finish_and_kills_stragglers(
    run_supervisor: Callable[..., Supervisor], tmp_path: Path
) -> None:
    class Finishes(FakeChild):
        def serve(self) -> int:
            mark(tmp_path, "ready")
            if self.slot == 1:  # ignores TERM: killed after shutdown_timeout
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                time.sleep(60)
            self.idle_until_stopped()
            mark(tmp_path, "finished")
            return EXIT_OK

    started = time.monotonic()
    boss = run_supervisor(
        Finishes, lambda: len(marks(tmp_path, "ready")) == 2, children=2, shutdown_timeout=1.0
    )
    assert boss.exit_code == EXIT_OK  # an operator asked to stop
    assert len(marks(tmp_path, "finished")) == 1  # the one that listened finished
    assert time.monotonic() - started >= 1.0  # the straggler had its shutdown_timeout
    assert boss.children == {}


# -- live workers and revoke --terminate --------------------------------------------------------


class RunsOneTask(FakeChild):
    """Child 0 runs ``task_r`` (as far as the supervisor can tell) until it is killed."""

    folder: Path

    def serve(self) -> int:
        if self.slot == 0 and not marks(self.folder, "running"):
            assert self.tasks is not None  # set by the supervisor: where it writes what it runs
            self.tasks.start(self.slot, Signature(name="sleepy", uuid="task_r"))
            mark(self.folder, "running")
            time.sleep(60)
            mark(self.folder, "woke")
        mark(self.folder, "idle")
        return self.idle_until_stopped()


def test_the_beacon_posts_the_pool_and_takes_it_down_at_exit(
    run_supervisor: Callable[..., Supervisor], tmp_path: Path
) -> None:
    backend = MemoryBackend()
    RunsOneTask.folder = tmp_path
    seen: list[dict] = []

    def pool_on_the_board() -> bool:
        seen[:] = list(backend.read_board(WORKERS).values())
        children = seen[0]["children"] if seen else []
        return len(children) == 2 and children[0]["task"] is not None

    boss = run_supervisor(RunsOneTask, pool_on_the_board, children=2, backend=backend)
    (entry,) = seen
    assert (entry["pid"], entry["concurrency"], entry["queues"]) == (os.getpid(), 2, [boss.queue])
    running, idle = entry["children"]
    assert (running["task"]["id"], running["task"]["name"], idle["task"]) == (
        "task_r",
        "sleepy",
        None,
    )
    assert backend.read_board(WORKERS) == {}  # a clean stop takes the entry down


def test_a_task_revoked_with_terminate_is_recorded_and_its_child_replaced(
    run_supervisor: Callable[..., Supervisor], tmp_path: Path
) -> None:
    backend = MemoryBackend()
    backend.post(
        REVOKED_BOARD, {"task_r": {"terminate": True}, "task_other": {"terminate": True}}, 60
    )
    RunsOneTask.folder = tmp_path
    boss = run_supervisor(
        RunsOneTask, lambda: len(marks(tmp_path, "idle")) == 1, children=1, backend=backend
    )
    assert boss.exit_code == EXIT_OK
    assert marks(tmp_path, "woke") == []  # killed, not left to finish
    stored = backend.states["task_r"]
    assert (stored.state, stored.error, stored.task_name) == (State.FAILURE, REVOKED, "sleepy")
    assert boss.respawns.early_deaths == 0  # a kill it asked for is no crash


def test_no_connection_of_the_beacon_is_open_across_a_fork() -> None:
    """An SQLite connection a child inherits corrupts the file's locking (seen once as
    "database disk image is malformed" after a TTIN): the beacon's is closed around forks."""
    opened: list[MemoryBackend] = []

    def connect(_config: Config) -> MemoryBackend:
        opened.append(MemoryBackend())
        return opened[-1]

    beacon = Beacon(Config(), connect)
    beacon.update(Config(), {"host": "h", "pid": 1, "children": []})
    beacon.start()
    wait_until(lambda: opened and opened[0].read_board(WORKERS), 10, what="the first beat")
    with beacon.forking():
        assert all(backend.closed for backend in opened)
    wait_until(lambda: len(opened) == 2, 10, what="a connection for the next round")
    beacon.close()
    assert all(backend.closed for backend in opened)
    assert opened[-1].read_board(WORKERS) == {}  # taken down at the end


def test_a_fork_the_kernel_refuses_is_tried_again_later(
    run_supervisor: Callable[..., Supervisor], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No memory or no process left under a limit (EAGAIN, ENOMEM) is an error to ride
    out: the supervisor keeps running and forks again after a pause."""
    real_fork = os.fork
    refused: list[float] = []

    def fork() -> int:
        if len(refused) < 2:
            refused.append(time.monotonic())
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        return real_fork()

    def died(self: Respawns, _lived_s: float) -> float:  # a short pause, for the test
        self.at = time.monotonic() + 0.05
        return 0.05

    monkeypatch.setattr(supervisor.os, "fork", fork)
    monkeypatch.setattr(Respawns, "died", died)

    class Ready(FakeChild):
        def serve(self) -> int:
            mark(tmp_path, "ready")
            return self.idle_until_stopped()

    boss = run_supervisor(Ready, lambda: marks(tmp_path, "ready"))
    assert len(refused) == 2  # refused twice, then forked: the daemon never went down
    assert refused[1] - refused[0] >= 0.05  # after a pause, not in a loop
    assert boss.exit_code == EXIT_OK
    assert boss.service.last_error.startswith("cannot fork a child:")
