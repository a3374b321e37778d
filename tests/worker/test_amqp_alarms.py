"""RabbitMQ's resource alarms (low on memory or on disk): RabbitMQ stops reading every
connection that publishes until the alarm clears, while consumers go on. taskd says so as
it happens, names the alarm in the errors it causes, and loses nothing. An alarm holds up
every publisher on the server: pytest runs these tests alone."""

from __future__ import annotations

import contextlib
import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from taskd.client import signature
from taskd.errors import BrokerUnavailable, SendError
from tests.support.harness import Daemon, client_for, wait_until
from tests.support.tasks import runs
from tests.worker.test_amqp import amqp_client, rabbitmqctl

pytestmark = pytest.mark.alone


def alarm_on() -> bool:
    return rabbitmqctl("eval", "rabbit_alarm:get_alarms().").strip() != "[]"


@contextlib.contextmanager
def memory_alarm() -> Iterator[None]:
    """RabbitMQ in a memory alarm (its watermark at 1 byte); its watermark put back after."""
    was = rabbitmqctl("eval", "vm_memory_monitor:get_vm_memory_high_watermark().").strip()
    absolute = re.fullmatch(r"\{absolute,(\d+)\}", was)
    relative = re.fullmatch(r"\d*\.\d+", was)
    # Put back as it was; RabbitMQ's default where the form is not understood.
    restore = ["absolute", absolute.group(1)] if absolute else [was if relative else "0.4"]
    rabbitmqctl("set_vm_memory_high_watermark", "absolute", "1")
    try:
        wait_until(alarm_on, 10, 0.1, "RabbitMQ's memory alarm")
        yield
    finally:
        rabbitmqctl("set_vm_memory_high_watermark", *restore)
        wait_until(lambda: not alarm_on(), 10, 0.1, "the alarm to clear")


@pytest.mark.parametrize("results", ["sqlite", "amqp"])
def test_workers_wait_out_a_resource_alarm_and_say_why(
    results: str, amqp_namespace: str, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    """Tasks whose callbacks (results in SQLite) or states (results in RabbitMQ) cannot be
    published wait, logged at once with RabbitMQ's reason; once the alarm clears, each task
    and callback runs once."""
    if results == "amqp":  # machinery's AMQP result backend
        config, client = client_for("amqp", amqp_namespace, tmp_path)
    else:
        config, client = amqp_client(amqp_namespace, tmp_path)
    trace = tmp_path / "trace"
    then = [signature("record", str(trace), f"c{i}") for i in range(20)]
    client.publish(
        [
            signature("record", str(trace), f"t{i}", immutable=True, on_success=[then[i]])
            for i in range(20)
        ]
    )
    client.flush()
    with memory_alarm():
        process = daemon(config, "--concurrency", "2")
        process.wait_ready(2)
        wait_until(lambda: process.events("amqp_blocked"), 20, 0.1, "the block to be logged")
        assert {event["reason"] for event in process.events("amqp_blocked")} == {"low on memory"}
        assert not [token for token in runs(trace) if token.startswith("c")]  # none went out
    everything = {f"{kind}{i}" for kind in "tc" for i in range(20)}
    wait_until(lambda: set(runs(trace)) == everything, 30, 0.1, "every task and callback")
    assert Counter(runs(trace)).most_common(1)[0][1] == 1  # none ran twice
    wait_until(lambda: process.events("amqp_unblocked"), 10, 0.1, "the end of the block logged")
    assert process.process.poll() is None
    client.close()


def test_a_send_rabbitmq_keeps_blocked_fails_naming_the_alarm(
    amqp_namespace: str, tmp_path: Path
) -> None:
    """A send RabbitMQ does not read for the whole of pika's blocked_connection_timeout (60 s;
    2 s here) fails, and the error says why, instead of only "no publisher confirm"."""
    _config, client = amqp_client(amqp_namespace, tmp_path, client={"send_patience": 0})
    broker = client.broker
    broker._sender._parameters.blocked_connection_timeout = 2  # type: ignore[attr-defined]
    broker._confirm_timeout_s = 2  # type: ignore[attr-defined]
    client.send("noop")  # the queue is declared and the sender connected before the alarm
    client.flush()
    with memory_alarm(), pytest.raises((BrokerUnavailable, SendError)) as caught:
        client.send("noop")
        client.flush()
    assert "RabbitMQ has blocked this connection" in str(caught.value)
    assert "low on memory" in str(caught.value)
    client.close()
