"""RabbitMQ's server-wide limits, lowered here (so pytest runs these tests alone):

- ``max_message_size`` (128 MiB by default on 3.x): RabbitMQ closes the channel over a
  larger message. That refusal is for good, for that message: a worker sets aside what sends
  it instead of retrying it for ever, and the tasks it would have sent are FAILURE, saying
  why.
- ``consumer_timeout`` (30 minutes by default): a delivery unacked for longer has its channel
  closed and goes to another consumer, while its task still runs. That one sends it again for
  later instead of running it beside the first.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from taskd import chain
from taskd.client import signature
from taskd.errors import SendError, TaskFailed
from tests.support.harness import Daemon, wait_until
from tests.support.tasks import runs
from tests.worker.test_amqp import amqp_client, rabbit_setting

pytestmark = pytest.mark.alone

LIMIT = 65_536  # bytes; RabbitMQ's channels opened while it is lowered keep it


def test_a_callback_too_large_for_rabbitmq_fails_instead_of_holding_the_worker(
    amqp_namespace: str, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    """A task's result passed to its callback makes a message RabbitMQ refuses: the child
    waited on it as an outage for ever (broker_still_unavailable, no other task ran, the
    chain PENDING). Now its message is set aside with the reason, the callback is FAILURE
    saying why, and the worker goes on."""
    config, client = amqp_client(amqp_namespace, tmp_path, worker={"prefetch": 1})
    trace = tmp_path / "trace"
    with rabbit_setting("max_message_size", LIMIT):
        process = daemon(config, "--concurrency", "1")
        process.wait_ready(1)
        sent = client.send_chain(
            chain(signature("sized_record", str(trace), 2 * LIMIT), signature("count"))
        )
        with pytest.raises(TaskFailed) as failed:
            sent.get(timeout=30)
        assert "larger than configured max size" in failed.value.error
        assert "not sent" in failed.value.error
        assert runs(trace) == ["sized"]
        refused = process.events("followups_refused")
        assert len(refused) == 1 and "RabbitMQ refused the message" in refused[0]["error"]
        assert not process.events("broker_unavailable")
        (letter,) = wait_until(lambda: client.broker.dead_letters(amqp_namespace, 5), 20)
        assert letter.reason.startswith("what it sets off was refused: ")
        # The worker goes on, on a channel of its own again.
        assert client.send("record", str(trace), "next").get(timeout=20) == "next"
        # A client's send of such a message fails at once, saying why.
        with pytest.raises(SendError, match="RabbitMQ refused the message"):
            client.send("record", str(trace), "x" * 2 * LIMIT)
            client.flush()
    assert process.process.poll() is None
    client.close()


def test_a_task_rabbitmq_delivers_again_while_it_runs_runs_once(
    amqp_namespace: str, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    """Past RabbitMQ's consumer_timeout the running task's message went to the other child,
    which ran it too, beside the first, and nothing was logged. Now the timeout is logged,
    the other child sends the message again for later while the workers board shows the
    task running, and the copy that comes back after it ended is settled from its state."""
    config, client = amqp_client(
        amqp_namespace, tmp_path, worker={"heartbeat_interval": 1.0, "consumer_timeout": 4}
    )
    trace = tmp_path / "trace"
    # RabbitMQ looks for timed-out deliveries every channel_tick_interval (ms); the running
    # task is on the workers board a beat or two after it starts, well before 5 s.
    with rabbit_setting("channel_tick_interval", 500), rabbit_setting("consumer_timeout", 5000):
        process = daemon(config, "--concurrency", "2")
        process.wait_ready(2)
        sent = client.send("slow_record", str(trace), "long", 12.0)
        assert sent.get(timeout=60) == "long"
        assert process.events("amqp_delivery_timed_out")
        assert process.events("task_left_to_peer")
        wait_until(lambda: process.events("task_already_finished"), 20, 0.1, "the copy settled")
    assert runs(trace) == ["start:long", "end:long"]
    assert process.process.poll() is None
    client.close()
