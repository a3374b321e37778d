"""A real ``taskd start`` on SQS (the test run's moto server): machinery's messages, long
ETAs, long tasks and bad input. Workflows, retries and countdowns on SQS (standard and
FIFO) are in test_workflows.py, kill -9 in test_reliability.py. Results go to SQLite."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from taskd.brokers.sqs.queues import endpoint_of
from taskd.client import signature
from taskd.config import Config
from taskd.wire import GoTime, State, new_id
from tests.support.harness import (
    Daemon,
    assert_poison_set_aside,
    client_for,
    go_message,
    wait_until,
)
from tests.support.tasks import runs


def queue_url_base(url: str) -> str:
    """Where the queues of the broker URL ``url`` live: machinery's broker + "/" + queue."""
    return endpoint_of(url, Config()).base


def test_messages_from_a_go_producer_run(
    sqs_namespace: str, sqs_server: str, raw: Any, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    """Sent as machinery does: SendMessage with the JSON body, DelaySeconds for an ETA."""
    namespace = sqs_namespace
    config, client = client_for("sqs", namespace, tmp_path)
    process = daemon(config, "--concurrency", "1")
    process.wait_ready(1)
    base = queue_url_base(sqs_server)
    url = raw.create_queue(QueueName=namespace)["QueueUrl"]
    assert url == f"{base}/{namespace}"  # machinery's queue URL: broker + "/" + queue
    now_id, later_id = new_id(), new_id()
    int_args = '[{"Name":"","Type":"int64","Value":1},{"Name":"","Type":"int64","Value":1}]'
    raw.send_message(
        QueueUrl=url, MessageBody=go_message(now_id, "add", int_args, namespace).decode()
    )
    trace = tmp_path / "trace"
    sent_at = time.time()
    eta = GoTime(time.time_ns() + 2 * 10**9)
    path_arg = json.dumps([{"Name": "", "Type": "string", "Value": str(trace)}])
    body = go_message(later_id, "stamp", path_arg, namespace, f'"{eta}"')
    raw.send_message(QueueUrl=url, MessageBody=body.decode(), DelaySeconds=2)

    assert client.result(now_id).get(timeout=20) == 2
    assert client.result(later_id).wait(20).state is State.SUCCESS
    (ran_at,) = (float(stamp) for stamp in runs(trace))
    assert ran_at >= sent_at + 2
    assert process.process.poll() is None
    client.close()


def test_an_eta_beyond_the_longest_delay_stays_pending_then_runs_once(
    sqs_namespace: str, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    """SQS delays at most 15 minutes (here shortened to 1 s): an ETA past that is delayed
    again hop by hop, pending meanwhile, and runs once, when due."""
    config, client = client_for("sqs", sqs_namespace, tmp_path, sqs={"max_delay_seconds": 1})
    process = daemon(config, "--concurrency", "2")
    process.wait_ready(2)
    trace = tmp_path / "trace"
    eta_s = time.time() + 5
    sent = client.send(signature("stamp", str(trace), eta=GoTime.from_unix(eta_s)))
    wait_until(lambda: time.time() > eta_s - 1.5, 10)  # several hops have passed
    assert sent.state().state is State.PENDING and runs(trace) == []
    assert sent.wait(30).state is State.SUCCESS
    (ran_at,) = (float(stamp) for stamp in runs(trace))
    assert ran_at >= eta_s - 0.05  # not before the ETA (50 ms: the early tolerance)
    client.close()


def test_a_task_longer_than_the_visibility_timeout_runs_once(
    sqs_namespace: str, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    """A 3-minute task with a 30 s visibility timeout, shortened: 8 s against 2 s. The
    visibility is extended while it runs, so the other, idle, child never gets it."""
    config, client = client_for(
        "sqs", sqs_namespace, tmp_path,
        sqs={"receive_visibility_timeout": 2}, worker={"heartbeat_interval": 0.5},
    )  # fmt: skip
    process = daemon(config, "--concurrency", "2")
    process.wait_ready(2)
    trace = tmp_path / "trace"
    sent = client.send("slow_record", str(trace), "long", 8.0)
    assert sent.wait(40).state is State.SUCCESS
    assert runs(trace) == ["start:long", "end:long"]
    assert not process.events("visibility_lost")
    client.close()


def test_poison_is_set_aside_with_its_reason_and_the_next_task_runs(
    sqs_namespace: str, sqs_server: str, raw: Any, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    namespace = sqs_namespace
    config, client = client_for("sqs", namespace, tmp_path)
    process = daemon(config, "--concurrency", "1")
    process.wait_ready(1)
    unknown = client.send("no_such_task")
    base = queue_url_base(sqs_server)
    raw.send_message(QueueUrl=f"{base}/{namespace}", MessageBody="{not json at all")
    after = client.send("sum", [1, 2, 3])

    assert_poison_set_aside(tmp_path, config, client, unknown, after, namespace)
    assert process.process.poll() is None
    client.close()
