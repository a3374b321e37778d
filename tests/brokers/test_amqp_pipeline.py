"""The AMQP broker's pipelined publishes (``begin_publish``) on a real RabbitMQ: sent at once,
confirmed later, in order, and no refused or unconfirmed one taken for sent."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from taskd.brokers import Broker, Message, open_broker
from taskd.client import Client
from taskd.config import load_config
from taskd.errors import BrokerError, BrokerUnavailable
from taskd.wire import GoTime, State, decode_signature
from tests.support.harness import AMQP_URL, REDIS_URL, config_data, write_config

RABBITMQ = ("127.0.0.1", 5672)


@pytest.fixture
def open_amqp(
    amqp_namespace: str, make_config: Callable[..., Any]
) -> Iterator[Callable[..., Broker]]:
    opened: list[Broker] = []

    def open_one(**overrides: Any) -> Broker:
        opened.append(open_broker(make_config("amqp", **overrides)))
        return opened[-1]

    yield open_one
    for broker in opened:
        broker.close()


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


def test_a_nacked_message_is_refused(open_amqp: Callable[..., Broker], amqp_namespace: str) -> None:
    broker = open_amqp(
        amqp={"queue_declare_args": {"x-max-length": 1, "x-overflow": "reject-publish"}}
    )
    first = broker.begin_publish([Message(amqp_namespace, b"kept")])
    second = broker.begin_publish([Message(amqp_namespace, b"over the limit")])
    first()
    with pytest.raises(BrokerError, match=f"queue '{amqp_namespace}': RabbitMQ nacked"):
        second()
    assert drain(amqp_namespace) == [b"kept"]


def test_a_delayed_message_is_confirmed_at_once(
    open_amqp: Callable[..., Broker], amqp_namespace: str
) -> None:
    broker = open_amqp()
    eta = GoTime(GoTime.now().unix_ns + 60 * 10**9)
    confirm = broker.begin_publish([Message(amqp_namespace, b"later", eta)])
    confirm()  # nothing left to wait for
    assert broker.delayed(amqp_namespace) == 1


class Relay:
    """A TCP relay to RabbitMQ that can hold back RabbitMQ's answers and cut its
    connections, as a network failure would."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = AMQP_URL.replace("5672", str(self._server.getsockname()[1]))
        self.holding = threading.Event()  # what RabbitMQ sends is dropped meanwhile
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(RABBITMQ)
            self._sockets += [client, upstream]
            for source, sink, answers in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(
                    target=self._pump, args=(source, sink, answers), daemon=True
                ).start()

    def _pump(self, source: socket.socket, sink: socket.socket, answers: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if not (answers and self.holding.is_set()):
                    sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Drop every connection made so far; later ones pass again."""
        for end in self._sockets:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()
        self._sockets.clear()
        self.holding.clear()

    def close(self) -> None:
        self._server.close()
        self.cut()


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
    relay.holding.set()  # the next confirms never reach the broker driver
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
    confirm = broker.begin_publish([Message(amqp_namespace, b"confirmed")])
    time.sleep(0.5)  # its confirm arrives, and waits to be read
    relay.cut()
    confirm()
    assert drain(amqp_namespace) == [b"confirmed"]


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
