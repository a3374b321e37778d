"""The Broker contract, run against every driver on a real server (or file).

Driver-neutral: a test uses only the Broker interface, so a new driver joins by adding its
kind to the ``driver_kind`` fixture (and its config to ``harness.config_data``). What only
drivers that keep their own leases do is in ``test_lease.py``.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from typing import Any

import pytest

from taskd.brokers import Broker, Message, open_broker
from taskd.errors import NotSupported, UnknownDeadLetters
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


def test_fifo_while_the_batch_size_changes(broker: Broker, namespace: str) -> None:
    """A worker's batch size follows its tasks (the AMQP prefetch with it): messages already
    handed to the consumer keep their places when it changes (a quorum queue's consumer is
    started again for a new prefetch, and a message it put back would go behind the rest)."""
    broker.publish_many([Message(namespace, f"m{i}".encode()) for i in range(8)])
    got: list[bytes] = []
    deadline = time.monotonic() + 10
    for size in (3, 1, 1, 3, 3, 3):
        while len(got) < 8 and time.monotonic() < deadline:
            batch = bodies(broker.fetch(namespace, max_messages=size, wait_s=1))
            if batch:
                got += batch
                break
    assert got == [f"m{i}".encode() for i in range(8)]


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
    # 3 s: the counts below are read well before it is due, even on a loaded machine
    # (AMQP reads each delay level in turn while the message moves down the ladder).
    eta = GoTime(time.time_ns() + 3_000_000_000)
    broker.publish(namespace, b'{"RoutingKey":"%s"}' % namespace.encode(), eta=eta)
    assert broker.delayed(namespace) == 1
    assert broker.size(namespace) == 0
    assert broker.fetch(namespace, max_messages=1, wait_s=0.1) == []
    delivered = wait_until(lambda: broker.fetch(namespace, max_messages=1, wait_s=0.2), 10)
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


def test_holding_counts_messages_of_live_and_dead_consumers(
    drivers: Callable[..., Any], namespace: str
) -> None:
    """In flight and orphaned, where the broker can tell (None where it cannot). Default
    liveness: no consumer here reclaims the dead one's message before it is counted."""
    from structlog.testing import capture_logs

    def open_consumer() -> Broker:
        return drivers(open_broker)

    watcher = open_consumer()
    watcher.publish_many([Message(namespace, b"a"), Message(namespace, b"b")])
    assert take_and_die(open_consumer, namespace) == 0
    held = watcher.holding(namespace)
    if held.orphaned is not None:  # the broker tracks its consumers
        assert (held.in_flight, held.orphaned) == (0, 1)
    elif held.in_flight is not None:  # a visibility timeout: held until it runs out
        assert held.in_flight == 1
    with capture_logs() as logs:
        taken = open_consumer().fetch(namespace, max_messages=1, wait_s=2)
    assert len(taken) == 1
    held = watcher.holding(namespace)
    if held.orphaned is not None:  # taking the first message gave back the dead one's
        assert (held.in_flight, held.orphaned) == (1, 0)
        (recovered,) = [entry for entry in logs if entry["event"] == "messages_recovered"]
        assert recovered["count"] == 1


def test_close_hands_back_what_was_not_settled(
    open_driver: Callable[[], Broker], namespace: str
) -> None:
    first = open_driver()
    first.publish(namespace, b"unsettled")
    assert len(first.fetch(namespace, max_messages=1, wait_s=1)) == 1
    first.close()
    second = open_driver()
    assert bodies(second.fetch(namespace, max_messages=1, wait_s=1)) == [b"unsettled"]


# -- dead letters ------------------------------------------------------------------------------


def set_aside(broker: Broker, queue: str, *payloads: bytes) -> None:
    """Send each message, take it and reject it, one at a time (so their order is known)."""
    for payload in payloads:
        broker.publish(queue, payload)
        (delivery,) = fetch_all(broker, queue, 1)
        broker.reject(delivery, f"set aside: {payload.decode()}")


def dead_bodies(broker: Broker, queue: str) -> list[bytes]:
    return [letter.body for letter in broker.dead_letters(queue, 100)]


def take_each(broker: Broker, queue: str, count: int) -> list[Any]:
    """``count`` messages, one fetch and ack at a time: on RabbitMQ, a fetch of another size
    restarts the consumer, and a quorum queue counts what that hands back as a delivery."""
    taken = []
    for _ in range(count):
        taken += fetch_all(broker, queue, 1)
        broker.ack_many(taken[-1:])
    return taken


def test_a_dead_letter_requeued_by_id_comes_back_as_a_fresh_message(
    open_driver: Callable[[], Broker], namespace: str
) -> None:
    open_driver().publish(namespace, b"poison")
    assert take_and_die(open_driver, namespace) == 0
    broker = open_driver()
    (died,) = wait_until(lambda: broker.fetch(namespace, max_messages=1, wait_s=0.2), 15)
    assert died.deliveries == 2
    broker.reject(died, "task 'x' is not registered")
    set_aside(broker, namespace, b"other")
    letters = broker.dead_letters(namespace, 10)
    assert [letter.body for letter in letters] == [b"other", b"poison"]
    assert all(letter.id for letter in letters) and len({letter.id for letter in letters}) == 2
    assert [letter.id for letter in broker.dead_letters(namespace, 10)] == [
        letter.id for letter in letters
    ]  # stable: the same message keeps its id

    assert broker.requeue_dead(namespace, [letters[1].id]) == 1
    (again,) = fetch_all(broker, namespace, 1)
    assert again.body == b"poison"
    assert again.deliveries == 1 and not again.redelivered  # its count starts again
    broker.ack(again)
    assert dead_bodies(broker, namespace) == [b"other"]


def test_unknown_dead_letter_ids_are_named_and_nothing_is_done(
    broker: Broker, namespace: str
) -> None:
    set_aside(broker, namespace, b"a", b"b")
    known = broker.dead_letters(namespace, 10)[0].id
    with pytest.raises(UnknownDeadLetters, match="no-such-id") as caught:
        broker.requeue_dead(namespace, [known, "no-such-id"])
    assert caught.value.ids == ("no-such-id",)
    assert caught.value.queue == namespace
    with pytest.raises(UnknownDeadLetters, match="no-such-id"):
        broker.drop_dead(namespace, ["no-such-id", known])
    assert dead_bodies(broker, namespace) == [b"b", b"a"]
    assert broker.fetch(namespace, max_messages=1, wait_s=0.2) == []


def test_dead_letters_dropped_and_requeued_by_id_and_all(broker: Broker, namespace: str) -> None:
    set_aside(broker, namespace, b"a", b"b", b"c", b"d")
    _, c, b, a = (letter.id for letter in broker.dead_letters(namespace, 10))
    assert broker.drop_dead(namespace, [b]) == 1
    assert dead_bodies(broker, namespace) == [b"d", b"c", b"a"]
    assert broker.requeue_dead(namespace, [a, c]) == 2
    assert sorted(bodies(take_each(broker, namespace, 2))) == [b"a", b"c"]
    assert dead_bodies(broker, namespace) == [b"d"]

    set_aside(broker, namespace, b"e")
    assert broker.requeue_dead(namespace, None) == 2
    requeued = take_each(broker, namespace, 2)
    assert sorted(bodies(requeued)) == [b"d", b"e"]
    assert {delivery.deliveries for delivery in requeued} == {1}
    set_aside(broker, namespace, b"f", b"g")
    assert broker.drop_dead(namespace, None) == 2
    assert dead_bodies(broker, namespace) == []
    assert broker.drop_dead(namespace, None) == 0
    assert broker.requeue_dead(namespace, None) == 0
    assert broker.fetch(namespace, max_messages=1, wait_s=0.2) == []


def test_dead_letters_beyond_the_cap_go_oldest_first(
    drivers: Callable[..., Any], namespace: str
) -> None:
    broker = drivers(open_broker, worker={"dead_letters_max": 2})
    set_aside(broker, namespace, b"1", b"2", b"3")
    kept = dead_bodies(broker, namespace)
    if broker.caps_dead_letters_by_count:
        assert kept == [b"3", b"2"]
    else:  # capped by age alone
        assert sorted(kept) == [b"1", b"2", b"3"]


def test_dead_letters_older_than_the_max_age_go(
    drivers: Callable[..., Any], namespace: str
) -> None:
    broker = drivers(open_broker, worker={"dead_letters_max_age": 1})
    if broker.shortest_dead_letter_age_s > 1:
        shortest = broker.shortest_dead_letter_age_s
        pytest.skip(f"{broker.driver} keeps messages {shortest} s at least (see test_sqs.py)")
    set_aside(broker, namespace, b"old")
    fresh = itertools.count()

    def old_one_gone() -> bool:  # each look sets another aside: some drivers trim then
        set_aside(broker, namespace, b"new %d" % next(fresh))
        return b"old" not in dead_bodies(broker, namespace)

    wait_until(old_one_gone, 15, 0.25, "the old dead letter to expire")
    assert broker.dead_letters(namespace, 1)[0].body.startswith(b"new")
