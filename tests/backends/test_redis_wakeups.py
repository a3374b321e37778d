"""Redis results without polling: a waiter registers, a worker's final state is pushed to it,
and polling stays the fallback for states written by others (Go workers)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from taskd import redis_scripts
from taskd.backends import ResultBackend, base, open_backend
from taskd.backends import redis as redis_backend
from taskd.wire import GoTime, State, TaskState, new_id
from tests.support.harness import wait_until


@pytest.fixture
def backend(drivers: Callable[..., Any]) -> ResultBackend:
    return drivers(open_backend)


@pytest.fixture
def driver_kind() -> str:
    return "redis"


def _state(task_id: str, state: State) -> TaskState:
    return TaskState(task_id, state, task_name="t", created_at=GoTime.now())


def test_a_final_state_is_pushed_to_each_registered_waiter(
    backend: Any, redis_server: Any, namespace: str
) -> None:
    task_id, other = new_id(), new_id()
    waiters = [f"{namespace}:waiter:{n}" for n in range(2)]
    for waiter in waiters:
        assert backend._register(waiter, [task_id], 0.01) == ([None], [])
    backend.set_states([_state(task_id, State.STARTED), _state(other, State.SUCCESS)])
    assert [redis_server.llen(waiter) for waiter in waiters] == [0, 0]  # not final; not theirs
    backend.set_states([_state(task_id, State.SUCCESS)])
    for waiter in waiters:
        (pushed,) = backend._pushed(waiter, 1.0, several=False)
        assert (pushed.task_uuid, pushed.state) == (task_id, State.SUCCESS)
        assert redis_server.ttl(waiter) > 0 or not redis_server.exists(waiter)
    assert not redis_server.exists(f"{namespace}:waiting:{task_id}")  # told: registrations go
    backend.set_states([_state(task_id, State.FAILURE)])  # nobody waits any more: no push
    assert [redis_server.exists(waiter) for waiter in waiters] == [0, 0]


def test_a_waiter_is_woken_by_the_push_not_by_reading_again(
    backend: Any, drivers: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_backend, "WAKE_FIRST_CHECK_S", 60.0)  # no read again in time
    task_id = new_id()
    backend.set_states([_state(task_id, State.PENDING)])
    worker = drivers(open_backend)
    reads: list[int] = []
    register = backend._register
    monkeypatch.setattr(backend, "_register", lambda *a: reads.append(1) or register(*a))

    def finish() -> None:
        time.sleep(0.3)  # the waiter blocks by now
        worker.set_states([_state(task_id, State.SUCCESS)])

    writer = threading.Thread(target=finish)
    writer.start()
    (got,) = backend.wait_states([task_id], 10)
    writer.join()  # its reply may still be on its way when the push has woken the waiter
    assert got.state is State.SUCCESS
    assert reads == [1]  # registered once, then woken


def test_a_group_s_states_are_taken_in_batches_and_each_checked_once(
    backend: Any,
    drivers: Callable[..., Any],
    namespace: str,
    redis_server: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Waiting on 2,000 members, stored by a worker 500 at a time: each state pushed is
    checked once (not all of them again for each one: minutes of CPU for 10,000), and those
    pushed together come off the list together (not one round trip each)."""
    monkeypatch.setattr(redis_backend, "WAKE_FIRST_CHECK_S", 60.0)  # woken, never reading again
    checks: list[int] = []
    is_final = base.is_final
    monkeypatch.setattr(base, "is_final", lambda state: checks.append(1) or is_final(state))
    pushes: list[int] = []
    pushed = backend._pushed
    monkeypatch.setattr(backend, "_pushed", lambda *a, **kw: pushes.append(1) or pushed(*a, **kw))
    ids = [new_id() for _ in range(2000)]
    backend.set_states([_state(task_id, State.PENDING) for task_id in ids])
    worker = drivers(open_backend)

    def finish() -> None:
        registered = f"{namespace}:waiting:{ids[-1]}"
        wait_until(lambda: redis_server.exists(registered), 30, 0.01, "the waiter to register")
        for start in range(0, len(ids), 500):
            worker.set_states([_state(task_id, State.SUCCESS) for task_id in ids[start:][:500]])

    writer = threading.Thread(target=finish)
    writer.start()
    got = backend.wait_states(ids, 60)
    writer.join()
    assert [state.task_uuid for state in got] == ids
    assert {state.state for state in got} == {State.SUCCESS}
    assert len(checks) <= 3 * len(ids)
    assert len(pushes) <= 4 * 2  # one per batch; two where a batch landed before a pop


def test_a_state_written_without_a_push_is_still_found(backend: Any, redis_server: Any) -> None:
    task_id = new_id()
    backend.set_states([_state(task_id, State.PENDING)])

    def as_go_writes_it() -> None:  # a plain SET, as machinery's Go worker stores a state
        time.sleep(0.2)
        redis_server.set(task_id, _state(task_id, State.SUCCESS).encode(), ex=60)

    writer = threading.Thread(target=as_go_writes_it)
    writer.start()
    (got,) = backend.wait_states([task_id], 10)
    writer.join()
    assert got.state is State.SUCCESS


def test_registering_for_a_finished_task_does_not_block(
    backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_backend, "WAKE_FIRST_CHECK_S", 60.0)  # the block sent with it
    task_id = new_id()
    backend.set_states([_state(task_id, State.SUCCESS)])
    started = time.monotonic()
    (got,) = backend.wait_states([task_id], 120)
    assert got.state is State.SUCCESS
    assert time.monotonic() - started < 30  # released, not left to block for 60 s


def _client_releases(backend: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the client's own block-ending writes (a pipeline of RPUSH and EXPIRE)."""
    releases: list[int] = []
    pipeline = backend.redis.pipeline
    monkeypatch.setattr(
        backend.redis, "pipeline", lambda **kw: releases.append(1) or pipeline(**kw)
    )
    return releases


def test_the_script_ends_the_block_for_a_finished_task_in_the_same_write(
    backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_backend, "WAKE_FIRST_CHECK_S", 60.0)  # the block sent with it
    releases = _client_releases(backend, monkeypatch)
    done, failed = new_id(), new_id()
    backend.set_states([_state(done, State.SUCCESS), _state(failed, State.FAILURE)])
    got = backend.wait_states([done, failed], 120)
    assert [state.state for state in got] == [State.SUCCESS, State.FAILURE]
    assert releases == []  # register.lua pushed the release: no second round trip


def test_a_record_the_script_cannot_read_is_released_by_the_client(
    backend: Any, redis_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A final state another writer stored with spaces: the script takes it for unfinished,
    the client reads it as final and ends its own block."""
    monkeypatch.setattr(redis_backend, "WAKE_FIRST_CHECK_S", 60.0)
    releases = _client_releases(backend, monkeypatch)
    task_id = new_id()
    spaced = _state(task_id, State.SUCCESS).encode().replace(b'"State":', b'"State": ')
    redis_server.set(task_id, spaced, ex=60)
    started = time.monotonic()
    (got,) = backend.wait_states([task_id], 120)
    assert got.state is State.SUCCESS
    assert releases == [1]
    assert time.monotonic() - started < 30  # released, not left to block for 60 s


def test_after_a_redis_restart_the_script_is_loaded_and_the_block_still_ends(
    backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NOSCRIPT (Redis restarted, its script cache empty): the block already sent waits for
    the script, run again with its source, which registers and ends it."""
    monkeypatch.setattr(redis_backend, "WAKE_FIRST_CHECK_S", 60.0)
    fresh = f"{redis_backend.REGISTER.source}\n-- {new_id()}"  # a SHA-1 Redis has not seen
    monkeypatch.setattr(redis_backend, "REGISTER", redis_scripts.Script(fresh))
    releases = _client_releases(backend, monkeypatch)
    task_id = new_id()
    backend.set_states([_state(task_id, State.SUCCESS)])
    started = time.monotonic()
    (got,) = backend.wait_states([task_id], 120)
    assert got.state is State.SUCCESS
    assert releases == []
    assert time.monotonic() - started < 30


def test_after_a_redis_restart_a_group_s_waiter_still_takes_the_states_pushed_together(
    backend: Any, namespace: str, redis_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NOSCRIPT for take.lua, sent behind the BLPOP: it is loaded and run then, and the
    states pushed behind the first still come off the list, none lost or left."""
    fresh = f"{redis_backend.TAKE.source}\n-- {new_id()}"  # a SHA-1 Redis has not seen
    monkeypatch.setattr(redis_backend, "TAKE", redis_scripts.Script(fresh))
    ids = [new_id() for _ in range(3)]
    waiter = f"{namespace}:waiter:group"
    assert backend._register(waiter, ids, 0.01) == ([None] * 3, [])
    backend.set_states([_state(task_id, State.SUCCESS) for task_id in ids])
    pushed = backend._pushed(waiter, 1.0, several=True)
    assert [state.task_uuid for state in pushed] == ids
    assert not redis_server.exists(waiter)
