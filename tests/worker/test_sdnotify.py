"""The notify protocol on its own: addresses, the watchdog variables, and never failing."""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskd.worker.sdnotify import Notifier, monotonic_usec


@pytest.fixture
def abstract() -> Iterator[tuple[str, socket.socket]]:
    name = f"taskd-test-{secrets.token_hex(4)}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(5)
    yield "@" + name, sock
    sock.close()


def test_one_datagram_of_assignments_reaches_an_abstract_socket(
    abstract: tuple[str, socket.socket],
) -> None:
    address, sock = abstract
    notifier = Notifier(address)
    assert notifier.enabled
    assert notifier.send("READY=1", "STATUS=2/2 children up")
    assert sock.recv(4096) == b"READY=1\nSTATUS=2/2 children up"
    notifier.close()


def test_a_path_socket_too(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        notifier = Notifier(path)
        assert notifier.send("WATCHDOG=1")
        assert sock.recv(4096) == b"WATCHDOG=1"
        notifier.close()


def test_the_variables_are_read_once_and_removed() -> None:
    environ = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
    notifier = Notifier.from_environ(environ)
    assert environ == {}  # children and task programs cannot speak for the supervisor
    assert notifier.address == "@x"
    assert notifier.watchdog_timeout_s == 4.0


@pytest.mark.parametrize(
    "variables",
    [
        {"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"},  # another process's watchdog
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "soon"},
        {},
    ],
)
def test_no_watchdog_unless_it_is_ours(variables: dict[str, str]) -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": "@x", **variables})
    assert notifier.watchdog_timeout_s is None


def test_without_notify_socket_nothing_is_opened_or_sent() -> None:
    notifier = Notifier.from_environ({"WATCHDOG_USEC": "4000000"})
    assert not notifier.enabled
    assert notifier.watchdog_timeout_s is None
    assert not notifier.send("READY=1")
    assert notifier._socket is None


def test_an_unsupported_address_or_a_missing_listener_is_no_error(tmp_path: Path) -> None:
    assert not Notifier("vsock:2:1234").enabled
    gone = Notifier(str(tmp_path / "nobody-listens"))
    assert not gone.send("READY=1")
    assert not gone.send("WATCHDOG=1")  # and again, without raising
    gone.close()


def test_monotonic_usec_is_clock_monotonic() -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert before <= monotonic_usec() < before + 1_000_000
