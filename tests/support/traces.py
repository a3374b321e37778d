"""Reading what slow_record writes: which tasks started and ended, and where, so crash
tests can tell a task that ran twice from one that was lost."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from taskd.client import AsyncResult, Client, signature
from tests.support.harness import wait_until
from tests.support.tasks import runs


def send_slow(client: Client, trace: Path, count: int, seconds: float) -> list[AsyncResult]:
    sigs = [signature("slow_record", str(trace), f"t{i}", seconds) for i in range(count)]
    return [client.result(sig.uuid) for sig in client.publish(sigs)]


def in_flight(trace: Path) -> set[str]:
    """Tokens started and not ended, per the trace."""
    counts = Counter(runs(trace))
    tokens = {entry.split(":", 1)[1] for entry in counts}
    return {t for t in tokens if counts[f"start:{t}"] > counts[f"end:{t}"]}


def assert_each_ran_once_except(trace: Path, tokens: int, allowed_twice: set[str]) -> None:
    counts = Counter(runs(trace))
    for i in range(tokens):
        token = f"t{i}"
        assert counts[f"end:{token}"] >= 1, f"{token} never finished"
        starts = counts[f"start:{token}"]
        assert starts == 1 or (starts == 2 and token in allowed_twice), (token, starts)


def next_start(trace: Path) -> tuple[str, int]:
    """Wait for a task to start after this call; its token and the pid of the child running it."""
    seen = len(runs(trace))

    def started() -> str | None:
        fresh = [line for line in runs(trace)[seen:] if line.startswith("start:")]
        return fresh[0].split(":", 1)[1] if fresh else None

    token = wait_until(started, 30, 0.005, "a task to start")
    pids = dict(line.rsplit(":", 1) for line in runs(f"{trace}.pids"))
    return token, int(pids[token])


def ended(trace: Path) -> int:
    return sum(line.startswith("end:") for line in runs(trace))
