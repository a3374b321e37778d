"""When a child that died unasked is replaced: at once, unless children keep dying young."""

from __future__ import annotations

import time

HEALTHY_AFTER_S = 10.0  # a child that lived this long resets the backoff
MAX_DELAY_S = 30.0


class Respawns:
    """A child that dies young is replaced after a delay that doubles with each such death
    (1 s, 2 s... up to MAX_DELAY_S), so a task that kills every child that takes it does
    not turn the supervisor into a fork loop."""

    def __init__(self) -> None:
        self.early_deaths = 0
        self.at = 0.0  # time.monotonic() before which no child is spawned

    def died(self, lived_s: float, *, in_a_task: bool = False) -> float:
        """Note a child that died unasked after ``lived_s``; the delay before its
        replacement is spawned (0: at once). One that died ``in_a_task`` whose message is set
        aside after worker.max_deliveries such deaths (where the broker counts them) is
        replaced at once: a backoff would stall every other task behind a few that crash
        their worker."""
        if in_a_task:
            return 0.0
        if lived_s >= HEALTHY_AFTER_S:
            self.early_deaths = 0
            return 0.0
        self.early_deaths += 1
        delay = min(0.5 * 2 ** min(self.early_deaths, 8), MAX_DELAY_S)
        self.at = time.monotonic() + delay
        return delay

    def due(self) -> bool:
        return time.monotonic() >= self.at

    def wait_s(self, longest_s: float) -> float:
        """How long the supervisor's loop may wait: not past a delayed respawn."""
        left_s = self.at - time.monotonic()
        return min(longest_s, left_s) if left_s > 0 else longest_s
