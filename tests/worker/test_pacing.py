"""Which tasks count as quick, and how many messages a child takes per fetch."""

from __future__ import annotations

from taskd.worker.pacing import AUTO_PREFETCH, Pacing


def _ran(pacing: Pacing, seconds: float, times: int = 1, name: str = "t") -> None:
    for _ in range(times):
        pacing.ran(name, seconds)


def test_a_task_never_seen_is_not_quick_and_one_quick_run_makes_it_quick() -> None:
    pacing = Pacing(0)
    assert not pacing.is_quick("t")
    _ran(pacing, 0.0001)
    assert pacing.is_quick("t")
    assert not pacing.is_quick("other")


def test_a_quick_task_stays_quick_through_runs_slowed_by_a_busy_machine() -> None:
    pacing = Pacing(0)
    _ran(pacing, 0.0002, times=10)
    _ran(pacing, 0.007, times=2)  # waited for a CPU, twice in a row
    assert pacing.is_quick("t")
    assert pacing.batch_size() == AUTO_PREFETCH


def test_a_task_that_became_slow_stops_counting_as_quick_within_a_few_runs() -> None:
    pacing = Pacing(0)
    _ran(pacing, 0.0001, times=10)
    _ran(pacing, 0.010, times=3)
    assert not pacing.is_quick("t")
    _ran(pacing, 0.0001, times=10, name="u")
    _ran(pacing, 1.0, times=2, name="u")
    assert not pacing.is_quick("u")
    assert pacing.batch_size() == 1  # one message per fetch while tasks take time


def test_batching_resumes_soon_after_a_long_task() -> None:
    pacing = Pacing(0)
    _ran(pacing, 3600.0)  # counts as one second at most
    assert pacing.batch_size() == 1
    _ran(pacing, 0.0001, times=4, name="quick")
    assert pacing.batch_size() == AUTO_PREFETCH


def test_a_fixed_prefetch_is_kept_whatever_the_tasks_take() -> None:
    pacing = Pacing(5)
    _ran(pacing, 2.0)
    assert pacing.batch_size() == 5
    assert not pacing.auto
