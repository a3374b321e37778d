"""Direct writes and reads on pika connections (``taskd.amqp_frames.send_now``, ``take_in``) on a
real RabbitMQ: what is buffered leaves in one system call, what came is handled without a
turn of pika's ioloop, and the broker's acks are on the wire when ``ack_many`` returns."""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from taskd.amqp_frames import send_now, take_in
from taskd.brokers import Broker, Delivery, Message, open_broker
from taskd.brokers.amqp.pipeline import Pipeline
from tests.brokers.test_amqp_pipeline import drain
from tests.support.harness import AMQP_URL, wait_until

METHOD, HEADER, BODY = 1, 2, 3  # AMQP frame types
BASIC_ACK = (60, 80)  # class and method ids: a publisher confirm


class Sends:
    """A socket that records what each send wrote (pika's transport writes through it)."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self.sent: list[bytes] = []

    def send(self, data: bytes, *flags: int) -> int:
        count = int(self._sock.send(data, *flags))
        self.sent.append(bytes(data[:count]))
        return count

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def recording(connection: Any) -> Sends:
    """Record the sends of a BlockingConnection from now on."""
    transport = connection._impl._transport
    sends = Sends(transport._sock)
    transport._sock = sends
    return sends


def split(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """The (type, payload) of each whole frame at the start of ``data``, and the rest."""
    found = []
    while len(data) >= 8:
        kind, _channel, size = struct.unpack_from(">BHI", data)
        if len(data) < 8 + size:
            break
        assert data[7 + size] == 0xCE  # frame-end
        found.append((kind, data[7 : 7 + size]))
        data = data[8 + size :]
    return found, data


def frames(data: bytes) -> list[tuple[int, bytes]]:
    """The (type, payload) of each frame in ``data``, whole frames only."""
    found, rest = split(data)
    assert not rest
    return found


def waiting_methods(sock: socket.socket) -> list[tuple[int, int]]:
    """The (class, method) ids of the whole method frames waiting in ``sock``, left there."""
    try:
        data = sock.recv(65536, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return []
    found, _rest = split(data)
    return [struct.unpack_from(">HH", payload) for kind, payload in found if kind == METHOD]


@pytest.fixture
def connection(amqp_namespace: str) -> Iterator[Any]:
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    connection.channel().queue_declare(amqp_namespace, durable=True)
    yield connection
    if connection.is_open:
        connection.close()


def test_a_publish_leaves_in_one_send(connection: Any, amqp_namespace: str) -> None:
    import pika

    pipeline = Pipeline(connection, 10.0)
    pipeline.flush()  # its confirm.select
    sends = recording(connection)
    pipeline.publish("", amqp_namespace, b"all at once", pika.BasicProperties())
    pipeline.flush()
    (sent,) = sends.sent
    assert [kind for kind, _payload in frames(sent)] == [METHOD, HEADER, BODY]
    assert frames(sent)[-1][1] == b"all at once"
    got: list[bytes] = []
    wait_until(lambda: got.extend(drain(amqp_namespace)) or got, what="the message queued")
    assert got == [b"all at once"]


def test_a_confirm_that_came_is_taken_without_a_turn_of_the_ioloop(
    connection: Any, amqp_namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pika

    pipeline = Pipeline(connection, 10.0)
    tag = pipeline.publish("", amqp_namespace, b"x", pika.BasicProperties())
    pipeline.flush()
    sock = connection._impl._transport._sock
    wait_until(lambda: BASIC_ACK in waiting_methods(sock), what="the confirm in the socket")

    def no_turns(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("process_data_events was called")

    monkeypatch.setattr(connection, "process_data_events", no_turns)
    pipeline.wait(tag, tag)
    assert pipeline.settled(tag, tag)
    assert pipeline.refusals(tag, tag, amqp_namespace) == {}


class Unknown:
    """A BlockingConnection stand-in over another transport than pika's plain TCP one (TLS),
    or none (closed)."""

    def __init__(self, transport: Any) -> None:
        self._impl = SimpleNamespace(_transport=transport)
        self.turns: list[float] = []

    def process_data_events(self, time_limit: float) -> None:
        self.turns.append(time_limit)


@pytest.mark.parametrize("transport", [object(), None], ids=["tls", "closed"])
def test_another_transport_is_left_to_pikas_ioloop(transport: Any) -> None:
    connection = Unknown(transport)
    send_now(connection)
    take_in(connection)  # pika raises there for a closed connection
    assert connection.turns == [0, 0]


@pytest.fixture
def open_amqp(amqp_namespace: str, driver_opener: Callable[..., Any]) -> Callable[..., Broker]:
    return lambda **overrides: driver_opener(open_broker, "amqp", **overrides)


def test_acks_are_sent_together_before_ack_many_returns(
    open_amqp: Callable[..., Broker], amqp_namespace: str
) -> None:
    producer, consumer = open_amqp(), open_amqp()
    producer.begin_publish([Message(amqp_namespace, f"m{n}".encode()) for n in range(3)])()
    taken: list[Delivery] = []

    def take() -> bool:
        taken.extend(consumer.fetch(amqp_namespace, max_messages=3 - len(taken), wait_s=0.1))
        return len(taken) == 3

    wait_until(take, what="three deliveries")
    sends = recording(consumer._link._connection)  # type: ignore[attr-defined]
    consumer.ack_many(taken)
    (sent,) = sends.sent
    assert [kind for kind, _payload in frames(sent)] == [METHOD] * 3
    consumer.close()  # what was not acked would go back to the queue now
    assert drain(amqp_namespace) == []
