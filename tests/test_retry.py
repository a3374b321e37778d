"""Retry timing: machinery's FibonacciNext, jitter and the cap."""

from __future__ import annotations

import random

import pytest

from taskd.retry import fibonacci_next, with_jitter


@pytest.mark.parametrize(
    ("previous", "expected"),
    [
        # machinery's own test cases (v2/retry/fibonacci_test.go)
        (0, 1),
        (1, 2),
        (3, 5),
        (4, 5),
        (5, 8),
        (8, 13),
        # and around them
        (-5, 1),
        (2, 3),
        (6, 8),
        (7, 8),
        (10, 13),
        (12, 13),
        (13, 21),
        (20, 21),
        (21, 34),
        (832040, 1346269),
    ],
)
def test_fibonacci_next(previous: int, expected: int) -> None:
    assert fibonacci_next(previous) == expected


def test_fibonacci_sequence_from_zero() -> None:
    delays, current = [], 0
    for _ in range(10):
        current = fibonacci_next(current)
        delays.append(current)
    assert delays == [1, 2, 3, 5, 8, 13, 21, 34, 55, 89]


class _FixedUniform:
    """A stand-in for random.Random whose uniform() returns one end of the range."""

    def __init__(self, end: str) -> None:
        self.end = end
        self.calls: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.calls.append((a, b))
        return a if self.end == "low" else b


def test_no_jitter_no_cap_is_the_delay() -> None:
    rand = _FixedUniform("low")
    assert with_jitter(8.0, 0.0, 0.0, rand) == 8.0  # type: ignore[arg-type]
    assert rand.calls == []


@pytest.mark.parametrize(("end", "expected"), [("low", 8.0), ("high", 12.0)])
def test_jitter_bounds(end: str, expected: float) -> None:
    rand = _FixedUniform(end)
    assert with_jitter(10.0, 0.2, 0.0, rand) == pytest.approx(expected)  # type: ignore[arg-type]
    assert rand.calls == [(-0.2, 0.2)]


def test_jitter_stays_within_bounds_with_a_real_generator() -> None:
    rand = random.Random(1234)
    values = [with_jitter(10.0, 0.25, 0.0, rand) for _ in range(500)]
    assert all(7.5 <= value <= 12.5 for value in values)
    assert min(values) < 9.0  # spread both ways, not a constant
    assert max(values) > 11.0


def test_jitter_uses_the_module_generator_by_default() -> None:
    values = {with_jitter(10.0, 0.5, 0.0) for _ in range(50)}
    assert all(5.0 <= value <= 15.0 for value in values)
    assert len(values) > 1


@pytest.mark.parametrize(
    ("delay", "cap", "expected"),
    [(13.0, 5.0, 5.0), (3.0, 5.0, 3.0), (5.0, 5.0, 5.0), (100.0, 0.0, 100.0)],
)
def test_cap(delay: float, cap: float, expected: float) -> None:
    assert with_jitter(delay, 0.0, cap) == expected


def test_cap_applies_after_jitter() -> None:
    assert with_jitter(10.0, 0.5, 11.0, _FixedUniform("high")) == 11.0  # type: ignore[arg-type]
    assert with_jitter(10.0, 0.5, 11.0, _FixedUniform("low")) == 5.0  # type: ignore[arg-type]


def test_never_negative() -> None:
    assert with_jitter(10.0, 2.0, 0.0, _FixedUniform("low")) == 0.0  # type: ignore[arg-type]
    assert with_jitter(-1.0, 0.0, 0.0) == 0.0
