"""Sends that ride out a broker or backend they cannot connect to (``client.send_patience``),
on real servers: each driver says when nothing was sent, and a send made during a restart
goes out once, when the server is back."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from taskd.client import Client
from taskd.config import load_config
from taskd.errors import BackendUnavailable, BrokerUnavailable, DriverError
from taskd.wire import State, decode_signature
from tests.brokers.test_amqp_pipeline import drain
from tests.support import harness
from tests.support.harness import PrivateRedis, config_data, free_port, wait_until, write_config
from tests.support.relay import Relay


def _client(tmp_path: Path, data: dict[str, Any], patience_s: float) -> Client:
    data = {**data, "client": {"send_patience": patience_s, "pipeline": 0}}
    return Client(load_config(write_config(tmp_path, data), env={}))


def _send_in_background(client: Client) -> tuple[threading.Thread, list[Any]]:
    outcome: list[Any] = []

    def send() -> None:
        try:
            outcome.append(client.send("add", 2, 3))
        except DriverError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=send)
    thread.start()
    return thread, outcome


def _outage_seen(logs: list[dict[str, Any]], event: str) -> bool:
    return any(entry["event"] == event for entry in logs)


def test_a_send_during_a_redis_restart_goes_out_once_when_redis_is_back(
    private_redis: PrivateRedis, tmp_path: Path
) -> None:
    import redis

    data = {"broker": private_redis.url, "result_backend": private_redis.url, "default_queue": "q"}
    client = _client(tmp_path, data, 60)
    private_redis.stop()
    with capture_logs() as logs:
        thread, outcome = _send_in_background(client)
        wait_until(lambda: _outage_seen(logs, "broker_unavailable"), 20, what="a failed try")
        assert thread.is_alive()  # trying again, not failed
        private_redis.start()
        thread.join(timeout=60)
    (sent,) = outcome
    assert not isinstance(sent, Exception), sent
    assert _outage_seen(logs, "broker_recovered")
    server = redis.Redis.from_url(private_redis.url)
    assert [decode_signature(raw).uuid for raw in server.lrange("q", 0, -1)] == [sent.task_id]
    state = client.backend.get_state(sent.task_id)
    assert state is not None and state.state is State.PENDING
    client.close()
    server.close()


def test_a_send_while_rabbitmq_cannot_be_reached_goes_out_once_when_it_can(
    amqp_namespace: str, redis_namespace: str, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there yet: connections are refused
    data = config_data("amqp", amqp_namespace, tmp_path)
    data |= {
        "broker": harness.AMQP_URL.replace("5672", str(port)),
        "result_backend": harness.REDIS_URL,
        "redis": {"key_prefix": f"{redis_namespace}:"},
    }
    client = _client(tmp_path, data, 60)
    with capture_logs() as logs:
        thread, outcome = _send_in_background(client)
        wait_until(lambda: _outage_seen(logs, "broker_unavailable"), 20, what="a failed try")
        assert thread.is_alive()
        relay = Relay(port)  # RabbitMQ reachable on that port from now on
        thread.join(timeout=60)
    try:
        (sent,) = outcome
        assert not isinstance(sent, Exception), sent
        bodies = drain(data["default_queue"])
        assert [decode_signature(body).uuid for body in bodies] == [sent.task_id]
    finally:
        client.close()
        relay.close()


def _unreachable(kind: str, tmp_path: Path, namespace: str) -> dict[str, Any]:
    dead = free_port()
    if kind == "redis":
        return config_data("redis", namespace, tmp_path) | {
            "broker": f"redis://127.0.0.1:{dead}/0",
            "result_backend": f"redis://127.0.0.1:{dead}/0",
        }
    if kind == "amqp":
        return config_data("amqp", namespace, tmp_path) | {
            "broker": harness.AMQP_URL.replace("5672", str(dead)),
            "result_backend": harness.REDIS_URL,
        }
    assert kind == "sqs"
    return config_data("sqs", namespace, tmp_path) | {
        "broker": f"sqs://127.0.0.1:{dead}/{harness.SQS_ACCOUNT}",
        "result_backend": harness.REDIS_URL,
    }


@pytest.mark.parametrize("kind", ["redis", "amqp", "sqs"])
def test_a_broker_nobody_listens_for_is_tried_for_the_patience_then_raised_as_unsent(
    kind: str, tmp_path: Path, namespace: str, request: pytest.FixtureRequest
) -> None:
    if kind == "sqs":
        request.getfixturevalue("sqs_server")  # its dummy AWS credentials
    client = _client(tmp_path, _unreachable(kind, tmp_path, namespace), 0.5)
    with capture_logs() as logs, pytest.raises(BrokerUnavailable) as caught:
        client.send("add", 2, 3)
    assert caught.value.unsent, caught.value
    assert [entry["event"] for entry in logs] == ["broker_unavailable"]  # once per outage
    impatient = _client(tmp_path, _unreachable(kind, tmp_path, namespace), 0)
    with capture_logs() as logs, pytest.raises(BrokerUnavailable):
        impatient.send("add", 2, 3)
    assert logs == []  # raised at once: no outage ridden out, nothing to log


def test_a_backend_that_cannot_take_the_pending_state_holds_the_message_back(
    tmp_path: Path, namespace: str
) -> None:
    """The PENDING state goes first: while it cannot be written, nothing is published (so
    the send may be made again), and the send gives up after its patience."""
    database = f"sqlite://{tmp_path}/{namespace}.db"
    data = {
        "broker": database,
        "result_backend": f"redis://127.0.0.1:{free_port()}/0",
        "default_queue": "q",
    }
    client = _client(tmp_path, data, 0.5)
    with pytest.raises(BackendUnavailable) as caught:
        client.send("add", 2, 3)
    assert caught.value.unsent
    assert client.broker.size("q") == 0
    client.close()


def test_a_send_on_a_connection_gone_silent_is_made_on_a_new_one(
    redis_namespace: str, tmp_path: Path
) -> None:
    """A kept connection the network has silently dropped (half-open: no close ever comes)
    is PINGed once idle past redis.max_idle_timeout; a PING with no answer sent nothing, so
    the send goes out on a new connection instead of failing."""
    import redis

    relay = Relay(upstream=("127.0.0.1", 6379))
    url = f"redis://127.0.0.1:{relay.port}/0"
    data = config_data("redis", redis_namespace, tmp_path, default_queue=f"{redis_namespace}:q")
    data |= {"broker": url, "result_backend": url}
    # Replies waited for 5.1 s at most (the broker's longest block, 0.1 s, and 5 s).
    data["redis"] |= {"max_idle_timeout": 1, "read_timeout": 1, "write_timeout": 1}
    data["worker"] = {"poll_interval": 0.1}
    client = _client(tmp_path, data, 30)
    try:
        first = client.send("add", 1, 2)  # connected; the connection is kept for the next
        used_at = time.monotonic()
        relay.silence()
        wait_until(lambda: time.monotonic() - used_at > 1.2, 5, what="the connection to idle")
        second = client.send("add", 3, 4)
        server = redis.Redis.from_url(harness.REDIS_URL)
        queued = server.lrange(f"{redis_namespace}:q", 0, -1)
        assert [decode_signature(raw).uuid for raw in queued] == [first.task_id, second.task_id]
    finally:
        client.close()
        relay.close()
