"""Consumer liveness for brokers whose drivers keep leases themselves (SQLite, Redis).

Each consuming broker instance has an id and beats from a background thread, so a task that
runs for an hour keeps its messages while a consumer that died loses them within
``consumer_timeout``. The thread, not the task loop, beats: a long task never looks dead.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Callable

from taskd import logs
from taskd.errors import DriverError

log = logs.get_logger("taskd.lease")


def _pid_space() -> str:
    """This boot of this kernel, and this PID namespace: where a pid names one process."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            boot_id = boot.read().strip()
        namespace = os.readlink("/proc/self/ns/pid").removeprefix("pid:[").rstrip("]")
    except OSError:
        return secrets.token_hex(8)  # unknown: never take another process's pid for ours
    return f"{boot_id}/{namespace}"


# Hostnames repeat (cloned VMs, containers), namespace inodes repeat across hosts; the boot id
# does not.
MACHINE = f"{socket.gethostname()}/{_pid_space()}"


def new_consumer_id() -> str:
    """``host/boot/pidns:pid:random``: unique per consumer, and says where it ran."""
    return f"{MACHINE}:{os.getpid()}:{secrets.token_hex(4)}"


def gone_here(consumer_id: str) -> bool:
    """Whether a consumer ran on this machine and its process is gone.

    Such a consumer's messages can come back at once instead of after consumer_timeout:
    a killed child's task is redelivered within a heartbeat.
    """
    machine, _, rest = consumer_id.partition(":")
    pid, _, _random = rest.partition(":")
    return machine == MACHINE and pid.isdigit() and not process_alive(int(pid))


def seems_dead(consumer_id: str, silent_s: float | None, timeout_s: float) -> bool:
    """Whether a consumer holding messages is gone: no beat on record, silent past the
    timeout, or its process gone from this machine. (What a reclaim gives back soon.)"""
    return silent_s is None or silent_s > timeout_s or gone_here(consumer_id)


def process_alive(pid: int) -> bool:
    """Whether a process of this host exists (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return True


class SilenceJudge:
    """Whether this consumer has been in touch long enough to call another one silent.

    After an outage, a suspend or a long pause every consumer's last beat looks old, the
    live ones' too; reclaiming then would run live tasks twice. So a consumer judges others
    only after beating without a gap for ``timeout_s`` itself (wall clock: a suspend counts).
    """

    def __init__(self, timeout_s: float, interval_s: float) -> None:
        self._timeout_s, self._interval_s = timeout_s, interval_s
        self._since: float | None = None
        self._last: float | None = None

    def beat_succeeded(self) -> None:
        now = time.time()
        if self._last is None or now - self._last > 2 * self._interval_s:
            self._since = now  # missed beats: cut off until now, start counting again
        self._last = now

    def may_judge(self) -> bool:
        return self._since is not None and time.time() - self._since >= self._timeout_s


class BeatThread:
    """Runs ``beat`` every ``interval_s`` on a daemon thread until ``stop``."""

    def __init__(self, beat: Callable[[], None], interval_s: float, driver: str) -> None:
        self._beat, self._interval_s, self._driver = beat, interval_s, driver
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"taskd-{self._driver}-heartbeat", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(self._interval_s):
            try:
                self._beat()
            except DriverError as exc:
                if not failing:  # once per outage; the main loop reports the outage too
                    log.warning("heartbeat_failed", driver=self._driver, error=str(exc))
                failing = True
                continue
            except Exception:
                log.exception("heartbeat_crashed", driver=self._driver)
                failing = True
                continue
            if failing:
                log.info("heartbeat_recovered", driver=self._driver)
            failing = False
