"""The supervisor in-process, with fake children: boot failure, a crash, a stall, a drain.

``Supervisor.run`` runs in the test's own process (its signal handlers are restored after);
its children are forks running a fake ``run`` that reports through files.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from taskd.config import Config, WorkerConfig
from taskd.exitcodes import EXIT_CHILD_BOOT_FAILURE, EXIT_FAILURE, EXIT_OK
from taskd.registry import Registry
from taskd.worker import supervisor
from taskd.worker.liveness import ChildLiveness
from taskd.worker.supervisor import HANDLED, Supervisor
from tests.support.harness import wait_until


class FakeChild:
    """A forked child that sets itself up as the real one does, then ``serve``s."""

    def __init__(
        self, config: Config, registry: Registry, queue: str, slot: int, liveness: ChildLiveness
    ) -> None:
        self.slot, self.liveness = slot, liveness
        self.stopping = False

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
    ) -> Supervisor:
        config = Config(worker=WorkerConfig(shutdown_timeout=shutdown_timeout))
        boss = Supervisor(config, Registry(), concurrency=children, make_child=child_class)
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
    for signum, handler in saved.items():
        signal.signal(signum, handler)
    for boss in started:  # whatever a failed test left running
        for pid in boss.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_children_that_cannot_boot_stop_the_daemon(
    run_supervisor: Callable[..., Supervisor],
) -> None:
    class CannotBoot(FakeChild):
        def serve(self) -> int:
            return EXIT_CHILD_BOOT_FAILURE

    boss = run_supervisor(CannotBoot, None, children=2)
    assert boss.exit_code == EXIT_FAILURE  # not a crash loop: the daemon itself gives up
    assert boss.children == {}


def test_a_crashed_child_is_replaced(
    run_supervisor: Callable[..., Supervisor], tmp_path: Path
) -> None:
    class CrashesFirst(FakeChild):
        def serve(self) -> int:
            if not marks(tmp_path, "crashed"):
                mark(tmp_path, "crashed")
                os._exit(70)
            mark(tmp_path, "replacement")
            return self.idle_until_stopped()

    boss = run_supervisor(CrashesFirst, lambda: marks(tmp_path, "replacement"))
    assert boss.exit_code == EXIT_OK
    assert len(marks(tmp_path, "crashed")) == 1 and len(marks(tmp_path, "replacement")) == 1
    assert boss.early_deaths == 1  # its replacement was paced, not spawned in a hot loop


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
