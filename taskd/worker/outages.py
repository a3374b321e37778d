"""Riding out a broker or backend outage: call a driver until it answers.

Transient errors (``*Unavailable``) wait with capped, jittered backoff; the outage is logged
when it begins, every ``REPORT_EVERY_S`` while it lasts (with how long so far: a daemon that
cannot reach its broker must not look hung), and when it ends. The message being settled
stays leased meanwhile; if the child is stopped or killed before the driver comes back, the
broker delivers it again.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from taskd import logs
from taskd.errors import BackendUnavailable, BrokerFull, BrokerUnavailable, GiveUp

log = logs.get_logger("taskd.worker")

T = TypeVar("T")
DriverKind = Literal["broker", "backend"]

BACKOFF_FIRST_S = 0.1  # first pause after a driver error...
BACKOFF_MAX_S = 5.0  # ...doubling up to this
STOP_GRACE_S = 3.0  # asked to stop during an outage: wait this long for the driver, then leave
REPORT_EVERY_S = 30.0  # an outage is logged again this often while it lasts
# A broker refusing messages for now (BrokerFull) is waited out this long, then raised: the
# room may only come from this worker's own queue, which nobody drains while all wait.
ROOM_PATIENCE_S = 10.0

# Fixed event names per driver kind, so logs can be searched for them.
BEGAN = {"broker": "broker_unavailable", "backend": "backend_unavailable"}
LASTING = {"broker": "broker_still_unavailable", "backend": "backend_still_unavailable"}
ENDED = {"broker": "broker_recovered", "backend": "backend_recovered"}


class Outages:
    """Keeps calls to the drivers going through outages, for one child."""

    def __init__(
        self,
        stopping: Callable[[], bool],
        still_alive: Callable[[], None],
        report: Callable[[str, float], None] = lambda _kind, _since: None,
    ) -> None:
        """``report(kind, since)``: an outage of ``kind`` began at ``since`` (monotonic);
        ``report("", 0.0)`` when none is left (for the status systemd shows)."""
        self._stopping, self._still_alive, self._report = stopping, still_alive, report
        self._began: dict[DriverKind, tuple[float, int]] = {}  # kind -> (since, attempts)
        self._reported: dict[DriverKind, float] = {}  # kind -> when last logged

    def call(self, kind: DriverKind, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``call(*args, **kwargs)``, again and again while the driver is unavailable.

        Raises GiveUp when the child is asked to stop and the outage has lasted
        STOP_GRACE_S: whatever it did not ack is delivered again. A BrokerFull that lasts
        ROOM_PATIENCE_S is raised.
        """
        while True:
            try:
                result = call(*args, **kwargs)
            except (BrokerUnavailable, BackendUnavailable, BrokerFull) as exc:
                since, _attempts = self._began.get(kind, (time.monotonic(), 0))
                if self._stopping() and time.monotonic() - since >= STOP_GRACE_S:
                    raise GiveUp(kind) from exc
                if isinstance(exc, BrokerFull) and time.monotonic() - since >= ROOM_PATIENCE_S:
                    self.ended(kind, recovered=False)
                    raise
                self.pause(kind, exc)
                continue
            self.ended(kind)
            return result

    def pause(self, kind: DriverKind, exc: Exception) -> None:
        """Log an outage once, then wait a little longer each time (with jitter)."""
        now = time.monotonic()
        since, attempts = self._began.get(kind, (now, 0))
        if attempts == 0:
            log.warning(BEGAN[kind], error=str(exc))
            self._reported[kind] = now
            self._report(kind, since)
        elif now - self._reported.get(kind, since) >= REPORT_EVERY_S:
            log.warning(
                LASTING[kind], error=str(exc), outage_s=round(now - since, 1), attempts=attempts
            )
            self._reported[kind] = now
        self._began[kind] = (since, attempts + 1)
        pause_s = min(BACKOFF_FIRST_S * 2 ** min(attempts, 10), BACKOFF_MAX_S)
        if self._stopping():
            pause_s = min(pause_s, STOP_GRACE_S / 4)
        self._still_alive()  # just waiting, not wedged
        time.sleep(pause_s * random.uniform(0.5, 1.0))

    def ended(self, kind: DriverKind, *, recovered: bool = True) -> None:
        began = self._began.pop(kind, None)
        if began is not None:
            if recovered:
                log.info(ENDED[kind], outage_s=round(time.monotonic() - began[0], 3))
            other = next(iter(self._began.items()), None)
            self._report(*(other[0], other[1][0]) if other else ("", 0.0))
