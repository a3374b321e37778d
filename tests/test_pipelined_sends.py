"""Pipelined sends (``taskd.confirms``): a send returns before its confirm, and no refused or
unconfirmed send goes unnoticed."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from taskd.client import Client, signature
from taskd.confirms import Window
from taskd.errors import BrokerError, BrokerUnavailable, ResultTimeout, SendError
from taskd.wire import Arg, State, TaskState, decode_signature
from tests.support.harness import config_data, wait_until, write_config

# -- the window, with confirms the test controls ---------------------------------------------


def _sends(window: Window, log: list[str], count: int, fail: set[int] = frozenset()) -> None:
    """``count`` sends named t0, t1...; the confirms of the numbers in ``fail`` raise."""
    for n in range(count):

        def confirm(n: int = n) -> None:
            log.append(f"confirm t{n}")
            if n in fail:
                raise BrokerError("fake", f"t{n} refused")

        def write(n: int = n) -> tuple[Callable[[], None], list[Any]]:
            log.append(f"write t{n}")
            return confirm, [signature("task", task_id=f"t{n}")]

        window.send(write)


def test_a_full_window_takes_in_the_oldest_confirm_before_writing() -> None:
    window, log = Window(2), []
    _sends(window, log, 4)
    assert log == ["write t0", "write t1", "confirm t0", "write t2", "confirm t1", "write t3"]
    window.flush()
    assert log[-2:] == ["confirm t2", "confirm t3"]
    assert len(window) == 0


def test_a_full_window_takes_in_its_older_half_at_once_before_writing() -> None:
    window, log = Window(6), []
    _sends(window, log, 10)
    writes = [f"write t{n}" for n in range(10)]
    halves = [f"confirm t{n}" for n in range(3)], [f"confirm t{n}" for n in range(3, 6)]
    assert log == [*writes[:6], *halves[0], *writes[6:9], *halves[1], writes[9]]
    assert len(window) == 4  # never more than 6 awaiting


def test_without_a_window_each_send_is_confirmed_before_it_returns() -> None:
    window, log = Window(0), []
    _sends(window, log, 2)
    assert log == ["write t0", "confirm t0", "write t1", "confirm t1"]


def test_a_failed_confirm_names_its_tasks_and_the_later_ones_are_still_confirmed() -> None:
    window, log = Window(10), []
    _sends(window, log, 4, fail={1, 2})
    with pytest.raises(SendError) as caught:
        window.flush()
    assert caught.value.task_ids == ("t1", "t2")
    assert [sig.name for sig in caught.value.signatures] == ["task", "task"]
    assert "t1 refused" in str(caught.value)
    assert "confirm t3" in log
    window.flush()  # nothing left: no error twice


def test_a_send_that_finds_an_earlier_failure_is_not_written() -> None:
    window, log = Window(1), []
    _sends(window, log, 1, fail={0})
    with pytest.raises(SendError, match="t0"):
        _sends(window, log, 1)
    assert log == ["write t0", "confirm t0"]  # the second send was never written


def _refused_sends(window: Window, log: list[str], refusals: list[int], *, unsent: bool) -> None:
    """Sends t0, t1... whose confirms raise BrokerUnavailable (``unsent``: nothing took
    effect) for the first ``refusals[n]`` times tn is written."""
    writes = [0] * len(refusals)
    for n in range(len(refusals)):

        def write(n: int = n) -> tuple[Callable[[], None], list[Any]]:
            writes[n] += 1
            log.append(f"write t{n}")
            refused = writes[n] <= refusals[n]

            def confirm() -> None:
                log.append(f"confirm t{n}")
                if refused:
                    raise BrokerUnavailable("fake", f"t{n} refused", unsent=unsent)

            return confirm, [signature("task", task_id=f"t{n}")]

        window.send(write)


def test_a_send_refused_before_it_took_effect_is_made_again_in_its_turn() -> None:
    """A Redis demoted to a replica refuses a send without running any of it (``unsent``):
    as its confirm is taken in, the send is made again, within the patience, before the
    later confirms, and no SendError is raised for it."""
    patience: list[int] = []

    def patiently(call: Callable[[], Any]) -> Any:
        patience.append(1)
        return call()

    window, log = Window(10, patiently), []
    _refused_sends(window, log, [1, 0], unsent=True)
    window.flush()
    assert log == ["write t0", "write t1", "confirm t0", "write t0", "confirm t0", "confirm t1"]
    assert patience == [1]


def test_a_refused_send_that_may_have_taken_effect_is_not_made_again() -> None:
    window, log = Window(10), []
    _refused_sends(window, log, [1], unsent=False)
    with pytest.raises(SendError, match="t0 refused"):
        window.flush()
    assert log == ["write t0", "confirm t0"]


def test_once_the_patience_runs_out_the_other_refused_sends_fail_at_once() -> None:
    """Without it, each send of a full window would wait out the patience in turn."""
    window, log = Window(10), []  # no patience: a send made again is refused again
    _refused_sends(window, log, [9, 9, 0], unsent=True)
    with pytest.raises(SendError) as caught:
        window.flush()
    assert caught.value.task_ids == ("t0", "t1")
    assert log[3:] == ["confirm t0", "write t0", "confirm t0", "confirm t1", "confirm t2"]


# -- on Redis --------------------------------------------------------------------------------


@pytest.fixture
def redis_client(redis_namespace: str, tmp_path: Path) -> Iterator[Callable[..., Client]]:
    from taskd.config import load_config

    opened: list[Client] = []
    data = config_data("redis", redis_namespace, tmp_path, default_queue=f"{redis_namespace}:q")
    path = write_config(tmp_path, data)

    def make(**options: Any) -> Client:
        client = Client(load_config(path), **options)
        opened.append(client)
        return client

    yield make
    for client in opened:
        with contextlib.suppress(SendError):  # the tests that provoke one have checked it
            client.close()


def test_sends_on_their_way_are_all_queued_and_recorded_once_flushed(
    redis_client: Callable[..., Client], redis_server: Any, redis_namespace: str
) -> None:
    client = redis_client(pipeline=64)
    results = [client.send("count", n) for n in range(200)]
    assert len(client._window) > 0  # some still await their replies
    client.flush()
    assert len(client._window) == 0
    queued = [decode_signature(raw) for raw in redis_server.lrange(f"{redis_namespace}:q", 0, -1)]
    assert [sig.uuid for sig in queued] == [r.task_id for r in results]
    states = client.backend.get_states([r.task_id for r in results])
    assert {state.state for state in states} == {State.PENDING}


def test_reading_a_result_first_takes_in_the_sends_before_it(
    redis_client: Callable[..., Client],
) -> None:
    client = redis_client(pipeline=64)
    result = client.send("count", 1)
    assert len(client._window) == 1
    assert result.state().state == State.PENDING
    assert len(client._window) == 0


def test_a_wait_whose_result_is_there_leaves_the_confirms_to_the_next_flush(
    redis_client: Callable[..., Client], redis_server: Any, redis_namespace: str
) -> None:
    """A finished task was delivered, so its result is returned without its confirm; a
    refused send among those still waiting is raised by the next flush, not lost."""
    client = redis_client(pipeline=64)
    result = client.send("count", 1)
    done = TaskState(result.task_id, State.SUCCESS, results=(Arg.of("int64", 7),))
    client.backend.set_states([done])  # as a worker would
    redis_server.set(f"{redis_namespace}:q", "not a list")
    refused = client.send("count", 2)
    assert len(client._window) == 2
    assert result.get(timeout=10) == 7
    assert len(client._window) == 2
    with pytest.raises(SendError) as caught:
        client.flush()
    assert caught.value.task_ids == (refused.task_id,)
    assert len(client._window) == 0


def test_a_wait_for_an_unfinished_task_takes_in_the_confirms_meanwhile(
    redis_client: Callable[..., Client],
) -> None:
    client = redis_client(pipeline=64)
    result = client.send("count", 1)
    with pytest.raises(ResultTimeout):  # no worker: it stays PENDING
        result.get(timeout=0.2)
    assert len(client._window) == 0


def test_a_refused_send_is_raised_from_a_wait_for_its_result_not_waited_for(
    redis_client: Callable[..., Client], redis_server: Any, redis_namespace: str
) -> None:
    redis_server.set(f"{redis_namespace}:q", "not a list")
    client = redis_client(pipeline=64)
    result = client.send("count", 1)
    with pytest.raises(SendError) as caught:  # not ResultTimeout after 60 s
        result.get(timeout=60)
    assert caught.value.task_ids == (result.task_id,)


def test_a_refused_send_is_raised_from_the_flush_naming_its_task(
    redis_client: Callable[..., Client], redis_server: Any, redis_namespace: str
) -> None:
    redis_server.set(f"{redis_namespace}:q", "not a list")  # RPUSH gets WRONGTYPE
    client = redis_client(pipeline=64)
    sent = client.send("count", 1)  # written; its reply is read later
    with pytest.raises(SendError) as caught:
        client.flush()
    assert caught.value.task_ids == (sent.task_id,)
    assert isinstance(caught.value.cause, BrokerError)
    assert "WRONGTYPE" in str(caught.value)


def test_without_a_pipeline_the_refusal_is_raised_by_the_send_itself(
    redis_client: Callable[..., Client], redis_server: Any, redis_namespace: str
) -> None:
    redis_server.set(f"{redis_namespace}:q", "not a list")
    client = redis_client(pipeline=0)
    with pytest.raises(BrokerError, match="WRONGTYPE"):  # as the drivers raise it
        client.send("count", 1)
    assert len(client._window) == 0


def test_sends_whose_connection_is_lost_before_their_replies_are_raised(
    redis_client: Callable[..., Client], redis_server: Any, redis_namespace: str
) -> None:
    client = redis_client(pipeline=64)
    lost = [client.send("count", n).task_id for n in range(3)]
    client.broker.redis.connection_pool.disconnect()  # their replies can no longer be read
    with pytest.raises(SendError) as caught:
        client.flush()
    assert caught.value.task_ids == tuple(lost)
    again = client.send("count", 9)  # a new connection
    client.flush()
    queued = [
        decode_signature(raw).uuid for raw in redis_server.lrange(f"{redis_namespace}:q", 0, -1)
    ]
    assert queued[-1] == again.task_id


def test_a_program_that_exits_without_closing_hears_of_its_refused_sends(
    redis_server: Any, redis_namespace: str, tmp_path: Path
) -> None:
    redis_server.set(f"{redis_namespace}:q", "not a list")
    data = config_data("redis", redis_namespace, tmp_path, default_queue=f"{redis_namespace}:q")
    path = write_config(tmp_path, data)
    program = (
        "from taskd import Client\n"
        "print(Client().send('count', 1).task_id, flush=True)\n"  # no close(), no flush()
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        env={**os.environ, "TASKD_CONFIG": str(path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    task_id = done.stdout.splitlines()[0]
    assert task_id.startswith("task_")
    said = done.stdout + done.stderr  # structlog's default: stdout
    assert "sends_unconfirmed_at_exit" in said
    assert task_id in said.split("sends_unconfirmed_at_exit", 1)[1]  # the log line names it


def test_a_forked_child_sends_on_its_own_connection_and_leaves_the_parents_confirms(
    redis_client: Callable[..., Client], redis_server: Any, redis_namespace: str
) -> None:
    client = redis_client(pipeline=64)
    before = [client.send("count", n).task_id for n in range(3)]  # awaiting their replies
    pid = os.fork()
    if pid == 0:  # the child: its send must not read, or answer for, the parent's replies
        status = 1
        try:
            sent = client.send("count", 99)
            client.flush()
            status = 0 if len(client._window) == 0 and sent.task_id not in before else 1
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(client._window) == 3  # still the parent's to take in
    client.flush()
    queued = [
        decode_signature(raw).uuid for raw in redis_server.lrange(f"{redis_namespace}:q", 0, -1)
    ]
    assert queued[:3] == before
    assert len(queued) == 4


def test_other_pairs_take_in_their_pending_writes_with_the_confirms_on_one_connection(
    redis_namespace: str, redis_server: Any, tmp_path: Path
) -> None:
    """Results in another database than the broker's: the PENDING writes are not awaited
    one by one, and their replies wait on one connection, so a pool of two is plenty."""
    from taskd.config import load_config

    data = config_data(
        "redis",
        redis_namespace,
        tmp_path,
        result_backend="redis://127.0.0.1:6379/1",
        redis={"max_active": 2, "wait": True},
    )
    client = Client(load_config(write_config(tmp_path, data)), pipeline=64)
    results = [client.send("count", n) for n in range(100)]
    try:
        assert len(client._window) > 0
        pool = client.backend._redis.connection_pool  # redis-py's BlockingConnectionPool
        idle = {connection for connection in pool.pool.queue if connection}
        assert len(pool._connections) - len(idle) == 1  # the replies still to read are on it
        client.flush()
        states = client.backend.get_states([r.task_id for r in results])
        assert {state.state for state in states} == {State.PENDING}
        assert redis_server.llen(redis_namespace) == 100
    finally:
        client.close()
        results_db = redis.Redis.from_url("redis://127.0.0.1:6379/1")
        results_db.delete(*(r.task_id for r in results))
        results_db.close()


def test_a_window_still_to_read_its_replies_is_not_interrupted_by_a_health_check(
    redis_server: Any, redis_namespace: str, tmp_path: Path
) -> None:
    """redis-py PINGs a connection that has read nothing for redis.max_idle_timeout before
    its next write: on a connection whose window of sends has not read its replies yet, that
    PING read a send's reply instead ('Bad response from PING health check'), and the
    window's replies were lost. Sends a little apart (not idle long enough to be taken
    afresh) keep their connection past that timeout here."""
    import time

    from taskd.config import load_config

    queue = f"{redis_namespace}:q"
    data = config_data("redis", redis_namespace, tmp_path, default_queue=queue)
    data["redis"] |= {"max_idle_timeout": 1}
    client = Client(load_config(write_config(tmp_path, data), env={}), pipeline=64)
    sent = []
    started = time.monotonic()
    while time.monotonic() - started < 1.6:
        sent.append(client.send("count", len(sent)).task_id)
        next_at = time.monotonic() + 0.25
        wait_until(lambda at=next_at: time.monotonic() >= at, 5, 0.01)  # a send every 0.25 s
    client.close()  # every confirm taken in
    assert [decode_signature(raw).uuid for raw in redis_server.lrange(queue, 0, -1)] == sent


def test_after_a_failed_confirm_one_error_names_every_send_that_failed() -> None:
    """A lost connection loses every confirm still to come on it: the producer hears of them
    all at once, not from each of its next sends in turn."""
    window, log = Window(3), []
    _sends(window, log, 3, fail={0, 1, 2})
    with pytest.raises(SendError) as caught:
        _sends(window, log, 1)  # a full window: the oldest is taken in first
    assert caught.value.task_ids == ("t0", "t1", "t2")
    assert len(window) == 0
    _sends(window, log, 1)  # written: no earlier failure left to raise
    assert log[-1] == "write t0"
