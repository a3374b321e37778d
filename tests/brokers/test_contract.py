"""The Broker contract, run against every driver on a real server (or file).

Driver-neutral: a test uses only the Broker interface, so a new driver joins by adding its
kind to the ``driver_kind`` fixture (and its config to ``harness.config_data``). What only
drivers that keep their own leases do is in ``test_lease.py``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import pytest

from taskd.brokers import Broker, Message, open_broker
from taskd.errors import NotSupported
from taskd.wire import GoTime
from tests.support.harness import wait_until

FAST_LIVENESS = {"worker": {"heartbeat_interval": 0.2, "consumer_timeout": 1.5}}


@pytest.fixture
def open_driver(drivers: Callable[..., Any]) -> Callable[[], Broker]:
    return lambda: drivers(open_broker, **FAST_LIVENESS)


@pytest.fixture
def broker(open_driver: Callable[[], Broker]) -> Broker:
    return open_driver()


def bodies(deliveries: list[Any]) -> list[bytes]:
    return [delivery.body for delivery in deliveries]


def assert_released(got: list[bytes], expected: list[bytes], broker: Broker) -> None:
    """Released messages come back first, and in order where the broker keeps it."""
    if broker.releases_keep_order:
        assert got == expected
    else:
        assert sorted(got) == sorted(expected)


def fetch_all(broker: Broker, queue: str, count: int) -> list[Any]:
    """``count`` messages, over as many fetches as a push broker needs to hand them over."""
    taken: list[Any] = []
    deadline = time.monotonic() + 10
    while len(taken) < count and time.monotonic() < deadline:
        taken += broker.fetch(queue, max_messages=count - len(taken), wait_s=1)
    return taken


def test_fifo_and_batches(broker: Broker, namespace: str) -> None:
    """Oldest first, never more than asked per fetch. A fetch may return fewer than are
    ready (AMQP hands over what RabbitMQ has pushed so far), never none while any is."""
    broker.publish_many([Message(namespace, f"m{i}".encode()) for i in range(5)])
    batches: list[list[bytes]] = []
    deadline = time.monotonic() + 10
    while sum(map(len, batches)) < 5 and time.monotonic() < deadline:
        batch = bodies(broker.fetch(namespace, max_messages=3, wait_s=1))
        assert batch, "a fetch came back empty while messages were ready"
        batches.append(batch)
    assert all(len(batch) <= 3 for batch in batches)
    assert [body for batch in batches for body in batch] == [f"m{i}".encode() for i in range(5)]


def test_empty_fetch_waits_then_returns_nothing(broker: Broker, namespace: str) -> None:
    started = time.monotonic()
    assert broker.fetch(namespace, max_messages=1, wait_s=0.3) == []
    assert time.monotonic() - started >= 0.25  # it did block, it did not spin back at once


def test_ack_removes(broker: Broker, namespace: str, open_driver: Callable[[], Broker]) -> None:
    broker.publish(namespace, b"once")
    (delivery,) = broker.fetch(namespace, max_messages=1, wait_s=1)
    broker.ack(delivery)
    broker.close()
    other = open_driver()
    assert other.fetch(namespace, max_messages=1, wait_s=0.2) == []
    assert other.size(namespace) == 0


def test_release_goes_back_to_the_head(broker: Broker, namespace: str) -> None:
    broker.publish_many([Message(namespace, b"a"), Message(namespace, b"b")])
    (a,) = broker.fetch(namespace, max_messages=1, wait_s=1)
    assert a.deliveries == 1 and not a.redelivered
    broker.release(a)
    again = fetch_all(broker, namespace, 2)
    assert_released(bodies(again), [b"a", b"b"], broker)
    if not broker.counts_releases:  # handed back unprocessed: not a failed delivery
        assert again[0].deliveries == 1 and not again[0].redelivered


def test_release_many_keeps_the_order_at_the_head(broker: Broker, namespace: str) -> None:
    broker.publish_many([Message(namespace, body) for body in (b"a", b"b", b"c", b"d")])
    taken = broker.fetch(namespace, max_messages=3, wait_s=1)
    broker.ack(taken[0])
    broker.release_many(taken[1:])
    again = bodies(fetch_all(broker, namespace, 3))
    assert_released(again, [b"b", b"c", b"d"], broker)


def test_a_priority_is_honoured_or_refused(broker: Broker, namespace: str) -> None:
    urgent = Message(namespace, b"urgent", priority=5)
    if not broker.supports_priority:
        with pytest.raises(NotSupported, match="priority"):
            broker.publish_many([Message(namespace, b"plain"), urgent])
        assert broker.fetch(namespace, max_messages=2, wait_s=0.2) == []  # nothing was sent
        return
    broker.publish_many([Message(namespace, b"plain"), urgent])
    assert bodies(broker.fetch(namespace, max_messages=2, wait_s=1)) == [b"urgent", b"plain"]


def test_reject_keeps_the_message_with_its_reason(broker: Broker, namespace: str) -> None:
    broker.publish(namespace, b"\xffnot json")
    (delivery,) = broker.fetch(namespace, max_messages=1, wait_s=1)
    broker.reject(delivery, "malformed message: not valid JSON")
    assert broker.fetch(namespace, max_messages=1, wait_s=0.1) == []
    (letter,) = broker.dead_letters(namespace, 10)
    assert letter.body == b"\xffnot json"
    assert letter.reason == "malformed message: not valid JSON"
    assert letter.queue == namespace


def test_eta_waits_in_the_broker(broker: Broker, namespace: str) -> None:
    eta = GoTime(time.time_ns() + 700_000_000)
    broker.publish(namespace, b'{"RoutingKey":"%s"}' % namespace.encode(), eta=eta)
    assert broker.delayed(namespace) == 1
    assert broker.size(namespace) == 0
    assert broker.fetch(namespace, max_messages=1, wait_s=0.1) == []
    delivered = wait_until(lambda: broker.fetch(namespace, max_messages=1, wait_s=0.2), 5)
    assert time.time_ns() >= eta.unix_ns
    assert len(delivered) == 1
    assert broker.delayed(namespace) == 0


def test_admin_size_peek_purge(broker: Broker, namespace: str) -> None:
    broker.publish_many([Message(namespace, b"1"), Message(namespace, b"2")])
    broker.publish(
        namespace,
        b'{"RoutingKey":"%s"}' % namespace.encode(),
        eta=GoTime(time.time_ns() + 60 * 10**9),
    )
    assert broker.size(namespace) == 2
    assert broker.peek(namespace, 1) == [b"1"]
    assert broker.size(namespace) == 2  # peeking takes nothing
    assert broker.purge(namespace) == 3
    assert broker.size(namespace) == 0
    assert broker.delayed(namespace) == 0


def take_and_die(open_consumer: Callable[[], Broker], queue: str) -> int:
    """Fork a consumer that takes one message and dies without settling it."""
    pid = os.fork()
    if pid == 0:
        try:
            taken = open_consumer().fetch(queue, max_messages=1, wait_s=2)
            os._exit(0 if taken else 3)
        except BaseException:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_messages_of_a_dead_consumer_come_back(
    open_driver: Callable[[], Broker], namespace: str
) -> None:
    producer = open_driver()
    producer.publish(namespace, b"survivor")
    assert take_and_die(open_driver, namespace) == 0
    survivor = open_driver()
    delivered = wait_until(lambda: survivor.fetch(namespace, max_messages=1, wait_s=0.2), 15)
    assert bodies(delivered) == [b"survivor"]
    assert delivered[0].deliveries == 2 and delivered[0].redelivered  # counted as a failure


def test_a_live_consumer_keeps_its_message_past_the_timeout(
    open_driver: Callable[[], Broker], namespace: str
) -> None:
    holder, other = open_driver(), open_driver()
    holder.publish(namespace, b"long task")
    assert bodies(holder.fetch(namespace, max_messages=1, wait_s=1)) == [b"long task"]
    # consumer_timeout is 1.5 s: hold the message (the driver keeps the lease) for longer.
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        assert other.fetch(namespace, max_messages=1, wait_s=0.25) == []


def test_close_hands_back_what_was_not_settled(
    open_driver: Callable[[], Broker], namespace: str
) -> None:
    first = open_driver()
    first.publish(namespace, b"unsettled")
    assert len(first.fetch(namespace, max_messages=1, wait_s=1)) == 1
    first.close()
    second = open_driver()
    assert bodies(second.fetch(namespace, max_messages=1, wait_s=1)) == [b"unsettled"]
