"""How many messages a child takes per fetch, and which tasks count as quick.

With ``worker.prefetch: 0`` (auto) a child takes many messages while its tasks are quick and
one when they take time, so a long task never holds others back from idle children. A task
whose running average is under FAST_TASK_S is quick: it gets no STARTED state (it would be
overwritten before anyone could read it) and shares its writes with its neighbours.

The averages are of logarithms (geometric): run times are measured on the wall clock, and on
a busy machine a 0.1 ms task now and then takes some milliseconds, waiting for a CPU. An
arithmetic average turned such a task "not quick" for a while after one such run, and then
every task of a batch cost extra writes (RECEIVED, STARTED, a hand-back); a geometric one
moves by a factor: one run 35 times the usual moves it about 3 times, a task that has
become slow (10 ms, 1 s) stops counting as quick after two or three runs.
"""

from __future__ import annotations

import math

FAST_TASK_S = 0.002  # a task averaging under this is quick
DURATION_WEIGHT = 0.3  # weight of the newest run in a running average
AUTO_PREFETCH = 64  # messages per fetch while tasks are quick, with worker.prefetch 0
RECENT_CAP_S = 1.0  # a run counts as this long at most...
SHORTEST_S = 1e-6  # ...and this short at least (the log of 0 is not a number)
LOG_FAST = math.log(FAST_TASK_S)


class Pacing:
    def __init__(self, prefetch: int) -> None:
        self.prefetch = prefetch  # worker.prefetch; 0: auto
        self._log_durations: dict[str, float] = {}  # task name -> average log of run time
        self._log_recent = math.log(RECENT_CAP_S)  # average log of every run time (capped)

    @property
    def auto(self) -> bool:
        return not self.prefetch

    def batch_size(self) -> int:
        if self.prefetch:
            return self.prefetch
        return AUTO_PREFETCH if self._log_recent < LOG_FAST else 1

    def is_quick(self, task_name: str) -> bool:
        """Known to be quick: a task never seen is not."""
        return self._log_durations.get(task_name, LOG_FAST) < LOG_FAST

    def ran(self, task_name: str, seconds: float) -> None:
        logged = math.log(min(max(seconds, SHORTEST_S), RECENT_CAP_S))
        average = self._log_durations.get(task_name)
        self._log_durations[task_name] = (
            logged if average is None else average + DURATION_WEIGHT * (logged - average)
        )
        self._log_recent += DURATION_WEIGHT * (logged - self._log_recent)
