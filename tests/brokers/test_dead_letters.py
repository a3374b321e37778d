"""What each broker does with dead letters beyond the contract: ids of entries set aside by
an older taskd, caps on queues made before, SQS's retention and redrive targets."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from taskd.brokers import Broker, Message, base, open_broker
from taskd.brokers.base import DeadLetterCap
from taskd.brokers.sqs.queues import DEAD_PREFIX as SQS_DEAD_PREFIX
from tests.support.harness import AMQP_URL, create_queue_with_redrive, wait_until


def take_one(broker: Broker, queue: str) -> Any:
    (delivery,) = wait_until(lambda: broker.fetch(queue, max_messages=1, wait_s=0.2), 15)
    return delivery


# -- SQLite and Redis: the drivers that trim as they set aside ------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_dead_letters_the_count_cap_drops_are_logged_at_most_once_a_minute(
    kind: str, namespace: str, make_config: Callable[..., Any], request: pytest.FixtureRequest
) -> None:
    """Lost for good before their age let them go: said once, then with the count since."""
    if kind == "redis":
        request.getfixturevalue("redis_namespace")
    broker = open_broker(make_config(kind, worker={"dead_letters_max": 2}))
    try:
        with capture_logs() as logs:
            for payload in (b"1", b"2", b"3", b"4", b"5"):
                broker.publish(namespace, payload)
                broker.reject(take_one(broker, namespace), "set aside")
        drops = [e for e in logs if e["event"] == "dead_letters_dropped"]
        assert [(e["queue"], e["count"], e["kept"]) for e in drops] == [(namespace, 1, 2)]
        assert "worker.dead_letters_max" in drops[0]["fix"]
        assert [letter.body for letter in broker.dead_letters(namespace, 10)] == [b"5", b"4"]
    finally:
        broker.close()


def test_dead_letter_drops_not_yet_logged_are_counted_in_the_next_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = iter([100.0, 110.0, 130.0, 170.0])
    monkeypatch.setattr(base.time, "monotonic", lambda: next(clock))
    cap = DeadLetterCap(2, 0)
    with capture_logs() as logs:
        for count in (1, 3, 1, 2):
            cap.dropped("q", count)
    assert [(e["queue"], e["count"]) for e in logs] == [("q", 1), ("q", 6)]


# -- Redis ------------------------------------------------------------------------------------


def test_redis_entries_of_an_older_taskd_get_a_derived_id_and_requeue(
    redis_namespace: str, make_config: Callable[..., Any], redis_server: Any
) -> None:
    namespace = redis_namespace
    broker = open_broker(make_config("redis"))
    old = orjson.dumps(
        {
            "queue": namespace,
            "reason": "task 'x' is not registered",
            "rejected_at": "2026-01-02T03:04:05.000000006Z",
            "body": "old body",
        }
    )
    redis_server.rpush(f"{namespace}:dead:{namespace}", old)
    deliveries = f"{namespace}:deliveries"
    redis_server.hset(deliveries, hashlib.sha1(b"old body").hexdigest(), 3)
    (letter,) = broker.dead_letters(namespace, 5)
    assert letter.id == hashlib.sha1(old).hexdigest()[:16]
    assert letter.reason == "task 'x' is not registered"
    assert broker.requeue_dead(namespace, [letter.id]) == 1
    assert redis_server.lrange(namespace, 0, -1) == [b"old body"]
    assert redis_server.hlen(deliveries) == 0  # a fresh message: no deaths counted
    assert take_one(broker, namespace).deliveries == 1
    assert broker.dead_letters(namespace, 5) == []
    broker.close()


def test_redis_age_trim_stops_at_an_entry_without_its_age(
    redis_namespace: str, make_config: Callable[..., Any], redis_server: Any
) -> None:
    """Entries of an older taskd have no leading age; only the count cap reaches them."""
    namespace = redis_namespace
    broker = open_broker(make_config("redis", worker={"dead_letters_max": 3}))
    key = f"{namespace}:dead:{namespace}"
    stale = b'{"rejected_unix_ms":1000,"id":"stale","queue":"q","reason":"r",' + (
        b'"rejected_at":"1970-01-01T00:00:01Z","body":"stale"}'
    )
    older = b'{"queue":"q","reason":"r","rejected_at":"1970-01-01T00:00:01Z","body":"older"}'
    redis_server.rpush(key, stale, older)
    for payload in (b"a", b"b", b"c"):
        broker.publish(namespace, payload)
        broker.reject(take_one(broker, namespace), "set aside")
        if payload == b"a":  # the stale one went by age; the older one stopped the trim
            assert [letter.body for letter in broker.dead_letters(namespace, 10)] == [
                b"a",
                b"older",
            ]
    assert [letter.body for letter in broker.dead_letters(namespace, 10)] == [b"c", b"b", b"a"]
    broker.close()


# -- RabbitMQ ---------------------------------------------------------------------------------


def test_amqp_a_dead_queue_declared_without_caps_is_used_as_it_is(
    amqp_namespace: str, make_config: Callable[..., Any]
) -> None:
    """Declared by an older taskd (no arguments): RabbitMQ refuses the capped declare
    (PRECONDITION_FAILED), which is logged once; messages are set aside all the same, and
    one without an id gets a derived one that requeues it."""
    import pika

    namespace = amqp_namespace
    dead = f"taskd.dead.{namespace}"
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.queue_declare(dead, durable=True)
    headers = {"x-taskd-reason": "malformed", "x-taskd-rejected-at": "2026-01-02T03:04:05Z"}
    channel.basic_publish("", dead, b"older", pika.BasicProperties(headers=headers))
    connection.close()

    broker = open_broker(make_config("amqp"))
    with capture_logs() as logs:
        for payload in (b"a", b"b"):
            broker.publish(namespace, payload)
            broker.reject(take_one(broker, namespace), "set aside")
    warned = [entry for entry in logs if entry["event"] == "dead_letter_queue_not_capped"]
    assert len(warned) == 1 and warned[0]["queue"] == dead
    letters = broker.dead_letters(namespace, 10)
    assert [letter.body for letter in letters] == [b"b", b"a", b"older"]
    assert letters[2].id == broker.dead_letters(namespace, 10)[2].id  # derived, stable
    assert broker.requeue_dead(namespace, [letters[2].id]) == 1
    assert take_one(broker, namespace).body == b"older"
    assert [letter.body for letter in broker.dead_letters(namespace, 10)] == [b"b", b"a"]
    broker.close()


# -- SQS --------------------------------------------------------------------------------------


def retention_of(raw: Any, name: str) -> str:
    url = raw.get_queue_url(QueueName=name)["QueueUrl"]
    attributes = raw.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    return str(attributes["MessageRetentionPeriod"])


def test_sqs_dead_queues_keep_messages_for_the_max_age(
    sqs_namespace: str, make_config: Callable[..., Any], raw: Any
) -> None:
    """Made with the age as retention (raised to SQS's 60 s); one made before is fixed."""
    namespace, other = sqs_namespace, f"{sqs_namespace}-b"
    broker = open_broker(make_config("sqs", worker={"dead_letters_max_age": 1}))
    broker.publish(namespace, b"x")
    broker.reject(take_one(broker, namespace), "set aside")
    assert retention_of(raw, SQS_DEAD_PREFIX + namespace) == "60"
    broker.close()

    raw.create_queue(
        QueueName=SQS_DEAD_PREFIX + other, Attributes={"MessageRetentionPeriod": "345600"}
    )
    broker = open_broker(make_config("sqs"))  # 7 days
    broker.publish(other, b"y")
    broker.reject(take_one(broker, other), "set aside")
    assert retention_of(raw, SQS_DEAD_PREFIX + other) == "604800"
    assert [letter.body for letter in broker.dead_letters(other, 5)] == [b"y"]
    broker.close()


def test_sqs_a_redrive_targets_messages_requeue_to_their_queue(
    sqs_namespace: str, make_config: Callable[..., Any], raw: Any
) -> None:
    namespace = sqs_namespace
    create_queue_with_redrive(raw, namespace, 1)
    broker = open_broker(make_config("sqs", sqs={"receive_visibility_timeout": 1}))
    broker.publish_many([Message(namespace, b"doomed")])
    broker.reject(take_one(broker, namespace), "task failed, StopTaskDeletionOnError")
    (letter,) = wait_until(
        lambda: (
            broker.fetch(namespace, max_messages=1, wait_s=1.2) == []
            and broker.dead_letters(namespace, 5)
        ),
        15,
    )
    assert broker.requeue_dead(namespace, [letter.id]) == 1
    again = take_one(broker, namespace)
    assert (again.body, again.deliveries) == (b"doomed", 1)
    broker.ack(again)
    assert broker.dead_letters(namespace, 5) == []
    broker.close()


def test_sqs_fifo_a_requeued_message_is_not_taken_for_a_duplicate(
    sqs_namespace: str, make_config: Callable[..., Any]
) -> None:
    """Requeued within SQS's 5-minute deduplication window, with the same bytes as when it
    was first sent: it gets a deduplication id of its own."""
    queue = f"{sqs_namespace}.fifo"
    broker = open_broker(make_config("sqs_fifo"))
    broker.publish(queue, b'{"UUID":"task_1"}')
    broker.reject(take_one(broker, queue), "task 'x' is not registered")
    (letter,) = broker.dead_letters(queue, 5)
    assert broker.requeue_dead(queue, [letter.id]) == 1
    again = take_one(broker, queue)
    assert (again.body, again.deliveries) == (b'{"UUID":"task_1"}', 1)
    broker.ack(again)
    assert broker.dead_letters(queue, 5) == []
    broker.close()
