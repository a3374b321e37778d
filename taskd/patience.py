"""Riding out an outage in the client: a call made again, with capped backoff, while it fails
in a way that says doing it again is safe, until a deadline.

A wait for results rides out any outage of the result backend for as long as the wait may
last; a send rides out a broker or backend it cannot connect to, or one that refused all of
it before running any (nothing was sent: ``DriverError.unsent``), for
``client.send_patience``. The outage is logged once as it begins (``broker_unavailable`` or
``backend_unavailable``) and once as it ends (``broker_recovered``, ``backend_recovered``),
and the error is raised when the deadline passes first.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from taskd import logs
from taskd.errors import BackendUnavailable, BrokerError, BrokerUnavailable, DriverError

log = logs.get_logger("taskd.client")

T = TypeVar("T")

FIRST_PAUSE_S = 0.1
MAX_PAUSE_S = 2.0


def ride_out(
    call: Callable[[], T],
    *,
    may_repeat: Callable[[DriverError], bool],
    ends: Callable[[float], float],
    **context: Any,
) -> T:
    """``call()``, made again while it raises an error ``may_repeat`` accepts, until
    ``ends(start of the outage)`` (a ``time.monotonic()`` value); ``context`` goes into the
    log lines."""
    since: float | None = None
    kind = ""
    pause_s = FIRST_PAUSE_S
    while True:
        try:
            result = call()
        except DriverError as exc:
            if not may_repeat(exc):
                raise
            now = time.monotonic()
            end = ends(now if since is None else since)
            if now >= end:  # (at once, where there is no time to wait: nothing to log)
                raise
            if since is None:
                since, kind = now, "broker" if isinstance(exc, BrokerError) else "backend"
                log.warning(f"{kind}_unavailable", error=str(exc), **context)
            time.sleep(min(pause_s, end - now))
            pause_s = min(pause_s * 2, MAX_PAUSE_S)
            continue
        if since is not None:
            log.info(f"{kind}_recovered", outage_s=round(time.monotonic() - since, 3), **context)
        return result


def unavailable(exc: DriverError) -> bool:
    """An outage of the broker or the backend (whatever it may have done)."""
    return isinstance(exc, BrokerUnavailable | BackendUnavailable)


def unsent(exc: DriverError) -> bool:
    """An outage in which nothing was sent (``DriverError.unsent``)."""
    return exc.unsent and unavailable(exc)
