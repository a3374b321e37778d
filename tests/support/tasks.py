"""Tasks for tests: they leave traces in files so a test can count runs across processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from taskd import Retry, SoftTimeLimitExceeded, TaskContext, task


def _append(path: str, line: str) -> None:
    # O_APPEND writes of one short line are atomic, so concurrent children never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def runs(path: str | Path) -> list[str]:
    """The tokens recorded in a trace file, one per run."""
    try:
        return Path(path).read_text().split()
    except FileNotFoundError:
        return []


def lines(path: str | Path) -> list[Any]:
    """The JSON values recorded in a trace file, one per line (what callbacks were given)."""
    try:
        return [json.loads(line) for line in Path(path).read_text().splitlines()]
    except FileNotFoundError:
        return []


@task
def record(path: str, token: str) -> str:
    """Note one run of ``token``."""
    _append(path, token)
    return token


@task
def slow_record(path: str, token: str, seconds: float) -> str:
    """Note the start of a run (and, in ``path``.pids, which process ran it), work for
    ``seconds``, note the end."""
    _append(f"{path}.pids", f"{token}:{os.getpid()}")
    _append(path, f"start:{token}")
    time.sleep(seconds)
    _append(path, f"end:{token}")
    return token


@task
def flaky_traced(path: str, failures: int) -> int:
    """Fail the first ``failures`` runs, then succeed with the number of runs."""
    _append(path, f"{time.time():.6f}")
    count = len(runs(path))
    if count <= failures:
        raise RuntimeError(f"failure {count} of {failures}")
    return count


@task
def always_retry(path: str) -> None:
    """Ask to run again, forever (RetryCount must end it)."""
    _append(path, f"{time.time():.6f}")
    raise Retry(0.1, "not yet")


@task
def attempt(ctx: TaskContext) -> int:
    """The attempt number the task sees."""
    return ctx.attempt


@task
def noop() -> None:
    """Nothing, fast: for throughput."""


@task
def stamp(path: str) -> None:
    """Note when it ran (Unix seconds)."""
    _append(path, f"{time.time():.6f}")


@task
def stamp_token(path: str, token: str) -> None:
    """Note which task ran and when (``token@<Unix seconds>``)."""
    _append(path, f"{token}@{time.time():.6f}")


@task
def total_once(path: str, *numbers: int) -> int:
    """Sum its arguments, noting each run (a chord callback must run exactly once)."""
    _append(path, str(sum(numbers)))
    return sum(numbers)


@task
def collect(path: str, *values: object) -> None:
    """Note the arguments it got, as JSON (what a callback was given)."""
    _append(path, json.dumps(list(values)))


@task
def collect_error(error: str, path: str) -> None:
    """An OnError callback: the error comes first."""
    _append(path, json.dumps(error))


@task
def sized_record(path: str, size: int) -> str:
    """Note that it ran; return ``size`` characters (a result the backend may refuse)."""
    _append(path, "sized")
    return "x" * size


@task
def count(*values: object) -> int:
    """How many arguments it got (a chord callback that takes any results)."""
    return len(values)


@task
def crash(path: str) -> None:
    """Kill the process running it, as a segfault or the OOM killer would."""
    _append(path, "crashing")
    os.kill(os.getpid(), signal.SIGKILL)


@task
def soft_limited(path: str, seconds: float) -> str:
    """Sleep, unless the soft time limit comes first: then clean up and return all the same."""
    _append(path, "start")
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        _append(path, "cleaned_up")
        return "cut short"
    return "slept"


@task
async def async_soft_limited(path: str, seconds: float, catch: bool) -> str:
    """soft_limited as an ``async def`` task: the limit reaches it at its await."""
    _append(path, "start")
    try:
        await asyncio.sleep(seconds)
    except SoftTimeLimitExceeded:
        _append(path, "cleaned_up")
        if not catch:
            raise
        async with asyncio.timeout(5):  # asyncio's own timeouts still work in the clean-up
            await asyncio.sleep(0)
        return "cut short"
    return "slept"


@task
def stubborn(path: str, seconds: float) -> None:
    """Note a run, then sleep deaf to every signal it can block (as C code that never returns
    to Python would be): only a kill stops it."""
    _append(path, "start")
    signal.pthread_sigmask(signal.SIG_BLOCK, set(signal.Signals) - {signal.SIGKILL, signal.SIGSTOP})
    time.sleep(seconds)
    _append(path, "end")


@task(time_limit=1, soft_time_limit=0)
def limited_by_decorator(path: str, seconds: float) -> None:
    """Note a run, then sleep past the time limit its decorator sets."""
    _append(path, "start")
    time.sleep(seconds)
    _append(path, "end")


_HELD: list[bytes] = []  # kept for the life of the process, as a leak would be


@task
def hold_memory(mib: int) -> int:
    """Keep ``mib`` MiB resident in the process that runs it."""
    _HELD.append(b"\x01" * (mib * 1024 * 1024))  # written, so resident (not lazily zero)
    return mib


_KEPT: list[Any] = []


@task
def take_stderr(path: str) -> int:
    """Close fd 2, then open a file, which takes its number (the lowest free), and keep it."""
    os.close(2)
    kept = open(path, "w")  # noqa: SIM115 (kept open for the life of the process)
    _KEPT.append(kept)
    return kept.fileno()


@task
def own_sigterm_handler() -> str:
    """Installs a SIGTERM handler of its own and leaves it (as some libraries' setup does)."""
    signal.signal(signal.SIGTERM, lambda *_: None)
    return "installed"


@task
def pools_terminated(times: int) -> int:
    """Multiprocessing pools of forked workers, each ended with terminate() while its workers
    wait for work: multiprocessing ends them with SIGTERM."""
    import multiprocessing

    for _ in range(times):
        pool = multiprocessing.get_context("fork").Pool(2)
        pool.terminate()
        pool.join()
    return times


@task
def spawns_and_sleeps(path: str, seconds: float) -> None:
    """Starts two processes of its own (one in a session of its own), writes their pids to
    ``path``, then sleeps: a task whose work runs in subprocesses."""
    import subprocess

    helpers = [
        subprocess.Popen(["sleep", "300"]),
        subprocess.Popen(["sleep", "300"], start_new_session=True),
    ]
    _append(path, " ".join(str(helper.pid) for helper in helpers))
    time.sleep(seconds)


@task
def forks_and_returns(path: str) -> str:
    """Forks, and the copy returns as the task too (a task's bug); it writes its pid first."""
    if os.fork() == 0:
        _append(path, str(os.getpid()))
    return "done"


@task
def leaves_an_alarm(seconds: int) -> str:
    """Sets an alarm and returns without cancelling it (a signal-based timeout's bug)."""
    signal.alarm(seconds)
    return "set"


_LEAKED: list[int] = []


@task
def leaks_descriptors(left_free: int) -> int:
    """Leaves its process ``left_free`` file descriptors short of its limit (lowered first to
    a little above what it has open, so the test stays small), as a task that never closes
    what it opens would in time; how many it opened."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    opened_now = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (opened_now + 64, hard))
    while len(os.listdir("/proc/self/fd")) < opened_now + 64 - left_free:
        _LEAKED.append(os.open(os.devnull, os.O_RDONLY))
    return len(_LEAKED)
