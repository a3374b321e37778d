"""When the pool is ready, what systemd hears of it, and what "progress" means for its watchdog.

Ready: every child of the pool has reached its broker and backend (its backend answered and
its first fetch returned, so its queue exists). The supervisor logs ``taskd_ready`` then,
with or without systemd, and /healthz answers 200 from then on (``taskd.worker.metrics``).

Each message to systemd goes out in its own datagram (``taskd.worker.sdnotify``), and only
when ``$NOTIFY_SOCKET`` is set; without it this module sends systemd nothing.

- ``READY=1``: the pool is ready; again after a reload, once the new children are.
- ``STATUS=...``: kept current, at most once a second: children up of those configured,
  busy, tasks done, queue, silent children, the last error. Not before ``READY=1`` unless
  the start takes longer than QUIET_START_S.
- ``RELOADING=1`` with ``MONOTONIC_USEC=``: a SIGHUP is taken up. ``READY=1`` follows when
  the new children are ready, or at once when the new configuration is refused.
- ``STOPPING=1``: a drain (TERM, INT) or a fast stop (QUIT) begins. Then, every second
  while children finish their tasks, ``EXTEND_TIMEOUT_USEC=`` up to the supervisor's own
  KILL deadline plus a margin (so a ``worker.shutdown_timeout`` longer than
  ``TimeoutStopSec=`` is still honoured while the supervisor is alive).
- ``WATCHDOG=1``: once ready, every quarter of ``$WATCHDOG_USEC``, while the pool makes
  progress.

Progress: the pool makes progress when every current child (not one already asked to stop:
the supervisor KILLs those at a deadline of its own) stamped its liveness slot within the
progress window. A child stamps at every turn of its consume loop (a turn blocks at most
``worker.poll_interval``), at every pause while it rides out a broker or backend outage, and,
from a thread, every ``BUSY_BEAT_S`` while it runs tasks; a child counts from its fork until
it first stamps. The window is ``$WATCHDOG_USEC`` (``WatchdogSec=``), but never less than
``2 * worker.poll_interval + BUSY_BEAT_S``. Pings come from the supervisor's main loop, so a
wedged supervisor sends none either.

So a task that runs for hours is progress, and so is a child waiting out a broker outage.
A child that is stopped (SIGSTOP, a frozen cgroup), stuck in C code that holds the GIL, or
whose consume loop stopped turning (a fetch that never returns) is not; while any such child
stays silent the pings stop, and systemd's watchdog action (``WatchdogSignal=``, then
``Restart=``) follows one ``WatchdogSec=`` after the last ping. A task looping in Python
keeps its thread stamping: taskd cannot tell it from a long task.
"""

from __future__ import annotations

import math
import time
from enum import Enum
from typing import TYPE_CHECKING

from taskd import logs
from taskd.worker.liveness import BUSY_BEAT_S, ChildLiveness, SlotView
from taskd.worker.sdnotify import Notifier, monotonic_usec

if TYPE_CHECKING:
    from taskd.worker.supervisor import ChildProcess, Supervisor

log = logs.get_logger("taskd.systemd")
pool_log = logs.get_logger("taskd.supervisor")

PING_FRACTION = 0.25  # a ping every quarter of WATCHDOG_USEC: well inside sd_notify's "half"
STATUS_EVERY_S = 1.0  # STATUS= at most this often (READY, RELOADING, STOPPING: at once)
QUIET_START_S = 2.0  # a start that takes longer than this shows its progress in STATUS=
EXTEND_EVERY_S = 1.0  # EXTEND_TIMEOUT_USEC= this often while a stop lasts
EXTEND_MARGIN_S = 5.0  # beyond the supervisor's own KILL deadline


class Phase(Enum):
    STARTING = "starting"
    RUNNING = "running"
    RELOADING = "reloading"
    STOPPING = "stopping"


class Service:
    """The supervisor's side of the systemd protocol; the supervisor calls it from its loop."""

    def __init__(self, notifier: Notifier, liveness: ChildLiveness) -> None:
        self.notifier, self.liveness = notifier, liveness
        self.phase = Phase.STARTING
        self.phase_since = time.monotonic()
        self.ready = False  # the pool was ready once: it serves, whatever comes after
        self.last_error = ""
        self._status, self._status_at = "", -math.inf
        self._next_ping = self._next_extend = 0.0
        self._withheld = False
        if notifier.enabled:
            log.info(
                "systemd_notify", socket=notifier.address, watchdog_s=notifier.watchdog_timeout_s
            )

    @property
    def enabled(self) -> bool:
        return self.notifier.enabled

    def wait_s(self, longest_s: float) -> float:
        """How long the supervisor's loop may wait before it must look at the children."""
        if self.notifier.watchdog_timeout_s is None or self.phase is Phase.STARTING:
            return longest_s
        return min(longest_s, max(0.0, self._next_ping - time.monotonic()))

    def progress_window_s(self, poll_interval_s: float) -> float:
        floor_s = 2 * poll_interval_s + BUSY_BEAT_S
        return max(self.notifier.watchdog_timeout_s or 0.0, floor_s)

    def close(self) -> None:
        self.notifier.close()

    # -- what the supervisor reports --------------------------------------------------------

    def error(self, text: str) -> None:
        """The last error STATUS= shows, with the local time it happened."""
        self.last_error = f"{text} (at {time.strftime('%H:%M:%S')})"
        self._status_at = -math.inf

    def reloading(self) -> None:
        if self.phase is Phase.RUNNING:
            self.phase, self.phase_since = Phase.RELOADING, time.monotonic()
            self.notifier.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}")
            self._send_status("reloading the configuration")

    def reload_failed(self, error: str) -> None:
        self.error(f"reload failed, old configuration kept: {error}")
        if self.phase is Phase.RELOADING:
            self.phase = Phase.RUNNING
            self.notifier.send("READY=1")

    def stopping(self, signal_name: str) -> None:
        if self.phase is not Phase.STOPPING:
            self.phase = Phase.STOPPING
            self.notifier.send("STOPPING=1")
            self._send_status(f"stopping ({signal_name}): children finish their tasks")

    # -- every turn of the supervisor's loop ------------------------------------------------

    def tick(self, pool: Supervisor) -> None:
        starting = self.phase in (Phase.STARTING, Phase.RELOADING)
        if not (starting or self.enabled):
            return  # nothing to tell: ready already, and no systemd to hear more
        now = time.monotonic()
        views = {child.slot: self.liveness.view(child.slot) for child in pool.children.values()}
        current = [child for child in pool.children.values() if not child.asked_to_stop]
        if (
            starting
            and not pool.draining
            and len(current) >= pool.desired
            and all(views[child.slot].ready for child in current)
        ):
            pool_log.info(
                "taskd_ready",
                children=len(current),
                queue=pool.queue,
                reloaded=self.phase is Phase.RELOADING,
                after_s=round(now - self.phase_since, 3),
            )
            self.phase, self.ready = Phase.RUNNING, True
            self.notifier.send("READY=1")
            self._status_at = -math.inf
        if not self.enabled:
            return
        window_s = self.progress_window_s(pool.config.worker.poll_interval)
        silent = [child for child in current if now - views[child.slot].beat_s > window_s]
        self._update_status(now, pool, current, views, silent, window_s)
        self._feed_watchdog(now, silent, window_s, views)
        if self.phase is Phase.STOPPING:
            self._extend_stop(now, pool)

    def _feed_watchdog(
        self,
        now: float,
        silent: list[ChildProcess],
        window_s: float,
        views: dict[int, SlotView],
    ) -> None:
        timeout_s = self.notifier.watchdog_timeout_s
        if timeout_s is None or self.phase is Phase.STARTING or now < self._next_ping:
            return
        self._next_ping = now + timeout_s * PING_FRACTION
        if silent:
            if not self._withheld:
                log.warning(
                    "watchdog_withheld",
                    silent_children=[child.pid for child in silent],
                    silent_s=round(now - max(views[child.slot].beat_s for child in silent), 1),
                    window_s=window_s,
                )
            self._withheld = True
            return
        if self._withheld:
            log.info("watchdog_resumed")
        self._withheld = False
        self.notifier.send("WATCHDOG=1")

    def _extend_stop(self, now: float, pool: Supervisor) -> None:
        if not pool.children or now < self._next_extend:
            return
        deadlines = [
            child.stop_by
            for child in pool.children.values()
            if child.stop_by is not None and math.isfinite(child.stop_by)
        ]
        left_s = max(deadlines, default=now) - now + EXTEND_MARGIN_S
        self.notifier.send(f"EXTEND_TIMEOUT_USEC={int(left_s * 1_000_000)}")
        self._next_extend = now + EXTEND_EVERY_S

    # -- STATUS= ----------------------------------------------------------------------------

    def _update_status(
        self,
        now: float,
        pool: Supervisor,
        current: list[ChildProcess],
        views: dict[int, SlotView],
        silent: list[ChildProcess],
        window_s: float,
    ) -> None:
        if self.phase is Phase.STARTING and now - self.phase_since < QUIET_START_S:
            return  # a quick start says READY=1 first
        if now - self._status_at < STATUS_EVERY_S:
            return
        ready = sum(1 for child in current if views[child.slot].ready)
        finishing = len(pool.children) - len(current)
        if self.phase is Phase.STARTING:
            head = f"starting: {ready}/{pool.desired} children reached the broker and backend"
        elif self.phase is Phase.RELOADING:
            head = f"reloading: {ready}/{pool.desired} new children ready"
        elif self.phase is Phase.STOPPING:
            head = f"stopping: {_count(len(pool.children), 'child')} finishing their tasks"
        else:
            busy = sum(1 for child in current if views[child.slot].busy)
            head = f"{len(current)}/{pool.desired} children up, {busy} busy"
        parts = [head]
        if finishing and self.phase is not Phase.STOPPING:
            parts.append(f"{_count(finishing, 'old child')} finishing")
        done, _failed = self.liveness.totals(views)
        parts += [f"{_count(done, 'task')} done", f"queue {pool.queue}"]
        if silent:
            withheld = ", watchdog withheld" if self.notifier.watchdog_timeout_s else ""
            parts.append(f"{len(silent)} silent for over {window_s:g}s{withheld}")
        outages = [views[child.slot] for child in current if views[child.slot].outage]
        for kind in sorted({view.outage for view in outages}):
            since = min(view.outage_since_s for view in outages if view.outage == kind)
            parts.append(f"{kind} unreachable for {now - since:.0f}s")
        if self.last_error:
            parts.append(f"last error: {self.last_error}")
        self._send_status("; ".join(parts), now)

    def _send_status(self, text: str, now: float | None = None) -> None:
        self._status_at = time.monotonic() if now is None else now
        if text != self._status:
            self._status = text
            self.notifier.send(f"STATUS={text}")


def _count(number: int, noun: str) -> str:
    plural = noun.replace("child", "children") if "child" in noun else noun + "s"
    return f"{number} {noun if number == 1 else plural}"
