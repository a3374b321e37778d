"""The AMQP broker's pipelined publishes (``begin_publish``) on a real RabbitMQ: sent at once,
confirmed later, in order, and no refused or unconfirmed one taken for sent."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from taskd.brokers import Broker, Message, open_broker
from taskd.brokers.amqp.pipeline import Pipeline
from taskd.client import Client
from taskd.config import load_config
from taskd.errors import BrokerError, BrokerFull, BrokerUnavailable
from taskd.wire import GoTime, State, decode_signature
from tests.support.harness import (
    AMQP_URL,
    REDIS_URL,
    amqp_connection,
    config_data,
    wait_until,
    write_config,
)
from tests.support.relay import Relay


@pytest.fixture
def open_amqp(amqp_namespace: str, driver_opener: Callable[..., Any]) -> Callable[..., Broker]:
    return lambda **overrides: driver_opener(open_broker, "amqp", **overrides)


def drain(queue: str) -> list[bytes]:
    """Every message of ``queue``, in order, taken from it by a plain pika connection."""
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = connection.channel()
        bodies = []
        while True:
            method, _properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return bodies
            bodies.append(body)
    finally:
        connection.close()


def test_publishes_confirmed_later_all_arrive_in_order(
    open_amqp: Callable[..., Broker], amqp_namespace: str
) -> None:
    broker = open_amqp()
    bodies = [f"m{n}".encode() for n in range(200)]
    confirms = [broker.begin_publish([Message(amqp_namespace, body)]) for body in bodies]
    for confirm in confirms:
        confirm()
    batch = [Message(amqp_namespace, b"b1"), Message(amqp_namespace, b"b2")]
    broker.begin_publish(batch)()
    assert drain(amqp_namespace) == [*bodies, b"b1", b"b2"]


def test_an_unroutable_message_is_refused_and_those_around_it_confirmed(
    open_amqp: Callable[..., Broker], amqp_namespace: str
) -> None:
    # A headers exchange routes only messages with the header its binding asks for.
    broker = open_amqp(
        amqp={"exchange_type": "headers", "queue_binding_args": {"x-match": "all", "to": "q"}}
    )
    routed = {"to": "q"}
    confirms = [
        broker.begin_publish([Message(amqp_namespace, b"before", headers=routed)]),
        broker.begin_publish([Message(amqp_namespace, b"lost")]),
        broker.begin_publish([Message(amqp_namespace, b"after", headers=routed)]),
    ]
    confirms[0]()
    with pytest.raises(BrokerError, match=f"queue '{amqp_namespace}': unroutable: 312 NO_ROUTE"):
        confirms[1]()
    confirms[2]()
    assert drain(amqp_namespace) == [b"before", b"after"]


def test_a_queue_deleted_after_its_publisher_declared_it_is_declared_again(
    open_amqp: Callable[..., Broker], amqp_namespace: str
) -> None:
    """A long-lived producer whose queue was deleted (an operator's delete, a policy's
    expiry) had every later send returned unroutable until it restarted. The returned
    message is published once more, its queue declared anew: pipelined or not, nothing is
    lost and nothing is queued twice."""
    broker = open_amqp()
    broker.begin_publish([Message(amqp_namespace, b"first")])()
    broker.publish_many([Message(amqp_namespace, b"second")])
    assert drain(amqp_namespace) == [b"first", b"second"]
    for send in (
        lambda body: broker.begin_publish([Message(amqp_namespace, body)])(),
        lambda body: broker.publish_many([Message(amqp_namespace, body)]),
    ):
        with amqp_connection() as connection:
            connection.channel().queue_delete(amqp_namespace)
        send(b"after the delete")
        send(b"and the next")
        assert drain(amqp_namespace) == [b"after the delete", b"and the next"]


def test_a_nacked_message_is_refused_for_now(
    open_amqp: Callable[..., Broker], amqp_namespace: str
) -> None:
    """A nack (here: a queue full under reject-publish) is BrokerFull, pipelined or not: the
    queue may take the message later."""
    broker = open_amqp(
        amqp={"queue_declare_args": {"x-max-length": 1, "x-overflow": "reject-publish"}}
    )
    first = broker.begin_publish([Message(amqp_namespace, b"kept")])
    second = broker.begin_publish([Message(amqp_namespace, b"over the limit")])
    first()
    with pytest.raises(BrokerFull, match=f"queue '{amqp_namespace}': RabbitMQ nacked"):
        second()
    with pytest.raises(BrokerFull, match="a queue full under x-overflow: reject-publish"):
        broker.publish_many([Message(amqp_namespace, b"over the limit too")])
    assert drain(amqp_namespace) == [b"kept"]


def test_a_delayed_message_is_confirmed_at_once(
    open_amqp: Callable[..., Broker], amqp_namespace: str
) -> None:
    broker = open_amqp()
    eta = GoTime(GoTime.now().unix_ns + 60 * 10**9)
    confirm = broker.begin_publish([Message(amqp_namespace, b"later", eta)])
    confirm()  # nothing left to wait for
    assert broker.delayed(amqp_namespace) == 1


def test_a_publish_whose_channel_rabbitmq_closes_is_unavailable_then_sent_again(
    open_amqp: Callable[..., Broker], amqp_namespace: str
) -> None:
    import pika

    broker = open_amqp()
    broker.begin_publish([Message(amqp_namespace, b"first")])()
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    connection.channel().exchange_delete(amqp_namespace)  # publishing to it closes the channel
    connection.close()
    confirm = broker.begin_publish([Message(amqp_namespace, b"lost")])
    with pytest.raises(BrokerUnavailable, match="NOT_FOUND"):
        confirm()
    broker.begin_publish([Message(amqp_namespace, b"again")])()  # the exchange declared again
    assert drain(amqp_namespace) == [b"first", b"again"]


BASIC_ACK = b"\x00\x3c\x00\x50"  # an AMQP method frame's class 60 (basic), method 80 (ack)


@pytest.fixture
def relay() -> Iterator[Relay]:
    relay = Relay()
    yield relay
    relay.close()


def test_publishes_unconfirmed_when_the_connection_is_lost_are_unavailable(
    open_amqp: Callable[..., Broker], amqp_namespace: str, relay: Relay
) -> None:
    broker = open_amqp(broker=relay.url)
    broker.begin_publish([Message(amqp_namespace, b"confirmed")])()
    relay.silence()  # the next confirms never reach the broker driver
    confirms = [broker.begin_publish([Message(amqp_namespace, b"unconfirmed")]) for _ in range(5)]
    relay.cut()
    for confirm in confirms:
        with pytest.raises(BrokerUnavailable, match="closed before RabbitMQ confirmed"):
            confirm()
    broker.begin_publish([Message(amqp_namespace, b"again")])()  # on a new connection
    got = drain(amqp_namespace)
    assert got[0] == b"confirmed"
    assert got[-1] == b"again"


def test_a_confirm_that_came_before_the_connection_was_lost_counts(
    open_amqp: Callable[..., Broker], amqp_namespace: str, relay: Relay
) -> None:
    broker = open_amqp(broker=relay.url)
    broker.begin_publish([Message(amqp_namespace, b"first")])()  # connected, channel open
    confirm = broker.begin_publish([Message(amqp_namespace, b"confirmed")])
    # Its confirm reaches the driver's socket and waits there. Wait for that frame itself
    # (a heartbeat RabbitMQ sends meanwhile would pass on bytes too): the second ack, since
    # the relay notes a frame once passed on, which may be after the driver read the first.
    wait_until(lambda: relay.answers.count(BASIC_ACK) >= 2, what="the publisher confirm")
    relay.cut()
    confirm()
    assert drain(amqp_namespace) == [b"first", b"confirmed"]


def test_a_confirm_from_a_silent_rabbitmq_is_not_awaited_for_ever(
    open_amqp: Callable[..., Broker], amqp_namespace: str, relay: Relay
) -> None:
    # Heartbeats every second (half the consumer_timeout): a silent connection is given up
    # within seconds.
    worker = {"heartbeat_interval": 0.2, "consumer_timeout": 2}
    broker = open_amqp(broker=relay.url, worker=worker)
    broker.begin_publish([Message(amqp_namespace, b"confirmed")])()
    relay.silence()
    confirm = broker.begin_publish([Message(amqp_namespace, b"unconfirmed")])
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="closed before RabbitMQ confirmed"):
        confirm()
    assert time.monotonic() - started < 15
    broker.begin_publish([Message(amqp_namespace, b"again")])()  # on a new connection


def test_a_confirm_that_never_comes_is_given_up_in_time(rabbitmq: list[str], relay: Relay) -> None:
    import pika
    import pika.exceptions

    connection = pika.BlockingConnection(pika.URLParameters(relay.url))
    try:
        pipeline = Pipeline(connection, 0.5)
        relay.silence()  # heartbeats too: with the 60 s RabbitMQ proposes, noticed in minutes
        tag = pipeline.publish("", "taskd-t-nowhere", b"x", pika.BasicProperties())
        pipeline.flush()
        with pytest.raises(pika.exceptions.AMQPConnectionError, match=r"within 0\.5 s"):
            pipeline.wait(tag, tag)  # the broker driver drops the connection then
        with pytest.raises(BrokerUnavailable, match=r"no publisher confirm within 0\.5 s"):
            pipeline.refusals(tag, tag, "taskd-t-nowhere")
    finally:
        relay.cut()
        with contextlib.suppress(pika.exceptions.AMQPError):
            connection.close()


def test_pipelined_sends_of_a_client_are_all_queued_once(
    amqp_namespace: str, redis_server: Any, tmp_path: Path
) -> None:
    data = config_data("amqp", amqp_namespace, tmp_path, result_backend=REDIS_URL)
    config = load_config(write_config(tmp_path, data))
    with Client(config, pipeline=64) as client:
        sent = [client.send("noop", n).task_id for n in range(200)]
        assert len(client._window) > 0  # some still await their confirms
        client.flush()
        assert len(client._window) == 0
        states = client.backend.get_states(sent)
    assert [decode_signature(body).uuid for body in drain(amqp_namespace)] == sent
    assert {state.state for state in states} == {State.PENDING}


def test_a_reconnect_refused_after_a_failed_write_does_not_say_nothing_was_sent(
    open_amqp: Callable[..., Broker],
    amqp_namespace: str,
    relay: Relay,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sender tries a call once more on a new connection when its connection fails
    under it; if that connection cannot be had, what the first attempt wrote may be queued,
    so the error must not say the send is safe to repeat (``unsent``)."""
    import taskd.amqplink

    monkeypatch.setattr(taskd.amqplink, "IDLE_CHECK_S", 3600.0)  # no check before the call
    broker = open_amqp(broker=relay.url)
    broker.begin_publish([Message(amqp_namespace, b"first")])()  # connected
    relay.close()  # cut, and no new connection gets through

    def written_then_lost(_session: object) -> None:
        raise ConnectionError("lost after the publish was written")

    sender = broker._sender  # type: ignore[attr-defined]
    with pytest.raises(BrokerUnavailable) as caught:
        sender.call(written_then_lost)
    assert not caught.value.unsent
    with pytest.raises(BrokerUnavailable) as caught:  # nothing to write on: nothing written
        sender.call(written_then_lost)
    assert caught.value.unsent
