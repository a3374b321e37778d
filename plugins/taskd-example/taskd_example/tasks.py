"""machinery's example tasks (same names and semantics), plus ``sum``, ``sleep``, ``fail``,
``flaky`` and ``retry_forever`` for demos and tests.

machinery's example producers send ``add``, ``multiply``, ``sum_ints``, ``sum_floats``,
``concat``, ``split``, ``panic_task`` and ``long_running_task``; with this plugin installed
they run unchanged against taskd.
"""

from __future__ import annotations

import math
import time

import structlog

from taskd import Retry, TaskContext, task

log = structlog.get_logger("taskd_example")


@task
def add(*numbers: int) -> int:
    """Sum of any number of int64 arguments."""
    return sum(numbers)


@task
def multiply(*numbers: int) -> int:
    """Product of any number of int64 arguments (1 for none)."""
    return math.prod(numbers)


@task
def sum_ints(numbers: list[int]) -> int:
    return sum(numbers)


@task
def sum_floats(numbers: list[float]) -> float:
    return math.fsum(numbers)


@task
def concat(strings: list[str]) -> str:
    return "".join(strings)


@task
def split(text: str) -> list[str]:
    """The characters of a string, as Go's strings.Split(s, "")."""
    return list(text)


@task
def panic_task() -> str:
    raise RuntimeError("oops")


@task
def long_running_task() -> None:
    """Counts down ten seconds, logging each, as machinery's example does."""
    log.info("long_running_task_started")
    for remaining in range(10, 0, -1):
        log.info("long_running_task_tick", remaining_s=remaining)
        time.sleep(1)
    log.info("long_running_task_finished")


@task(name="sum")
def sum_numbers(numbers: list[int]) -> int:
    """Sum of a []int64 (the task used in taskd's docs)."""
    return sum(numbers)


@task
def sleep(seconds: float) -> float:
    """Sleep for some seconds and return how long it slept."""
    time.sleep(seconds)
    return seconds


@task
def fail(message: str) -> None:
    """Always fail, with the given message as the error."""
    raise RuntimeError(message)


@task
def flaky(ctx: TaskContext, failures: int) -> int:
    """Fail the first ``failures`` attempts, then return the attempt number (a retry demo:
    ``taskctl send flaky --arg int64:2 --retry-count 3 --wait 30`` prints 3)."""
    if ctx.attempt <= failures:
        raise RuntimeError(f"attempt {ctx.attempt} of {failures + 1} fails on purpose")
    return ctx.attempt


@task
def retry_forever(countdown_s: float) -> None:
    """Ask to run again after ``countdown_s``, forever: RetryCount is what ends it."""
    raise Retry(countdown_s, "asked to run again")
