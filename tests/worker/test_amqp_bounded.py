"""A bounded RabbitMQ queue (``x-max-length`` with ``x-overflow: reject-publish``, in
``amqp.queue_declare_args``): RabbitMQ nacks what does not fit. What a task sets off waits
for room a while, then its message is set aside instead of holding the worker for good."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from taskd.client import Client, signature
from taskd.worker.outages import ROOM_PATIENCE_S
from tests.support.harness import Daemon, amqp_connection, run_cli, taskctl, wait_until
from tests.support.tasks import runs
from tests.worker.test_amqp import amqp_client

# One message fits; one child taking one at a time, so only the test can make room.
BOUNDED = {
    "amqp": {"queue_declare_args": {"x-max-length": 1, "x-overflow": "reject-publish"}},
    "worker": {"prefetch": 1},
}


def nacked(process: Daemon) -> list[dict[str, Any]]:
    return [e for e in process.events("broker_unavailable") if "RabbitMQ nacked" in e["error"]]


def full_while_a_task_runs(
    namespace: str, tmp_path: Path, daemon: Callable[..., Daemon]
) -> tuple[Path, Client, Daemon, Path]:
    """A task with a callback running, and its queue filled meanwhile by another task; the
    callback, published once the task ends, is nacked."""
    config, client = amqp_client(namespace, tmp_path, **BOUNDED)
    process = daemon(config, "--concurrency", "1")
    process.wait_ready(1)
    trace = tmp_path / "trace"
    callback = signature("record", str(trace), "c0")
    task = signature("slow_record", str(trace), "t0", 0.5, immutable=True, on_success=[callback])
    client.send(task)
    wait_until(lambda: "start:t0" in runs(trace), 20, 0.01, "the task to start")
    client.send("record", str(trace), "f0")
    client.flush()  # the queue is full until the child, now busy, takes f0
    wait_until(lambda: nacked(process), 20, 0.05, "the callback refused for now")
    return config, client, process, trace


def test_a_callback_waits_for_room_in_a_full_bounded_queue(
    amqp_namespace: str, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    config, client, process, trace = full_while_a_task_runs(amqp_namespace, tmp_path, daemon)
    with amqp_connection() as connection:  # another consumer takes f0: room for one
        method, _properties, body = connection.channel().basic_get(amqp_namespace, auto_ack=True)
    assert method is not None and b'"f0"' in body
    wait_until(lambda: "c0" in runs(trace), 20, 0.05, "the callback to run")
    assert runs(trace) == ["start:t0", "end:t0", "c0"]
    assert not process.events("followups_refused")
    dead = taskctl(tmp_path, config, "queue", "dead")
    assert dead.returncode == 0 and "no dead letters" in dead.stderr, dead
    assert process.process.poll() is None
    client.close()


def test_a_queue_that_stays_full_gets_the_task_set_aside_not_a_stuck_worker(
    amqp_namespace: str, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    """Nobody else drains the queue: after ROOM_PATIENCE_S the task's message is set aside
    (its SUCCESS stands), and the worker goes on to f0; requeued, the task runs again and its
    callback goes out."""
    config, client, process, trace = full_while_a_task_runs(amqp_namespace, tmp_path, daemon)
    wait_until(
        lambda: process.events("followups_refused"), ROOM_PATIENCE_S + 20, 0.1, "the set-aside"
    )
    assert "RabbitMQ nacked" in process.events("followups_refused")[0]["error"]
    wait_until(lambda: "f0" in runs(trace), 20, 0.05, "the worker to go on")
    dead = taskctl(tmp_path, config, "queue", "dead")
    assert "what it sets off was refused" in dead.stdout, dead.stdout
    assert "c0" not in runs(trace)
    requeued = taskctl(tmp_path, config, "queue", "dead", "--requeue", "--all")
    assert requeued.returncode == 0, requeued.stderr
    wait_until(lambda: "c0" in runs(trace), 20, 0.05, "the callback, once requeued")
    assert runs(trace) == ["start:t0", "end:t0", "f0", "start:t0", "end:t0", "c0"]
    assert process.process.poll() is None
    client.close()


@pytest.mark.parametrize(
    ("overflow", "risk"),
    [
        ({}, "a full queue drops its oldest tasks without a word"),
        ({"x-overflow": "reject-publish"}, "a delayed task (ETA, countdown, retry)"),
        ({"x-overflow": "reject-publish-dlx"}, "a delayed task (ETA, countdown, retry)"),
    ],
)
def test_check_config_says_how_a_bounded_queue_loses_tasks(
    overflow: dict[str, str], risk: str, amqp_namespace: str, tmp_path: Path
) -> None:
    bounds = {"queue_declare_args": {"x-max-length-bytes": 10_000_000, **overflow}}
    config, client = amqp_client(amqp_namespace, tmp_path, amqp=bounds)
    client.close()
    done = run_cli(tmp_path, "taskd", "check-config", "-c", str(config))
    assert done.returncode == 0, done.stderr
    warned = [json.loads(line) for line in done.stderr.splitlines() if "amqp_queue_bounded" in line]
    assert len(warned) == 1 and warned[0]["key"] == "amqp.queue_declare_args", done.stderr
    assert risk in warned[0]["risk"]


def test_an_unbounded_queue_gets_no_warning(amqp_namespace: str, tmp_path: Path) -> None:
    config, client = amqp_client(amqp_namespace, tmp_path)
    client.close()
    done = run_cli(tmp_path, "taskd", "check-config", "-c", str(config))
    assert done.returncode == 0 and "amqp_queue_bounded" not in done.stderr, done.stderr
