"""Consumer leases: the pure helpers, and the drivers that keep leases themselves."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import pytest

from taskd.brokers import Broker, lease, open_broker
from tests.conftest import kind_with_server
from tests.support.harness import wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(lease.time, "time", fake)
    return fake


def test_a_consumer_judges_others_only_after_a_timeouts_worth_of_beats(clock: Clock) -> None:
    judge = lease.SilenceJudge(timeout_s=10, interval_s=2)
    assert not judge.may_judge()
    for _ in range(5):
        judge.beat_succeeded()
        clock.now += 2
    assert judge.may_judge()  # 10 s in touch, no gap


def test_a_gap_in_its_own_beats_resets_the_count(clock: Clock) -> None:
    judge = lease.SilenceJudge(timeout_s=10, interval_s=2)
    for _ in range(6):
        judge.beat_succeeded()
        clock.now += 2
    assert judge.may_judge()
    clock.now += 30  # an outage, a suspend, a long pause: everyone looks silent now
    for _ in range(5):
        judge.beat_succeeded()
        assert not judge.may_judge()  # counting again from the end of the gap
        clock.now += 2
    judge.beat_succeeded()
    assert judge.may_judge()


def test_consumer_ids_say_where_they_ran() -> None:
    here = lease.new_consumer_id()
    assert here.startswith(lease.MACHINE + ":")
    assert not lease.gone_here(here)  # this very process
    dead_pid = f"{lease.MACHINE}:999999999:abcd"
    assert lease.gone_here(dead_pid)
    assert not lease.gone_here("other-host/boot/1:999999999:abcd")  # can't tell: wait for silence


# -- drivers that keep leases themselves (SQLite, Redis), through the Broker interface -------

FAST_LIVENESS = {"worker": {"heartbeat_interval": 0.2, "consumer_timeout": 1.5}}
TIMEOUT_S = 1.5


@pytest.fixture(params=["sqlite", "redis"])
def driver_kind(request: pytest.FixtureRequest) -> str:
    """Only the drivers that keep leases themselves."""
    return kind_with_server(request)


@pytest.fixture
def open_driver(drivers: Callable[..., Any]) -> Callable[[], Broker]:
    return lambda: drivers(open_broker, **FAST_LIVENESS)


def die_elsewhere_holding(open_consumer: Callable[[], Broker], queue: str) -> None:
    """Fork a consumer that poses as one on another machine, takes a message and dies: its
    death can only be told from its silence."""
    pid = os.fork()
    if pid == 0:
        try:
            lease.MACHINE = "elsewhere/1"
            taken = open_consumer().fetch(queue, max_messages=1, wait_s=2)
            os._exit(0 if taken else 3)
        except BaseException:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_silent_consumer_elsewhere_loses_its_messages_after_the_timeout(
    open_driver: Callable[[], Broker], namespace: str
) -> None:
    producer = open_driver()
    producer.publish(namespace, b"survivor")
    taken_at = time.monotonic()
    die_elsewhere_holding(open_driver, namespace)
    assert producer.size(namespace) == 0  # the dead consumer holds it
    survivor = open_driver()
    delivered = wait_until(lambda: survivor.fetch(namespace, max_messages=1, wait_s=0.2), 15)
    assert [d.body for d in delivered] == [b"survivor"]
    assert delivered[0].deliveries == 2
    assert time.monotonic() - taken_at >= TIMEOUT_S  # its silence, not a dead pid here


def test_a_consumer_just_in_touch_does_not_reclaim_by_silence(
    open_driver: Callable[[], Broker], namespace: str
) -> None:
    """After an outage every last beat is old, a live consumer's too. A consumer that has
    just (re)gained touch must not take a silent consumer's messages until it has itself
    been in touch for consumer_timeout; then it may."""
    producer = open_driver()
    producer.publish(namespace, b"held")
    die_elsewhere_holding(open_driver, namespace)
    died_at = time.monotonic()
    wait_until(lambda: time.monotonic() - died_at > 2 * TIMEOUT_S, 10, what="a long silence")
    judge = open_driver()
    in_touch_from = time.monotonic()  # its first beat comes with its first fetch, after this
    while time.monotonic() < in_touch_from + TIMEOUT_S - 0.2:
        assert judge.fetch(namespace, max_messages=1, wait_s=0.1) == []
    delivered = wait_until(lambda: judge.fetch(namespace, max_messages=1, wait_s=0.2), 15)
    assert [d.body for d in delivered] == [b"held"]
