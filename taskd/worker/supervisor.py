"""The prefork supervisor: keeps N children running and turns signals into orderly stops.

Signal handlers only record (the wakeup fd carries the signal number to the main loop); all
work (reaping, respawning, forwarding) happens in the loop.

| signal      | supervisor                                                         |
| ----------- | ------------------------------------------------------------------ |
| TERM, INT   | drain: TERM children, wait ``shutdown_timeout``, KILL stragglers   |
| second one  | fast stop: QUIT children (they exit at once), KILL after a moment  |
| QUIT        | fast stop                                                          |
| HUP         | reload the config; if valid, new children replace the old ones     |
| TTIN / TTOU | one more / one fewer child (never below one)                       |
| CHLD        | reap; replace a child that died unasked, with capped backoff       |
| USR1        | from a child that became ready: look at the pool now               |

Under systemd the loop also reports readiness, reloads, stops and the pool's progress over
``$NOTIFY_SOCKET`` (``taskd.worker.service``, which defines "progress" for the watchdog).
With ``metrics.listen`` set it serves /metrics and /healthz from a thread
(``taskd.worker.metrics``), told of the pool each turn and of each child that exits.

The loop also wakes at the next hard time limit of a running task: the child is stopped, the
task recorded and the child killed (``taskd.worker.kills``), then replaced at once, as is
a child that leaves to be recycled (EXIT_CHILD_RECYCLE, ``taskd.worker.recycling``).
"""

from __future__ import annotations

import contextlib
import math
import os
import selectors
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from taskd import __version__, logs
from taskd.backends import ResultBackend, open_backend
from taskd.checks import check_drivers
from taskd.config import Config, load_config, redact_url
from taskd.errors import TaskdError
from taskd.exitcodes import EXIT_CHILD_BOOT_FAILURE, EXIT_CHILD_RECYCLE, EXIT_FAILURE, EXIT_OK
from taskd.registry import Registry, load_registry
from taskd.wire import GoTime
from taskd.worker import cpus
from taskd.worker.beacon import Beacon, snapshot
from taskd.worker.child import Child
from taskd.worker.forks import kill_with_descendants, send_signal, stop_with
from taskd.worker.kills import Kills
from taskd.worker.liveness import MAX_CHILDREN, READY_SIGNAL, ChildLiveness
from taskd.worker.metrics import Metrics
from taskd.worker.respawns import Respawns
from taskd.worker.running import RunningTasks
from taskd.worker.sdnotify import Notifier
from taskd.worker.service import Service

log = logs.get_logger("taskd.supervisor")

HANDLED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGCHLD,
    signal.SIGTTIN,
    signal.SIGTTOU,
    READY_SIGNAL,  # from a child: it is ready (the loop looks at the pool)
)
LOOP_TICK_S = 1.0  # how often the loop looks at child liveness when no signal wakes it
FAST_STOP_S = 3.0  # after QUIT, how long children get before KILL
CHILD_STALL_S = 60.0  # an idle child silent this long is wedged and gets replaced
# A reload reads the config again, and imports modules it has not imported; Python keeps
# the code of those it has (the children fork from this process).
CODE_CHANGED_FIX = "a reload keeps the task code taskd started with: restart taskd to run it"


@dataclass(slots=True)
class ChildProcess:
    pid: int
    slot: int
    started_at: float
    generation: int
    stop_by: float | None = None  # asked to stop: KILLed if still running at this time

    @property
    def asked_to_stop(self) -> bool:
        return self.stop_by is not None


class Supervisor:
    def __init__(
        self,
        config: Config,
        registry: Registry,
        *,
        queue: str | None = None,
        concurrency: int | None = None,
        config_path: str | None = None,
        make_child: Callable[[Config, Registry, str, int, ChildLiveness], Child] = Child,
        notifier: Notifier | None = None,
        connect_backend: Callable[[Config], ResultBackend] = open_backend,
    ) -> None:
        self.config, self.registry, self.config_path = config, registry, config_path
        self.make_child = make_child  # tests put in children with fake drivers
        self.queue_override, self.concurrency_override = queue, concurrency
        self.liveness = ChildLiveness()
        self.kills = Kills(RunningTasks(MAX_CHILDREN), connect_backend)  # time limits, revoke
        # systemd's notify protocol; $NOTIFY_SOCKET is read (and unset) here, before any fork
        self.service = Service(notifier or Notifier.from_environ(), self.liveness)
        self.metrics = Metrics.start(config)  # metrics.listen; ConfigError if it cannot bind
        self.beacon = Beacon(config, connect_backend)  # taskctl workers; revoke --terminate
        self.started_at = str(GoTime.now())
        self.children: dict[int, ChildProcess] = {}
        self.generation = 0
        self.draining = False
        self.fast = False
        self.exit_code = EXIT_OK
        self.respawns = Respawns()  # paced after children that die young
        self.desired = self._concurrency(config)
        self.pid = os.getpid()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._handlers = {
            signal.SIGTERM: self._drain,
            signal.SIGINT: self._drain,
            signal.SIGQUIT: self._fast_stop,
            signal.SIGHUP: self._reload,
            signal.SIGTTIN: self._grow,
            signal.SIGTTOU: self._shrink,
        }

    @property
    def queue(self) -> str:
        return self.queue_override or self.config.default_queue

    def _concurrency(self, config: Config) -> int:
        wanted = self.concurrency_override or config.worker.concurrency
        return min(wanted or cpus.default_concurrency(), MAX_CHILDREN)

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> int:
        for signum in HANDLED:
            signal.signal(signum, _record_only)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        self.liveness.supervisor_pid = self.pid  # only once READY_SIGNAL is handled
        log.info(
            "taskd_started",
            version=__version__,
            pid=os.getpid(),
            broker=redact_url(self.config.broker),
            result_backend=redact_url(self.config.result_backend),
            queue=self.queue,
            concurrency=self.desired,
            prefetch=self.config.worker.prefetch,
            tasks=self.registry.names(),
            config=self.config.source,
        )
        try:
            self._spawn_missing()
            self.beacon.start()
            while self.children or not self.draining:
                if self.metrics is not None:  # what /metrics shows of the pool, as it waits
                    self.metrics.tick(self)
                self.beacon.update(self.config, snapshot(self))
                tick_s = self.respawns.wait_s(LOOP_TICK_S)  # a delayed respawn comes on time
                tick_s = self.kills.wait_s(self.children.values(), tick_s)
                for signum in self._wait(self.service.wait_s(tick_s)):
                    handler = self._handlers.get(signum)
                    if handler is not None:
                        handler(signum)
                self._reap()
                self._tend()
                self.service.tick(self)
        finally:
            signal.set_wakeup_fd(-1)
            self.beacon.close()
            self.service.close()
            if self.metrics is not None:
                self.metrics.close()
        log.info("taskd_stopped", exit_code=self.exit_code)
        return self.exit_code

    def _wait(self, timeout_s: float) -> list[int]:
        """Block until a signal arrives or the tick passes; the signals that arrived."""
        signals: list[int] = []
        if self._selector.select(timeout_s):
            with contextlib.suppress(BlockingIOError):
                signals.extend(os.read(self._wake_r, 4096))
        return signals

    def _tend(self) -> None:
        children, revoked = self.children.values(), self.beacon.terminate
        killed = self.kills.enforce_time_limits(children, self.config)
        if revoked:
            killed += self.kills.terminate(children, revoked, self.config)
        for child in killed:
            child.stop_by = math.inf  # killed at a time limit or revoked: replaced at once
        now = time.monotonic()
        late = [c for c in self.children.values() if c.stop_by is not None and now >= c.stop_by]
        if late:
            log.warning("children_killed", count=len(late), reason="did not stop in time")
            for child in late:
                child.stop_by = math.inf  # killed: the reaper takes it from here
                self._kill(child.pid, signal.SIGKILL)
        if not self.draining:
            self._check_liveness(now)
            self._spawn_missing()

    # -- children -------------------------------------------------------------------------

    def _current(self) -> list[ChildProcess]:
        return [c for c in self.children.values() if not c.asked_to_stop]

    def _spawn_missing(self) -> None:
        while len(self._current()) < self.desired and self.respawns.due():
            self._spawn()

    def _spawn(self) -> None:
        used = {child.slot for child in self.children.values()}
        slot = next(i for i in range(MAX_CHILDREN) if i not in used)
        self.liveness.reset(slot)
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)  # no parent handler runs in the child
        try:
            with self.beacon.forking():  # no connection of the supervisor's goes with it
                pid = os.fork()
            if pid == 0:
                self._become_child(slot)
        except OSError as exc:  # no memory, or no process left under a limit: try again later
            delay = self.respawns.died(0.0)  # as a child that died at once: backoff
            log.error("child_fork_failed", child=slot, error=str(exc), retry_in_s=delay)
            self.service.error(f"cannot fork a child: {exc}")
            return
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)
        self.children[pid] = ChildProcess(pid, slot, time.monotonic(), self.generation)
        log.debug("child_spawned", child=slot, child_pid=pid)

    def _become_child(self, slot: int) -> None:
        code = EXIT_FAILURE
        try:
            stop_with(self.pid)
            self._selector.close()
            self.service.close()  # only the supervisor speaks to systemd
            if self.metrics is not None:
                self.metrics.in_child()  # ...and serves /metrics
            os.close(self._wake_r)
            os.close(self._wake_w)
            child = self.make_child(self.config, self.registry, self.queue, slot, self.liveness)
            child.tasks = self.kills.tasks  # where it writes what it runs
            child.shared_revoked = self.beacon.revoked  # where it reads what is revoked
            code = child.run()
        except BaseException:  # never return into the supervisor's stack
            log.exception("child_crashed", child=slot)
        finally:
            os._exit(code)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is not None:
                self._child_exited(child, status)

    def _child_exited(self, child: ChildProcess, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        lived_s = round(time.monotonic() - child.started_at, 3)
        expected = child.asked_to_stop or self.draining
        self.liveness.retire(child.slot)
        if self.metrics is not None:
            self.metrics.child_gone(child.pid, replaced=not self.draining)
        running = None if expected else self.kills.running(child)  # the task it died running
        task = {} if running is None else {"task_id": running.task_id, "task": running.task_name}
        fields = {"child": child.slot, "child_pid": child.pid, "lived_s": lived_s, **task}
        if code == EXIT_CHILD_RECYCLE:  # max_tasks_per_child or max_memory_per_child
            log.info("child_exited", exit_code=code, reason="recycled", **fields)
            return  # replaced by _tend at once: no crash, no backoff
        if code < 0:
            name = signal.Signals(-code).name
            hint = " (out of memory?)" if -code == signal.SIGKILL and not expected else ""
            (log.info if expected else log.error)("child_exited", signal=name + hint, **fields)
            if not expected:
                self.service.error(f"child {child.slot} killed by {name}{hint}")
        else:
            (log.info if expected and code == EXIT_OK else log.error)(
                "child_exited", exit_code=code, **fields
            )
            if not expected or code != EXIT_OK:
                self.service.error(f"child {child.slot} exited with status {code}")
        if code == EXIT_CHILD_BOOT_FAILURE and not self.draining:
            log.critical("taskd_cannot_start_children")
            self.exit_code = EXIT_FAILURE
            self._drain(signal.SIGTERM)
            return
        if expected:
            return
        in_a_task = running is not None and self.liveness.bounded(child.slot)
        delay = self.respawns.died(lived_s, in_a_task=in_a_task)
        if delay:
            log.warning(
                "child_respawn_delayed", delay_s=delay, early_deaths=self.respawns.early_deaths
            )

    def _check_liveness(self, now: float) -> None:
        for child in self._current():
            last, busy = self.liveness.read(child.slot)
            # Never silent longer than it has lived, whatever its slot reads.
            silent_s = now - max(last, child.started_at)
            if not busy and silent_s > CHILD_STALL_S:
                fields = {"child": child.slot, "child_pid": child.pid, "last_stamp_s": last}
                log.error("child_stalled", silent_s=round(silent_s), **fields)
                self.service.error(f"child {child.slot} stalled while idle; replaced")
                self._stop(child, signal.SIGKILL, within_s=0)

    def _stop(self, child: ChildProcess, signum: int, within_s: float) -> None:
        """Ask a child to stop with ``signum``; KILL it if it still runs ``within_s`` later."""
        deadline = time.monotonic() + within_s
        child.stop_by = deadline if child.stop_by is None else min(child.stop_by, deadline)
        self._kill(child.pid, signum)

    def _signal_children(self, signum: int, within_s: float) -> None:
        for child in list(self.children.values()):
            self._stop(child, signum, within_s)

    @staticmethod
    def _kill(pid: int, signum: int) -> None:
        if signum == signal.SIGKILL:  # a child killed takes its task's processes with it
            kill_with_descendants(pid)
        else:
            send_signal(pid, signum)  # one gone already: the reaper hears of it

    # -- signal actions -------------------------------------------------------------------

    def _drain(self, signum: int) -> None:
        if self.draining:
            self._fast_stop(signum)
            return
        self.draining = True
        self.service.stopping(signal.Signals(signum).name)
        log.info(
            "taskd_draining",
            signal=signal.Signals(signum).name,
            running=len(self.children),
            timeout_s=self.config.worker.shutdown_timeout,
        )
        self._signal_children(signal.SIGTERM, self.config.worker.shutdown_timeout)

    def _fast_stop(self, signum: int) -> None:
        if self.fast:
            return
        self.draining = self.fast = True
        self.service.stopping(signal.Signals(signum).name)
        log.warning("taskd_stopping_now", signal=signal.Signals(signum).name)
        self._signal_children(signal.SIGQUIT, FAST_STOP_S)

    def _reload(self, _signum: int) -> None:
        if self.draining:
            return
        self.service.reloading()
        try:
            config = load_config(self.config_path)
            check_drivers(config, [self.queue_override] if self.queue_override else [], serves=True)
            registry = load_registry(config.imports)
        except TaskdError as exc:
            log.error("reload_failed", error=str(exc))
            self.service.reload_failed(str(exc))
            return
        if stale := registry.changed_on_disk():
            log.warning("task_code_not_reloaded", modules=stale, fix=CODE_CHANGED_FIX)
        old = self._current()
        self.config, self.registry = config, registry
        self.desired = self._concurrency(config)
        self.generation += 1
        for child in old:  # they finish what they run, as in a drain
            self._stop(child, signal.SIGTERM, self.config.worker.shutdown_timeout)
        log.info("config_reloaded", concurrency=self.desired, replacing=len(old))
        self._spawn_missing()

    def _grow(self, _signum: int) -> None:
        if not self.draining and self.desired < MAX_CHILDREN:
            self.desired += 1
            log.info("pool_resized", concurrency=self.desired)

    def _shrink(self, _signum: int) -> None:
        current = self._current()
        if self.draining or self.desired <= 1 or not current:
            return
        self.desired -= 1
        newest = max(current, key=lambda child: child.started_at)
        self._stop(newest, signal.SIGTERM, self.config.worker.shutdown_timeout)
        log.info("pool_resized", concurrency=self.desired)


def _record_only(_signum: int, _frame: object) -> None:
    """The wakeup fd already told the loop; nothing else may happen in a handler."""
