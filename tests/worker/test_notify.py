"""A real ``taskd start`` under a stand-in for systemd: a datagram socket of the test's own.

What the daemon says over ``$NOTIFY_SOCKET`` is checked in order (READY=1 after the
children run, STATUS=, WATCHDOG=1 pings at least every half of ``$WATCHDOG_USEC``,
RELOADING=1 and READY=1 around a SIGHUP, STOPPING=1 and EXTEND_TIMEOUT_USEC= on SIGTERM), and
the pings must stop while every child is stuck (SIGSTOP) and come back when they are not.
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from taskd.wire import State
from tests.support.harness import client_for, wait_until

WATCHDOG_USEC = 2_000_000  # systemd's WatchdogSec=2
HALF_WATCHDOG_S = WATCHDOG_USEC / 2_000_000


class Listener:
    """An AF_UNIX datagram socket, bound at a path or an abstract ``@name``, that keeps
    every notification it receives with the monotonic time it came."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + address[1:].encode() if address.startswith("@") else address)
        self.sock.settimeout(0.1)
        self.received: list[tuple[float, dict[str, str]]] = []
        self._closed = False
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.partition("=")[::2] for line in data.decode().splitlines())
            self.received.append((time.monotonic(), fields))

    def close(self) -> None:
        self._closed = True
        self._thread.join(5)
        self.sock.close()

    def messages(self) -> list[dict[str, str]]:
        return [fields for _, fields in list(self.received)]

    def index(self, name: str, value: str | None = None, after: int = -1) -> int | None:
        """The index of the first message after ``after`` that assigns ``name`` (``value``)."""
        for i, fields in enumerate(self.messages()):
            if i > after and name in fields and (value is None or fields[name] == value):
                return i
        return None

    def wait_for(self, name: str, value: str | None = None, after: int = -1) -> int:
        found = wait_until(
            lambda: (i := self.index(name, value, after)) is not None and (i, True),
            20,
            what=f"{name}={value or '...'} after message {after}",
        )
        return int(found[0])

    def pings(self, since: float = 0.0) -> list[float]:
        return [at for at, fields in list(self.received) if "WATCHDOG" in fields and at >= since]

    def statuses(self) -> list[str]:
        return [fields["STATUS"] for fields in self.messages() if "STATUS" in fields]


@pytest.fixture
def listen() -> Iterator[Callable[[str], Listener]]:
    """``listen("path")`` or ``listen("abstract")``: a socket for the daemon to notify."""
    folder = tempfile.mkdtemp(prefix="taskd-notify-")  # short: socket paths have 108 bytes
    opened: list[Listener] = []

    def make(kind: str) -> Listener:
        name = f"taskd-test-{secrets.token_hex(4)}"
        listener = Listener(f"{folder}/{name}" if kind == "path" else f"@{name}")
        opened.append(listener)
        return listener

    yield make
    for listener in opened:
        listener.close()
    shutil.rmtree(folder, ignore_errors=True)


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def test_systemd_hears_ready_status_pings_reload_and_stop_in_order(
    namespace: str, tmp_path: Path, daemon: Callable[..., Any], listen: Callable[[str], Listener]
) -> None:
    listener = listen("path")
    config, client = client_for("sqlite", namespace, tmp_path, worker={"poll_interval": 0.2})
    process = daemon(
        config,
        "--concurrency",
        "2",
        NOTIFY_SOCKET=listener.address,
        WATCHDOG_USEC=str(WATCHDOG_USEC),
    )
    ready = listener.wait_for("READY", "1")
    early = listener.messages()[:ready]  # on a slow start, STATUS= says what it waits for
    assert all(set(fields) == {"STATUS"} for fields in early), early
    assert len(process.events("child_ready")) == 2  # the children ran first
    wait_until(lambda: any("2/2 children up" in s for s in listener.statuses()), 10)

    assert client.send("count", 1, 2, 3).get(timeout=10) == 3
    wait_until(lambda: any("1 task done" in s for s in listener.statuses()), 10)
    assert all(f"queue {namespace}" in s for s in listener.statuses()[1:])

    # Pings, at least every half of WATCHDOG_USEC, from READY on.
    ready_at = listener.received[ready][0]
    wait_until(lambda: len(listener.pings()) >= 8, 15, what="eight pings")
    pings = [ready_at, *listener.pings()]
    assert max(b - a for a, b in itertools.pairwise(pings)) <= HALF_WATCHDOG_S
    assert listener.index("WATCHDOG") > ready

    # SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1 once the new children run.
    before_reload = len(listener.received) - 1
    sent_at_usec = monotonic_usec()
    process.signal(signal.SIGHUP)
    reloading = listener.wait_for("RELOADING", "1", after=before_reload)
    monotonic = int(listener.messages()[reloading]["MONOTONIC_USEC"])
    assert sent_at_usec <= monotonic <= monotonic_usec()
    ready_again = listener.wait_for("READY", "1", after=reloading)
    assert len(process.events("child_ready")) == 4  # two new children ran before READY=1
    wait_until(lambda: len(process.child_pids()) == 2, 20, what="the old children to leave")

    # Every child stuck: the pings stop, and come back when the children do.
    stuck = process.child_pids()
    for pid in stuck:
        os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(
            lambda: time.monotonic() - max(listener.pings()) > 3 * HALF_WATCHDOG_S,
            20,
            what="the pings to stop",
        )
        withheld = process.events("watchdog_withheld")
        assert withheld and set(withheld[-1]["silent_children"]) <= stuck  # the first to go
        wait_until(lambda: any("2 silent" in s for s in listener.statuses()), 10)
    finally:
        for pid in stuck:
            os.kill(pid, signal.SIGCONT)
    resumed_at = time.monotonic()
    wait_until(lambda: listener.pings(since=resumed_at), 15, what="the pings to resume")
    assert process.events("watchdog_resumed")

    # SIGTERM: STOPPING=1, and a clean exit.
    before_stop = len(listener.received) - 1
    process.signal(signal.SIGTERM)
    stopping = listener.wait_for("STOPPING", "1", after=before_stop)
    assert process.wait(20) == 0
    assert ready < reloading < ready_again < stopping
    client.close()


def test_an_abstract_socket_hears_a_refused_reload_and_a_drain_that_waits_for_a_task(
    namespace: str, tmp_path: Path, daemon: Callable[..., Any], listen: Callable[[str], Listener]
) -> None:
    listener = listen("abstract")
    config, client = client_for(
        "sqlite", namespace, tmp_path, worker={"poll_interval": 0.2, "shutdown_timeout": 20}
    )
    process = daemon(config, "--concurrency", "1", NOTIFY_SOCKET=listener.address)
    ready = listener.wait_for("READY", "1")

    # A configuration that does not load: the old one stays, and READY=1 says so at once.
    good = config.read_text()
    config.write_text(yaml.safe_dump({**yaml.safe_load(good), "worker": {"concurency": 2}}))
    process.signal(signal.SIGHUP)
    reloading = listener.wait_for("RELOADING", "1", after=ready)
    listener.wait_for("READY", "1", after=reloading)
    wait_until(lambda: any("reload failed" in s for s in listener.statuses()), 10)
    config.write_text(good)

    result = client.send("sleep", 2.0)
    wait_until(lambda: (s := result.state()) and s.state is State.STARTED, 15)
    process.signal(signal.SIGTERM)
    stopping = listener.wait_for("STOPPING", "1", after=reloading)
    extend = listener.wait_for("EXTEND_TIMEOUT_USEC", after=stopping)
    extend_usec = int(listener.messages()[extend]["EXTEND_TIMEOUT_USEC"])
    assert 0 < extend_usec <= (20 + 5) * 1_000_000  # up to the KILL deadline, plus a margin
    assert process.wait(25) == 0
    assert result.get(timeout=5) == 2.0  # the running task finished
    assert listener.index("WATCHDOG") is None  # no WATCHDOG_USEC, no pings
    client.close()


def test_without_notify_socket_nothing_is_sent(
    namespace: str, tmp_path: Path, daemon: Callable[..., Any], listen: Callable[[str], Listener]
) -> None:
    listener = listen("path")
    config, client = client_for("sqlite", namespace, tmp_path)
    process = daemon(config, "--concurrency", "1", WATCHDOG_USEC=str(WATCHDOG_USEC))
    process.wait_ready(1)
    assert client.send("count", 1).get(timeout=10) == 1
    process.signal(signal.SIGTERM)
    assert process.wait(20) == 0
    assert listener.received == []
    assert not process.events("systemd_notify")
    assert not process.events("watchdog_withheld")
    client.close()


def test_an_unreachable_broker_shows_in_the_status(
    namespace: str, tmp_path: Path, daemon: Callable[..., Any], listen: Callable[[str], Listener]
) -> None:
    """A daemon that cannot reach its broker does not look hung: systemd's status says so,
    with how long, and READY=1 waits for the broker."""
    listener = listen("path")
    results = f"sqlite://{tmp_path}/{namespace}-results.db"
    config, client = client_for(
        "sqlite", namespace, tmp_path, broker="redis://127.0.0.1:1/0", result_backend=results
    )
    daemon(config, "--concurrency", "1", NOTIFY_SOCKET=listener.address)
    wait_until(
        lambda: any("broker unreachable for" in status for status in listener.statuses()),
        20,
        what="a STATUS naming the broker outage",
    )
    assert listener.index("READY", "1") is None
    client.close()
