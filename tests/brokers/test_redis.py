"""Redis specifics: machinery's layout on the wire, batching, and recovery paths."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from taskd.brokers import Message, open_broker
from taskd.brokers.redis import RedisBroker
from taskd.client import Client, signature
from taskd.errors import BrokerError
from taskd.wire import GoTime
from tests.support.harness import GO_FIELDS


@pytest.fixture
def client(redis_namespace: str, make_config: Callable[..., Any]) -> Any:
    with Client(make_config("redis")) as client:
        yield client


def test_what_the_client_puts_on_redis_is_what_machinery_expects(
    client: Client, redis_server: Any, namespace: str
) -> None:
    sent = client.send("add", 1, 2)
    (raw,) = redis_server.lrange(namespace, 0, -1)
    message = json.loads(raw)
    assert list(message) == GO_FIELDS
    assert message["UUID"] == sent.task_id
    assert message["RoutingKey"] == namespace
    assert message["Headers"] == {}
    assert (
        b'"Args":[{"Name":"","Type":"int64","Value":1},{"Name":"","Type":"int64","Value":2}]' in raw
    )
    assert b'"GroupTaskCount":0,' in raw and b'"Priority":0,' in raw and b'"RetryCount":0,' in raw
    assert b" " not in raw  # compact, as json.Marshal writes it
    pending = json.loads(redis_server.get(sent.task_id))
    assert list(pending) == [
        "TaskUUID",
        "TaskName",
        "State",
        "Results",
        "Error",
        "CreatedAt",
        "TTL",
    ]
    assert (pending["State"], pending["TaskName"], pending["Results"]) == ("PENDING", "add", None)


def test_eta_messages_go_to_the_shared_delayed_set_scored_in_nanoseconds(
    client: Client, redis_server: Any, namespace: str
) -> None:
    eta_ns = time.time_ns() + 3600 * 10**9
    (sent,) = client.publish([signature("add", 1, eta=GoTime(eta_ns))])
    delayed_key = f"{namespace}:delayed"
    ((member, score),) = redis_server.zrange(delayed_key, 0, -1, withscores=True)
    assert abs(score - eta_ns) < 1024  # a double holds nanoseconds to ~256 ns, as in machinery
    message = json.loads(member)
    assert message["UUID"] == sent.uuid
    assert message["RoutingKey"] == namespace  # filled in before it is stored, as machinery does
    assert message["ETA"] == GoTime(eta_ns).format()
    assert redis_server.llen(namespace) == 0


def test_ten_thousand_due_messages_move_in_a_few_calls(
    redis_namespace: str, make_config: Callable[..., Any], redis_server: Any
) -> None:
    namespace = redis_namespace
    config = make_config("redis")
    broker = open_broker(config)
    body = json.dumps({"RoutingKey": namespace}).encode()
    past = time.time_ns() - 10**9
    members = {body[:-1] + b', "n": %d}' % i: past for i in range(10_000)}
    redis_server.zadd(f"{namespace}:delayed", members)

    def script_calls() -> int:
        stats = redis_server.info("commandstats")
        return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha", "eval"))

    calls_before = script_calls()
    deliveries = broker.fetch(namespace, max_messages=1, wait_s=0)
    calls = script_calls() - calls_before
    assert len(deliveries) == 1
    assert redis_server.llen(namespace) == 9_999  # all moved, atomically, in one fetch
    assert redis_server.zcard(f"{namespace}:delayed") == 0
    assert calls <= 20  # batches of 1000 (and the fetch itself), not a call per message
    broker.close()


def test_a_lost_fetch_reply_strands_nothing(
    redis_namespace: str, make_config: Callable[..., Any], redis_server: Any
) -> None:
    """A reply lost after Redis moved messages leaves them in the processing list; the next
    fetch (holding nothing) puts them back first."""
    namespace = redis_namespace
    broker = open_broker(make_config("redis"))
    assert isinstance(broker, RedisBroker)
    broker.publish_many([Message(namespace, b"a"), Message(namespace, b"b")])
    (first,) = broker.fetch(namespace, max_messages=1, wait_s=0)
    broker.ack(first)
    processing = first.handle
    redis_server.lmove(namespace, processing, "LEFT", "RIGHT")  # as if the reply was lost
    broker._stray_risk[namespace] = True
    assert redis_server.llen(namespace) == 0
    (again,) = broker.fetch(namespace, max_messages=5, wait_s=0)
    assert again.body == b"b"
    assert redis_server.lrange(processing, 0, -1) == [b"b"]
    broker.close()


def test_a_malformed_delayed_member_reaches_the_default_queue_to_be_set_aside(
    redis_namespace: str, make_config: Callable[..., Any], redis_server: Any
) -> None:
    namespace = redis_namespace
    broker = open_broker(make_config("redis"))
    redis_server.zadd(f"{namespace}:delayed", {b"not json": time.time_ns() - 1})
    (delivery,) = broker.fetch(namespace, max_messages=1, wait_s=1)
    assert delivery.body == b"not json"
    broker.reject(delivery, "malformed message: not valid JSON")
    (letter,) = broker.dead_letters(namespace, 5)
    assert letter.body == b"not json"
    broker.close()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis://127.0.0.1:6379/2",
            {"host": "127.0.0.1", "port": 6379, "db": 2, "password": None},
        ),
        (
            "redis://secret@127.0.0.1",
            {"host": "127.0.0.1", "port": 6379, "db": 0, "password": "secret"},
        ),
        ("redis://:p%40ss@h:7000/1", {"host": "h", "port": 7000, "db": 1, "password": "p@ss"}),
        ("redis://user:pw@h/0", {"host": "h", "username": "user", "password": "pw"}),
        ("rediss://h:6380", {"host": "h", "port": 6380, "ssl": True}),
        ("redis+socket:///run/redis.sock:/3", {"unix_socket_path": "/run/redis.sock", "db": 3}),
        (
            "redis+socket://pw@/run/redis.sock",
            {"unix_socket_path": "/run/redis.sock", "password": "pw"},
        ),
    ],
)
def test_machinery_url_forms(url: str, expected: dict[str, Any]) -> None:
    from taskd.redis_url import connection_kwargs

    kwargs = connection_kwargs(url, "broker")
    assert {key: kwargs.get(key) for key in expected} == expected


@pytest.mark.parametrize(
    "url", ["redis://", "redis://h:notaport", "redis://h/x", "redis+socket://"]
)
def test_bad_redis_urls_name_the_key(url: str) -> None:
    from taskd.errors import ConfigError
    from taskd.redis_url import connection_kwargs

    with pytest.raises(ConfigError, match=r"^broker: "):
        connection_kwargs(url, "broker")


def test_a_unix_socket_broker_and_backend_work(
    private_redis: Any, namespace: str, make_config: Callable[..., Any]
) -> None:
    url = f"redis+socket://{private_redis.socket}:/0"
    with Client(make_config("redis", broker=url, result_backend=url)) as client:
        sent = client.send("sum", [1, 2])
        (delivery,) = client.broker.fetch(namespace, max_messages=1, wait_s=1)
        assert json.loads(delivery.body)["UUID"] == sent.task_id
        assert sent.state() is not None


def test_a_due_message_naming_a_key_that_is_not_a_list_is_not_lost(
    redis_namespace: str, make_config: Callable[..., Any], redis_server: Any
) -> None:
    namespace = redis_namespace
    broker = open_broker(make_config("redis"))
    redis_server.set(f"{namespace}-string", "not a list")
    member = json.dumps({"RoutingKey": f"{namespace}-string"}).encode()
    redis_server.zadd(f"{namespace}:delayed", {member: time.time_ns() - 1})
    (delivery,) = broker.fetch(namespace, max_messages=1, wait_s=1)  # the default queue instead
    assert delivery.body == member
    assert redis_server.zcard(f"{namespace}:delayed") == 0
    broker.close()


def test_a_blocking_fetch_on_a_key_that_is_not_a_list_is_a_broker_error_naming_the_queue(
    redis_namespace: str, make_config: Callable[..., Any], redis_server: Any
) -> None:
    """The blocking move an idle consumer waits in reports the error reply, and the
    connection stays usable for the next fetch."""
    broker = open_broker(make_config("redis"))
    queue = f"{redis_namespace}-string"
    try:
        assert broker.fetch(queue, max_messages=1, wait_s=0.05) == []  # now known empty...
        redis_server.set(queue, "not a list")
        with pytest.raises(BrokerError, match="WRONGTYPE") as caught:
            broker.fetch(queue, max_messages=1, wait_s=0.2)  # ...so it blocks in BLMOVE
        assert caught.value.queue == queue
        redis_server.delete(queue)
        redis_server.rpush(queue, b"after")
        (delivery,) = broker.fetch(queue, max_messages=1, wait_s=1)
        assert delivery.body == b"after"
    finally:
        broker.close()


def test_a_count_of_deliveries_that_is_no_number_reads_as_none(
    redis_namespace: str, make_config: Callable[..., Any], redis_server: Any
) -> None:
    """Another program's value in the hash of failed deliveries: that message counts none
    (not a crash at each fetch of it), and the counts of the others in its batch still read."""
    namespace = redis_namespace
    broker = open_broker(make_config("redis"))
    assert isinstance(broker, RedisBroker)
    counts = broker._keys.deliveries
    try:
        broker.publish_many([Message(namespace, body) for body in (b"a", b"b", b"c")])
        redis_server.hset(counts, hashlib.sha1(b"a").hexdigest(), "junk")
        redis_server.hset(counts, hashlib.sha1(b"b").hexdigest(), "2")
        batch = broker.fetch(namespace, max_messages=3, wait_s=0)
        assert [(d.body, d.deliveries) for d in batch] == [(b"a", 1), (b"b", 3), (b"c", 1)]
        broker.ack_many(batch)
        assert broker.fetch(namespace, max_messages=1, wait_s=0.05) == []  # known empty...
        redis_server.rpush(namespace, b"d")
        redis_server.hset(counts, hashlib.sha1(b"d").hexdigest(), "1.5")
        (delivery,) = broker.fetch(namespace, max_messages=1, wait_s=1)  # ...so a blocking move
        assert (delivery.body, delivery.deliveries) == (b"d", 1)
    finally:
        redis_server.delete(counts)
        broker.close()


def test_a_message_handed_back_over_a_count_that_is_no_number_is_counted_anew(
    redis_namespace: str, make_config: Callable[..., Any], redis_server: Any
) -> None:
    """Handing back a gone consumer's messages counts each as a failed delivery; a count that
    is no integer made that script stop half-way (HINCRBY's error): it starts again at 1."""
    namespace = redis_namespace
    holder = open_broker(make_config("redis"))
    assert isinstance(holder, RedisBroker)
    counts = holder._keys.deliveries
    try:
        holder.publish(namespace, b"e")
        assert holder.fetch(namespace, max_messages=1, wait_s=1)
        redis_server.hset(counts, hashlib.sha1(b"e").hexdigest(), "junk")
        holder.close()  # hands back what it holds, as a consumer found gone would
        taker = open_broker(make_config("redis"))
        (again,) = taker.fetch(namespace, max_messages=1, wait_s=1)
        assert (again.body, again.deliveries) == (b"e", 2)
        assert redis_server.zcard(holder._keys.consumers) == 1  # the holder is forgotten
        taker.close()
    finally:
        redis_server.delete(counts)


def test_a_move_onto_a_key_that_is_not_a_list_is_refused_before_the_message_leaves(
    redis_namespace: str, make_config: Callable[..., Any], redis_server: Any
) -> None:
    """Setting aside, handing back and fetching take a message off one list, then push it
    onto another; a script's writes stay when a later command fails, so a target that is not
    a list (WRONGTYPE) took the message off and lost it: now the move is refused first, the
    error names the queue, and the message stays where it was."""
    namespace = redis_namespace
    broker = open_broker(make_config("redis"))
    assert isinstance(broker, RedisBroker)
    dead = broker._keys.dead(namespace)
    try:
        broker.publish_many([Message(namespace, b"m1"), Message(namespace, b"m2")])
        (held,) = broker.fetch(namespace, max_messages=1, wait_s=0)
        redis_server.set(dead, "not a list")
        with pytest.raises(BrokerError, match="WRONGTYPE") as caught:
            broker.reject(held, "no such task")
        assert caught.value.queue == namespace
        assert redis_server.lrange(held.handle, 0, -1) == [b"m1"]  # still held, not lost
        redis_server.rename(namespace, f"{namespace}-kept")
        redis_server.set(namespace, "not a list")
        with pytest.raises(BrokerError, match="WRONGTYPE"):
            broker.release_many([held])
        assert redis_server.lrange(held.handle, 0, -1) == [b"m1"]
        redis_server.set(held.handle, "not a list")  # the processing list itself
        redis_server.delete(namespace)
        redis_server.rename(f"{namespace}-kept", namespace)
        with pytest.raises(BrokerError, match="WRONGTYPE"):
            broker.fetch(namespace, max_messages=5, wait_s=0)
        assert redis_server.lrange(namespace, 0, -1) == [b"m2"]
    finally:
        redis_server.delete(dead, held.handle)
        broker.close()
