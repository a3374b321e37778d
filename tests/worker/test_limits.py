"""Time limits and child recycling in a real ``taskd start``, on each broker/backend pair.

Hard limits: the supervisor stops the child, records FAILURE (or RETRY) ``time limit
exceeded`` and kills it; the message comes back and is settled from that record, never run
again. Soft limits: SoftTimeLimitExceeded inside the task. Recycling: a child leaves after
``worker.max_tasks_per_child`` tasks or ``worker.max_memory_per_child`` MiB, handing back what
it prefetched, and a fresh one takes its place.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from taskd.client import Client, signature
from taskd.wire import Signature, State
from tests.support.harness import (
    Daemon,
    client_for,
    run_cli,
    running,
    wait_until,
    write_config,
)
from tests.support.tasks import runs

# Redelivery of a killed child's message within a beat of its death.
QUICK = {"heartbeat_interval": 0.5}
LIMIT_S = 1  # whole seconds: pika cannot put a float in an AMQP header


def limited(sig: Signature, **headers: Any) -> Signature:
    return sig.with_changes(headers={**(sig.headers or {}), **headers})


def settled(client: Client, namespace: str) -> bool:
    """Nothing left in the queue: ready, delayed or held."""
    holding = client.broker.holding(namespace)
    return client.broker.size(namespace) == 0 and not holding.in_flight and not holding.orphaned


def killed_for_time_limit(process: Daemon) -> list[dict[str, Any]]:
    return process.events("task_time_limit_exceeded")


@pytest.mark.timeout(90)
def test_a_task_past_its_hard_limit_fails_at_once_and_never_runs_again(
    driver_kind: str, namespace: str, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    config, client = client_for(driver_kind, namespace, tmp_path, worker=QUICK)
    process = daemon(config, "--concurrency", "1")
    process.wait_ready(1)
    trace, errors = tmp_path / "trace", tmp_path / "errors"
    on_error = signature("collect_error", str(errors))
    sig = signature("slow_record", str(trace), "t0", 60.0, on_error=[on_error])
    (sent,) = client.publish([limited(sig, time_limit=LIMIT_S)])
    wait_until(lambda: "start:t0" in runs(trace), 15, what="the task to start")
    (first_child,) = process.child_pids()
    started = time.monotonic()
    state = client.result(sent.uuid).wait(30)
    took_s = time.monotonic() - started
    assert (state.state, state.error) == (State.FAILURE, "time limit exceeded")
    assert took_s < 10, took_s  # about LIMIT_S; a sleep of 60 s was cut short
    (killed,) = killed_for_time_limit(process)
    assert (killed["task_id"], killed["child_pid"]) == (sent.uuid, first_child)
    # Its child was killed and replaced, and the message it held, settled without a rerun.
    wait_until(lambda: process.events("task_already_finished"), 20, what="the redelivery")
    wait_until(lambda: settled(client, namespace), 10, what="the queue to empty")
    exited = [e for e in process.events("child_exited") if e["child_pid"] == first_child]
    assert exited and exited[0]["signal"] == "SIGKILL", process.log()
    assert first_child not in process.child_pids() and len(process.child_pids()) == 1
    wait_until(lambda: runs(errors), 20, what="the error callback")
    assert [json.loads(line) for line in errors.read_text().splitlines()] == ["time limit exceeded"]
    assert client.send("count", 1, 2, 3).get(timeout=20) == 3  # the next tasks run
    assert runs(trace) == ["start:t0"]  # ran once, was never redelivered to run again
    assert client.result(sent.uuid).state().state is State.FAILURE  # type: ignore[union-attr]
    assert process.process.poll() is None
    client.close()


@pytest.mark.timeout(90)
def test_a_hard_limit_spends_retries_then_fails(
    driver_kind: str, namespace: str, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    """The limit from worker.time_limit, on a task deaf to every signal it can block."""
    config, client = client_for(
        driver_kind, namespace, tmp_path, worker={**QUICK, "time_limit": LIMIT_S}
    )
    process = daemon(config, "--concurrency", "2")
    process.wait_ready(2)
    trace = tmp_path / "trace"
    result = client.send("stubborn", str(trace), 60.0, retry_count=1)
    wait_until(lambda: (s := result.state()) and s.state is State.RETRY, 20, what="RETRY")
    state = result.wait(45)
    assert (state.state, state.error) == (State.FAILURE, "time limit exceeded")
    assert runs(trace) == ["start", "start"]  # the first run and its one retry, no more
    assert len(killed_for_time_limit(process)) == 2
    wait_until(lambda: settled(client, namespace), 20, what="the queue to empty")
    assert runs(trace) == ["start", "start"]
    client.close()


@pytest.mark.timeout(60)
def test_the_header_beats_the_decorator_and_the_soft_limit_can_be_caught(
    driver_kind: str, namespace: str, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    """Also in an ``async def`` task, where the limit reaches it at its await (raised by
    SIGALRM in the event loop's own code, it could not be caught)."""
    config, client = client_for(
        driver_kind, namespace, tmp_path, worker={**QUICK, "soft_time_limit": 0.5}
    )
    process = daemon(config, "--concurrency", "2")
    process.wait_ready(2)
    caught, uncaught, decorated = tmp_path / "caught", tmp_path / "uncaught", tmp_path / "dec"
    soft = client.send("soft_limited", str(caught), 30.0)  # soft limit from the config
    fails = client.send(
        limited(signature("slow_record", str(uncaught), "u", 30.0), soft_time_limit="0.3")
    )
    lifted = client.send(
        limited(signature("limited_by_decorator", str(decorated), 1.5), time_limit=0)
    )
    assert soft.get(timeout=20) == "cut short"
    assert runs(caught) == ["start", "cleaned_up"]
    state = fails.wait(20)
    assert (state.state, state.error) == (State.FAILURE, "soft time limit exceeded")
    assert lifted.wait(20).state is State.SUCCESS  # time_limit 0 in the header: no limit
    assert runs(decorated) == ["start", "end"]
    async_caught, async_uncaught = tmp_path / "async_caught", tmp_path / "async_uncaught"
    soft = client.send("async_soft_limited", str(async_caught), 30.0, True)
    fails = client.send("async_soft_limited", str(async_uncaught), 30.0, False)
    assert soft.get(timeout=20) == "cut short"
    assert runs(async_caught) == ["start", "cleaned_up"]
    state = fails.wait(20)
    assert (state.state, state.error) == (State.FAILURE, "soft time limit exceeded")
    assert runs(async_uncaught) == ["start", "cleaned_up"]
    quick = client.send("async_soft_limited", str(tmp_path / "quick"), 0.01, True)
    assert quick.get(timeout=20) == "slept"  # the same children go on with the next
    assert not killed_for_time_limit(process)
    client.close()


@pytest.mark.timeout(60)
def test_a_bad_time_limit_header_fails_the_task_with_why(
    driver_kind: str, namespace: str, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    config, client = client_for(driver_kind, namespace, tmp_path)
    process = daemon(config, "--concurrency", "1")
    process.wait_ready(1)
    trace = tmp_path / "trace"
    bad = client.send(limited(signature("record", str(trace), "x"), time_limit="soon"))
    state = bad.wait(20)
    assert state.state is State.FAILURE
    assert state.error == (
        "header 'time_limit' must be a number of seconds, 0 or more (0: none), got 'soon'"
    )
    assert runs(trace) == []
    client.close()


@pytest.mark.timeout(120)
def test_children_are_recycled_after_max_tasks_and_every_task_runs_once(
    driver_kind: str, namespace: str, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    config, client = client_for(
        driver_kind, namespace, tmp_path, worker={"max_tasks_per_child": 10}
    )
    process = daemon(config, "--concurrency", "2")
    process.wait_ready(2)
    trace = tmp_path / "trace"
    sigs = [signature("record", str(trace), f"t{i}") for i in range(100)]
    results = [client.result(sig.uuid) for sig in client.publish(sigs)]
    for result in results:
        assert result.wait(60).state is State.SUCCESS
    assert Counter(runs(trace)) == Counter(f"t{i}" for i in range(100))  # each exactly once

    def recycled() -> list[dict[str, Any]]:
        return [e for e in process.events("child_exited") if e.get("reason") == "recycled"]

    # 100 tasks, 10 a child: 9 or 10 children left (the ones alive at the end ran the rest).
    wait_until(lambda: len(recycled()) >= 9, 20, what="the children to be recycled")
    leaving = process.events("child_recycling")
    assert {e["tasks_run"] for e in leaving} == {10}
    assert {e["reason"] for e in leaving} == {"max_tasks_per_child"}
    assert not [e for e in process.events("child_exited") if e.get("reason") != "recycled"]
    assert not process.events("child_respawn_delayed")  # not crashes
    wait_until(lambda: len(process.child_pids()) == 2, 20, what="two fresh children")
    wait_until(lambda: settled(client, namespace), 10, what="every message acked")
    assert Counter(runs(trace)) == Counter(f"t{i}" for i in range(100))
    client.close()


@pytest.mark.timeout(90)
def test_a_child_over_max_memory_is_recycled_after_its_task(
    driver_kind: str, namespace: str, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    config, client = client_for(
        driver_kind, namespace, tmp_path, worker={"max_memory_per_child": 250}
    )
    process = daemon(config, "--concurrency", "1")
    process.wait_ready(1)
    trace = tmp_path / "trace"
    before = [client.send("record", str(trace), f"a{i}") for i in range(3)]
    for result in before:
        assert result.wait(20).state is State.SUCCESS
    assert not process.events("child_recycling")  # a child's own size is far below
    (first_child,) = process.child_pids()
    assert client.send("hold_memory", 300).get(timeout=30) == 300
    wait_until(lambda: process.events("child_recycling"), 20, what="the recycling")
    (leaving,) = process.events("child_recycling")
    assert leaving["reason"] == "max_memory_per_child" and leaving["resident_mib"] >= 250
    after = [client.send("record", str(trace), f"b{i}") for i in range(3)]
    for result in after:
        assert result.wait(30).state is State.SUCCESS
    (exited,) = process.events("child_exited")
    assert (exited["child_pid"], exited["reason"]) == (first_child, "recycled")
    assert first_child not in process.child_pids()
    assert sorted(runs(trace)) == ["a0", "a1", "a2", "b0", "b1", "b2"]
    client.close()


@pytest.mark.parametrize(
    ("worker", "message"),
    [
        ({"time_limit": -1}, "worker.time_limit: must be at least 0"),
        ({"soft_time_limit": "long"}, "worker.soft_time_limit: must be a number"),
        ({"max_tasks_per_child": 2.5}, "worker.max_tasks_per_child: must be a whole number"),
        ({"max_memory_per_child": "1GiB"}, "worker.max_memory_per_child: must be a whole number"),
    ],
)
def test_bad_limits_in_the_config_exit_2(
    tmp_path: Path, worker: dict[str, Any], message: str
) -> None:
    path = write_config(tmp_path, {"worker": worker}, "bad.yml")
    done = run_cli(tmp_path, "taskd", "check-config", "-c", str(path))
    assert (done.returncode, message in done.stderr) == (2, True), done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.timeout(60)
def test_a_task_killed_at_its_hard_limit_takes_the_processes_it_started_with_it(
    namespace: str, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    """They lived on as orphans (a converter a task ran kept its CPU for good)."""
    config, client = client_for("sqlite", namespace, tmp_path, worker=QUICK)
    process = daemon(config, "--concurrency", "1")
    process.wait_ready(1)
    pids_file = tmp_path / "pids"
    (sent,) = client.publish(
        [limited(signature("spawns_and_sleeps", str(pids_file), 60.0), time_limit=LIMIT_S)]
    )
    helpers = [int(pid) for pid in wait_until(lambda: runs(pids_file), 15, what="its processes")]
    assert len(helpers) == 2
    assert client.result(sent.uuid).wait(30).state is State.FAILURE
    wait_until(lambda: not any(running(pid) for pid in helpers), 10, what="its processes gone")
    client.close()
