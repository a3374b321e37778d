"""taskd.pairs: the Redis pair's final states and acks in one script; the SQLite pair's one file."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from taskd import redisdb, sqlitedb
from taskd.backends import open_backend
from taskd.brokers import Delivery, Message, open_broker
from taskd.errors import BrokerError
from taskd.pairs import Settle, settler_for
from taskd.wire import GoTime, State, TaskResult, TaskState, new_id


@pytest.fixture
def pair(redis_namespace: str, make_config: Callable[..., Any]) -> Iterator[tuple[Any, Any]]:
    config = make_config("redis")
    broker, backend = open_broker(config), open_backend(config)
    yield broker, backend
    broker.close()
    backend.close()


@pytest.fixture
def settle(pair: tuple[Any, Any]) -> Settle:
    """The pair's settler: there is one for the Redis broker and results on one server."""
    found = settler_for(*pair)
    assert found is not None
    return found


def taken(broker: Any, queue: str, count: int) -> list[Delivery]:
    """``count`` messages published to ``queue``, then fetched (leased, in processing)."""
    broker.publish_many([Message(queue, f"body {n}".encode()) for n in range(count)])
    deliveries = broker.fetch(queue, max_messages=count, wait_s=0)
    assert len(deliveries) == count
    return deliveries


def finished(task_id: str) -> TaskState:
    return TaskState(
        task_id,
        State.SUCCESS,
        task_name="add",
        created_at=GoTime.now(),
        results=(TaskResult("int64", 3),),
    )


def test_the_redis_pair_on_one_server_stores_states_and_acks_in_one_script(
    pair: tuple[Any, Any], settle: Settle, redis_namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker, backend = pair
    first, *deliveries = taken(broker, redis_namespace, 4)
    settle([finished(new_id())], [first])  # the first use loads the script (EVAL)
    states = [finished(new_id()) for _ in deliveries]
    sent: list[str] = []  # each command the drivers send, through redis-py or not

    def recording(client: Any, args: tuple[Any, ...], send: Any = redisdb.command) -> Any:
        sent.append(args[0])
        return send(client, args)

    monkeypatch.setattr(redisdb, "command", recording)
    for client in {id(broker.redis): broker.redis, id(backend.redis): backend.redis}.values():
        execute = client.execute_command

        def executing(*args: Any, execute: Any = execute, **options: Any) -> Any:
            sent.append(args[0])
            return execute(*args, **options)

        monkeypatch.setattr(client, "execute_command", executing)
    settle(states, deliveries)
    monkeypatch.undo()
    assert sent == ["EVALSHA"]  # one command, one round trip
    assert backend.get_states([s.task_uuid for s in states]) == states
    assert broker.holding(redis_namespace).in_flight == 0
    assert broker.size(redis_namespace) == 0


def test_the_settle_keeps_the_merge_rule_and_wakes_waiters(
    pair: tuple[Any, Any], settle: Settle, redis_namespace: str, redis_server: Any
) -> None:
    broker, backend = pair
    (delivery,) = taken(broker, redis_namespace, 1)
    task_id = new_id()
    sent_at = GoTime(1_700_000_000_123_456_789)
    backend.set_states([TaskState(task_id, State.PENDING, task_name="add", created_at=sent_at)])
    waiter = f"{redis_namespace}:waiter:one"
    redis_server.sadd(f"{redis_namespace}:waiting:{task_id}", waiter)
    done = finished(task_id).with_changes(task_name="other")
    settle([done], [delivery])
    expected = done.with_changes(task_name="add", created_at=sent_at)
    assert backend.get_state(task_id) == expected
    assert redis_server.lrange(waiter, 0, -1) == [expected.encode()]


def test_when_the_states_fail_no_message_is_acked(
    pair: tuple[Any, Any], settle: Settle, redis_namespace: str, redis_server: Any
) -> None:
    broker, _backend = pair
    (delivery,) = taken(broker, redis_namespace, 1)
    task_id = f"{redis_namespace}-a-list"
    redis_server.rpush(task_id, "not a state")  # GET fails with WRONGTYPE in the script
    with pytest.raises(BrokerError):
        settle([finished(task_id)], [delivery])
    assert broker.holding(redis_namespace).in_flight == 1  # still leased: delivered again


def test_messages_of_several_processing_lists_are_settled_states_first(
    pair: tuple[Any, Any], settle: Settle, redis_namespace: str
) -> None:
    broker, backend = pair
    first = taken(broker, redis_namespace, 1)
    second = taken(broker, f"{redis_namespace}-other", 1)
    assert first[0].handle != second[0].handle  # a processing list per queue
    states = [finished(new_id()), finished(new_id())]
    settle(states, [*first, *second])
    assert backend.get_states([s.task_uuid for s in states]) == states
    for queue in (redis_namespace, f"{redis_namespace}-other"):
        assert broker.holding(queue).in_flight == 0


def test_a_broker_and_backend_on_different_databases_have_no_settler(
    redis_namespace: str, make_config: Callable[..., Any]
) -> None:
    broker = open_broker(make_config("redis"))
    backend = open_backend(make_config("redis", result_backend="redis://127.0.0.1:6379/1"))
    try:
        assert settler_for(broker, backend) is None
    finally:
        broker.close()
        backend.close()


def test_a_client_on_one_sqlite_file_follows_it_when_it_is_deleted(
    namespace: str, make_config: Callable[..., Any], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator's reset of the state directory under a long-lived producer: its next send
    goes to the file the path names now, message and PENDING in one commit (the new file has
    both drivers' tables), where it had gone into the deleted one, which nobody reads."""
    from taskd.client import Client

    monkeypatch.setattr(sqlitedb, "FILE_CHECK_S", 0.0)  # looked at on each use
    config = make_config("sqlite")
    with Client(config) as client:
        client.send("add", 1, 2)
        for leftover in tmp_path.glob(f"{namespace}.db*"):
            leftover.unlink()
        with capture_logs() as logs:
            sent = client.send("add", 3, 4)
        assert "sqlite_file_followed" in {e["event"] for e in logs}
        assert sent.state() is not None and sent.state().state is State.PENDING
    broker, backend = open_broker(config), open_backend(config)
    try:
        (delivery,) = broker.fetch(namespace, max_messages=5, wait_s=0)
        assert sent.task_id.encode() in delivery.body
        assert backend.get_states([sent.task_id])[0].state is State.PENDING
    finally:
        broker.close()
        backend.close()
