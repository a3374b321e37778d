"""Retry timing, pure: machinery's Fibonacci backoff plus optional jitter and a cap."""

from __future__ import annotations

import random


def fibonacci_next(previous_s: int) -> int:
    """The first Fibonacci number above ``previous_s``: 0 -> 1, 1 -> 2, 3 -> 5, 4 -> 5, 8 -> 13.

    machinery's FibonacciNext: starting from RetryTimeout=0 the delays are 1, 2, 3, 5, 8...
    """
    low, high = 1, 2
    if previous_s < 1:
        return 1
    while high <= previous_s:
        low, high = high, low + high
    return high


def with_jitter(
    delay_s: float, jitter: float, max_delay_s: float, rand: random.Random | None = None
) -> float:
    """``delay_s`` spread by up to ``jitter`` (a fraction) either way, then capped."""
    if jitter > 0:
        delay_s *= 1 + (rand or random).uniform(-jitter, jitter)
    if max_delay_s > 0:
        delay_s = min(delay_s, max_delay_s)
    return max(delay_s, 0.0)
