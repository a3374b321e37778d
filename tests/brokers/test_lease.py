"""Consumer liveness helpers, pure."""

from __future__ import annotations

import pytest

from taskd.brokers import lease


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
