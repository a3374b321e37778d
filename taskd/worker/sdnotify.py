"""systemd's notify protocol (sd_notify(3)), in taskd's own few lines: no libsystemd.

A notification is one datagram of ``NAME=value`` lines sent to the AF_UNIX socket named in
``$NOTIFY_SOCKET``: a path, or ``@name`` for a socket in Linux's abstract namespace. The
kernel attaches the sender's credentials itself, which is how systemd knows the main process
sent it (``NotifyAccess=main``). Without ``$NOTIFY_SOCKET`` nothing is sent and nothing is
opened.

The supervisor reads the variables once, at start, and removes them from its environment
(as ``sd_notify(unset_environment=1)`` does), so neither its children nor the programs that
tasks run can send notifications in its name.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import MutableMapping

from taskd import logs

log = logs.get_logger("taskd.systemd")

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as ``MONOTONIC_USEC=`` wants it."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """Sends notifications to one socket; never raises and never blocks.

    A datagram that cannot go out (no listener, a full queue) is dropped and logged once
    per run of failures: the daemon must not stall because systemd is not listening.
    """

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec if address else None
        self._target = _socket_address(address) if address else None
        self._socket: socket.socket | None = None
        self._failing = False

    @classmethod
    def from_environ(
        cls, environ: MutableMapping[str, str] | None = None, *, unset: bool = True
    ) -> Notifier:
        """The notifier ``environ`` (default ``os.environ``) describes, removing its
        variables from it when ``unset``. The watchdog is on when ``$WATCHDOG_USEC`` is a
        positive number and ``$WATCHDOG_PID``, if set, is this process."""
        environ = os.environ if environ is None else environ
        names = (NOTIFY_SOCKET_ENV, WATCHDOG_USEC_ENV, WATCHDOG_PID_ENV)
        address, usec, pid = (environ.get(name, "") for name in names)
        if unset:
            for name in names:
                environ.pop(name, None)
        watchdog_usec: int | None = None
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            watchdog_usec = int(usec)
        return cls(address or None, watchdog_usec)

    @property
    def enabled(self) -> bool:
        return self._target is not None

    @property
    def watchdog_timeout_s(self) -> float | None:
        """systemd's ``WatchdogSec=`` as this process was given it, or None (no watchdog)."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 1_000_000

    def send(self, *assignments: str) -> bool:
        """Send ``NAME=value`` assignments in one datagram; whether it went out."""
        if self._target is None:
            return False
        data = "\n".join(assignments).encode("utf-8", "replace")
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
                )
            self._socket.sendto(data, self._target)
        except OSError as exc:
            if not self._failing:
                log.warning("systemd_notify_failed", socket=self.address, error=str(exc))
            self._failing = True
            return False
        if self._failing:
            log.info("systemd_notify_recovered", socket=self.address)
        self._failing = False
        return True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _socket_address(address: str) -> str | bytes | None:
    """A path, or an abstract name (``@name`` -> ``\\0name``); None for what is not
    AF_UNIX (systemd 254's ``vsock:`` addresses, which taskd does not speak)."""
    if address.startswith("@"):
        return b"\0" + address[1:].encode()
    if address.startswith("/"):
        return address
    log.warning("systemd_notify_unsupported", socket=address, reason="not an AF_UNIX address")
    return None
