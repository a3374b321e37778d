"""How many messages a child takes per fetch, and which tasks count as quick.

With ``worker.prefetch: 0`` (auto) a child takes many messages while its tasks are quick and
one when they take time, so a long task never holds others back from idle children. A task
whose running average is under FAST_TASK_S is quick: it gets no STARTED state (it would be
overwritten before anyone could read it) and shares its writes with its neighbours.
"""

from __future__ import annotations

FAST_TASK_S = 0.002  # a task averaging under this is quick
DURATION_WEIGHT = 0.3  # weight of the newest run in a running average
AUTO_PREFETCH = 32  # messages per fetch while tasks are quick, with worker.prefetch 0
RECENT_CAP_S = 1.0  # one long task moves the child's average by at most this much


class Pacing:
    def __init__(self, prefetch: int) -> None:
        self.prefetch = prefetch  # worker.prefetch; 0: auto
        self._durations: dict[str, float] = {}  # task name -> running average of run time
        self._recent_s = RECENT_CAP_S  # running average of every task's run time (capped)

    @property
    def auto(self) -> bool:
        return not self.prefetch

    def batch_size(self) -> int:
        if self.prefetch:
            return self.prefetch
        return AUTO_PREFETCH if self._recent_s < FAST_TASK_S else 1

    def is_quick(self, task_name: str) -> bool:
        """Known to be quick: a task never seen is not."""
        return self._durations.get(task_name, FAST_TASK_S) < FAST_TASK_S

    def ran(self, task_name: str, seconds: float) -> None:
        average = self._durations.get(task_name)
        self._durations[task_name] = (
            seconds if average is None else average + DURATION_WEIGHT * (seconds - average)
        )
        self._recent_s += DURATION_WEIGHT * (min(seconds, RECENT_CAP_S) - self._recent_s)
