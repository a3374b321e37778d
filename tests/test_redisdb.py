"""taskd.redisdb: the lean command path the Redis drivers' scripts take."""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from taskd import redis_scripts, redisdb
from taskd.config import load_config
from tests.support.harness import REDIS_URL


@pytest.fixture
def client(redis_namespace: str) -> Iterator[Any]:
    one = redis.Redis.from_url(REDIS_URL)
    yield one
    one.close()


@pytest.fixture(params=["hiredis", "redis-py"])
def packer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test runs with hiredis packing commands, and with redis-py's packer instead."""
    if request.param == "redis-py":
        monkeypatch.setattr(redisdb, "_hiredis_packer", lambda: None)
    return str(request.param)


def test_a_command_answers_as_redis_sends_it(
    client: Any, redis_namespace: str, packer: str
) -> None:
    key = f"{redis_namespace}:n"
    assert redisdb.command(client, ("SET", key, b"40", "EX", 60)) == b"OK"
    assert redisdb.command(client, ("INCRBY", key, 2)) == 42
    assert redisdb.command(client, ("GET", key)) == b"42"
    assert redisdb.command(client, ("MGET", key, "é")) == [b"42", None]


def test_an_error_reply_raises_and_leaves_the_connection_in_the_pool(
    client: Any, redis_namespace: str, packer: str
) -> None:
    key = f"{redis_namespace}:text"
    client.set(key, "not a number", ex=60)
    redisdb.command(client, ("PING",))  # a connection made and given back
    pool = client.connection_pool
    idle = list(pool._available_connections)
    with pytest.raises(redis.ResponseError, match="not an integer"):
        redisdb.command(client, ("INCR", key))
    assert list(pool._available_connections) == idle  # given back, still connected
    assert idle[0].is_connected
    assert redisdb.command(client, ("GET", key)) == b"not a number"


def test_a_failed_connection_is_dropped(redis_namespace: str, packer: str) -> None:
    impatient = redis.Redis.from_url(REDIS_URL, socket_timeout=0.2)
    try:
        redisdb.command(impatient, ("PING",))
        (connection,) = impatient.connection_pool._available_connections
        with pytest.raises(redis.TimeoutError):  # its reply may still come: unusable
            redisdb.command(impatient, ("BLPOP", f"{redis_namespace}:empty", 5))
        assert not connection.is_connected
        assert redisdb.command(impatient, ("PING",)) == b"PONG"  # connected again
    finally:
        impatient.close()


def test_a_script_not_loaded_yet_runs_with_eval(
    client: Any, redis_namespace: str, packer: str
) -> None:
    script = redis_scripts.Script(f"return {{KEYS[1], ARGV[1], '{secrets.token_hex(8)}'}}")
    key = f"{redis_namespace}:k"
    first = script(client, [key], [7])  # NOSCRIPT: sent again with its source
    assert first[:2] == [key.encode(), b"7"]
    assert script(client, [key], [7]) == first  # by its SHA-1 now


def test_commands_run_by_a_script_give_each_reply_in_its_place(
    client: Any, redis_namespace: str, packer: str
) -> None:
    """``run_when_full``: replies as a pipeline's, an error in its command's place; a command
    too long for one Lua call is written as it is."""
    key = f"{redis_namespace}:list"
    commands = [("RPUSH", key, "a", b"\xff"), ("SET", key, "x", "NX"), ("INCR", key)]
    pushed, not_set, refused = redis_scripts.run_when_full(client, commands)
    assert (pushed, not_set) == (2, None)
    assert isinstance(refused, redis.ResponseError) and "WRONGTYPE" in str(refused)
    words = [str(n) for n in range(redis_scripts.RUN_WORDS_MAX)]
    assert redis_scripts.run_when_full(client, [("RPUSH", key, *words)]) == [2 + len(words)]
    assert client.lrange(key, 0, 1) == [b"a", b"\xff"]
    client.delete(key)


def test_a_pipe_writes_several_commands_at_once_and_reads_their_replies_in_order(
    client: Any, redis_namespace: str, packer: str
) -> None:
    """Packed by hiredis or redis-py alike: bytes, text, whole and fractional numbers."""
    key, queue = f"{redis_namespace}:k", f"{redis_namespace}:q"
    pipe = redisdb.Pipe(client)
    first = pipe.write([("SET", key, b"\x00\xff", "EX", 60), ("RPUSH", queue, "é", b"b")])
    second = pipe.write([("BLMOVE", queue, f"{queue}:2", "LEFT", "RIGHT", 0.5), ("GET", key)])
    assert first() == [b"OK", 2]
    assert second() == ["é".encode(), b"\x00\xff"]
    client.delete(queue, f"{queue}:2")


def test_a_pipes_readers_may_come_in_any_order_and_from_any_thread(
    client: Any, redis_namespace: str
) -> None:
    """Two clients sharing a backend take in their confirms each in its own order."""
    key = f"{redis_namespace}:n"
    pipe = redisdb.Pipe(client)
    first = pipe.write([("INCR", key), ("INCR", key)])
    second = pipe.write([("INCR", key)])
    assert second() == [3]  # read first's replies off the connection, kept for it
    assert first(1) == [1]
    assert first() == [2]
    assert client.connection_pool._in_use_connections == set()  # every reply read: given back

    results: dict[int, list[Any]] = {}

    def send(n: int) -> None:
        for _ in range(50):
            reply = pipe.write([("INCR", f"{key}:{n}")])
            results.setdefault(n, []).extend(reply())

    threads = [threading.Thread(target=send, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert {n: results[n] for n in range(4)} == {n: list(range(1, 51)) for n in range(4)}
    client.delete(key, *(f"{key}:{n}" for n in range(4)))


def test_replies_lost_with_the_connection_raise_and_those_read_before_do_not(
    client: Any, redis_namespace: str
) -> None:
    key = f"{redis_namespace}:n"
    pipe = redisdb.Pipe(client)
    (connection_id,) = pipe.write([("CLIENT", "ID")])()
    first, second = pipe.write([("INCR", key)]), pipe.write([("INCR", key)])
    assert second() == [2]  # the first's reply is read and kept
    blocked = pipe.write([("BLPOP", f"{key}:empty", 10)])
    behind = pipe.write([("INCR", key)])  # waits behind the BLPOP, never runs
    client.execute_command("CLIENT", "KILL", "ID", connection_id)
    with pytest.raises(redis.ConnectionError):
        blocked()
    with pytest.raises(redis.ConnectionError, match="lost before the replies were read"):
        behind()
    assert first() == [1]
    assert pipe.write([("INCR", key)])() == [3]  # on a new connection
    client.delete(key)


# -- the pool of taskd's own clients (redisdb.connect) ---------------------------------------


def _connected(**env: str) -> Any:
    return redisdb.connect(REDIS_URL, load_config(env=env), "broker")


def test_a_connection_given_back_is_taken_again_without_redis_pys_checkout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = _connected()
    try:
        first = redisdb.command(client, ("CLIENT", "ID"))
        checkouts: list[Any] = []
        checkout = redis.ConnectionPool.get_connection
        monkeypatch.setattr(
            redis.ConnectionPool,
            "get_connection",
            lambda pool, *a, **k: checkouts.append(pool) or checkout(pool, *a, **k),
        )
        for _ in range(20):  # taskd's lean path and redis-py's own commands alike
            assert redisdb.command(client, ("CLIENT", "ID")) == first
            assert client.client_id() == first
        assert checkouts == []
    finally:
        client.close()


def test_a_bounded_pool_is_never_exhausted_by_the_connections_kept(redis_namespace: str) -> None:
    client = _connected(TASKD_REDIS_MAX_ACTIVE="2")
    key = f"{redis_namespace}:n"
    pool = client.connection_pool
    try:
        held = [pool.get_connection(), pool.get_connection()]
        with pytest.raises(redis.ConnectionError, match="Too many connections"):
            pool.get_connection()  # the limit holds
        for connection in held:
            pool.release(connection)  # kept, and taken first by whoever comes next
        failures: list[BaseException] = []

        def hammer() -> None:
            try:
                for _ in range(200):
                    redisdb.command(client, ("INCR", key))
                    client.incr(key)
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=hammer) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert failures == []
        assert int(client.get(key)) == 800
    finally:
        client.delete(key)
        client.close()


def test_a_forked_child_leaves_the_parents_kept_connection_alone() -> None:
    client = _connected()
    try:
        parent_id = client.client_id()  # its connection is kept now
        reader, writer = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: a connection of its own, the parent's left open
            try:
                os.write(writer, str(client.client_id()).encode())
            finally:
                os._exit(0)
        os.close(writer)
        child_id = int(os.read(reader, 64))
        os.close(reader)
        os.waitpid(pid, 0)
        assert child_id != parent_id
        assert client.client_id() == parent_id  # still open and still the parent's
    finally:
        client.close()
