"""The supervisor's beacon: keeps this daemon on the backend's ``workers`` board, and finds
the revoked tasks it must stop.

A thread of the supervisor, so that a slow or unreachable backend never holds up its loop.
The loop hands it a snapshot of the pool each turn (``snapshot``); every
``worker.heartbeat_interval`` the thread posts the latest one, kept ``worker.consumer_timeout``
seconds, so a daemon that dies (kill -9, a lost host) drops off the board within that, and one
that stops cleanly takes its entry down. That is one small write per beat whatever the pool
does. The thread also reads the ``revoked`` board twice every ``taskd.revocations.REFRESH_S``
and publishes its ids to the children (``revoked``, in shared memory), so a child that takes a
message after a quiet spell need not read the board before it runs the task; while a child
runs a task, the ids revoked with ``terminate`` are what the loop stops (``Kills.terminate``).

``taskctl workers`` reads the board (``taskd.boards.live_workers``). An entry is a JSON
object: host, machine (host, boot and pid namespace), pid, version, queues, tasks (the names
it has), concurrency, started_at and beat_at (RFC 3339), tasks_done and tasks_failed since
the daemon started, and children: each one's slot, pid, tasks done and the task it runs (id,
name, started_at), or null. Workers read it too (``taskd.worker.peers``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from taskd import __version__, logs
from taskd.backends import ResultBackend, open_backend
from taskd.backends.base import Entry
from taskd.boards import REVOKED, WORKERS
from taskd.brokers.lease import MACHINE
from taskd.config import Config
from taskd.revocations import REFRESH_S, to_terminate
from taskd.wire import GoTime
from taskd.worker.shared_ids import SharedIds

if TYPE_CHECKING:
    from taskd.worker.supervisor import Supervisor

log = logs.get_logger("taskd.supervisor")

CLOSE_WAIT_S = 5.0  # longest wait for the thread's last round trip at exit
# The children take the published ids for REFRESH_S; read twice as often, so they never have
# to read the board themselves while the beacon keeps up.
READ_EVERY_S = REFRESH_S / 2


def snapshot(pool: Supervisor) -> Entry:
    """The pool as ``taskctl workers`` shows it (made in the supervisor's loop)."""
    now_ns, now_s = time.time_ns(), time.monotonic()
    children = []
    current = [child for child in pool.children.values() if not child.asked_to_stop]
    for child in sorted(current, key=lambda child: child.slot):
        running = pool.kills.running(child)
        task = None
        if running is not None:
            started = GoTime(now_ns - round((now_s - running.started_s) * 1e9))
            task = {"id": running.task_id, "name": running.task_name, "started_at": str(started)}
        done = pool.liveness.view(child.slot).tasks_done
        children.append({"slot": child.slot, "pid": child.pid, "tasks_done": done, "task": task})
    done, failed = pool.liveness.totals(child.slot for child in pool.children.values())
    return {
        "host": socket.gethostname(),
        "machine": MACHINE,  # where its pids name its processes (taskd.worker.peers)
        "pid": pool.pid,
        "version": __version__,
        "queues": [pool.queue],
        "tasks": pool.registry.names(),
        "concurrency": pool.desired,
        "started_at": pool.started_at,
        "tasks_done": done,
        "tasks_failed": failed,
        "children": children,
    }


class Beacon:
    def __init__(
        self, config: Config, connect: Callable[[Config], ResultBackend] = open_backend
    ) -> None:
        # Not host:pid alone: daemons in containers sharing a hostname (host networking)
        # are each pid 1, and one entry would hide the others (lease.MACHINE tells them apart).
        self.key = f"{MACHINE}:{os.getpid()}"
        self._config, self._connect = config, connect
        self._snapshot: Entry | None = None
        self.terminate: frozenset[str] = frozenset()  # revoked with terminate (read by the loop)
        self.revoked = SharedIds()  # the revoked ids, for the children (made before they fork)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="taskd-beacon", daemon=True)
        self._backend: ResultBackend | None = None
        self._backend_config: Config | None = None  # the config it was opened with
        self._lock = threading.Lock()  # held while the backend is in use, and around forks

    def start(self) -> None:
        self._thread.start()

    def update(self, config: Config, pool: Entry) -> None:
        """The latest config and snapshot of the pool (from the supervisor's loop)."""
        self._config, self._snapshot = config, pool

    @contextmanager
    def forking(self) -> Iterator[None]:
        """``with beacon.forking(): os.fork()``: no connection of the beacon's is open in the
        fork. A child must not inherit one: an SQLite connection's locks would be taken for
        its own and the file corrupted. The thread opens a new one for its next round."""
        with self._lock:
            self._drop()
            yield

    def close(self) -> None:
        """Stop the thread; it takes this daemon's entry down on its way out."""
        self._stopped.set()
        if self._thread.ident is not None:  # started
            self._thread.join(CLOSE_WAIT_S)

    def _run(self) -> None:
        next_beat = next_read = 0.0
        failing = False
        while True:
            stopping = self._stopped.is_set()
            with self._lock:
                try:
                    backend, config = self._opened()
                    if stopping:
                        backend.post(WORKERS, {self.key: None}, 1)
                    else:
                        next_beat, next_read = self._round(backend, config, next_beat, next_read)
                    if failing:
                        log.info("beacon_resumed")
                        failing = False
                except Exception as exc:  # never the supervisor's end: try again next beat
                    if not failing:
                        log.warning("beacon_failed", error=str(exc))
                        failing = True
                    self._drop()
                if stopping:
                    self._drop()
                    return
            self._stopped.wait(min(READ_EVERY_S, self._config.worker.heartbeat_interval))

    def _opened(self) -> tuple[ResultBackend, Config]:
        """The backend of the latest config, opened (again) if need be (under the lock)."""
        config = self._config
        if self._backend is None or self._backend_config is not config:  # or reloaded
            self._drop()
            self._backend, self._backend_config = self._connect(config), config
        return self._backend, config

    def _round(
        self, backend: ResultBackend, config: Config, next_beat: float, next_read: float
    ) -> tuple[float, float]:
        """Post the pool when a beat is due, read the revocations when due; when each is
        due next."""
        now, pool = time.monotonic(), self._snapshot
        if pool is None:
            return next_beat, next_read
        if now >= next_beat:
            entry = {**pool, "beat_at": str(GoTime.now())}
            backend.post(WORKERS, {self.key: entry}, config.worker.consumer_timeout)
            next_beat = now + config.worker.heartbeat_interval
        if now >= next_read:
            board = backend.read_board(REVOKED)
            self.revoked.publish(board)
            busy = any(child["task"] for child in pool["children"])
            self.terminate = frozenset(to_terminate(board if busy else {}))
            next_read = now + READ_EVERY_S
        return next_beat, next_read

    def _drop(self) -> None:
        _close(self._backend)
        self._backend = self._backend_config = None


def _close(backend: ResultBackend | None) -> None:
    if backend is not None:
        with contextlib.suppress(Exception):
            backend.close()
