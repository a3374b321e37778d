"""machinery's merge rule, in its two implementations held to the same cases.

Python (``wire.state.merged``, used by the SQLite backend) and Lua (``taskd/lua/set_states.lua``,
run by the Redis backend and by a worker's settle script on the real Redis, against records
stored as Go writes them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from taskd.backends import open_backend
from taskd.brokers import Message, open_broker
from taskd.pairs import settler_for
from taskd.wire import ZERO_TIME, GoTime, State, TaskResult, TaskState, decode_state
from taskd.wire.state import merged

SENT = GoTime(1_700_000_000_123_456_789)  # when the sender wrote PENDING
LATER = GoTime(1_700_000_050_000_000_000)  # what a worker without the record would write
ZERO = ZERO_TIME

# (case, stored record or None, new state, what must be stored); task ids are filled in.
CASES: list[tuple[str, TaskState | None, TaskState, TaskState]] = [
    (
        "no record: stored as given",
        None,
        TaskState("", State.STARTED, task_name="add", created_at=LATER),
        TaskState("", State.STARTED, task_name="add", created_at=LATER),
    ),
    (
        "a later state keeps the sender's name and time",
        TaskState("", State.PENDING, task_name="add", created_at=SENT),
        TaskState("", State.STARTED, task_name="other", created_at=LATER),
        TaskState("", State.STARTED, task_name="add", created_at=SENT),
    ),
    (
        "results and error come from the new state",
        TaskState("", State.STARTED, task_name="add", created_at=SENT),
        TaskState(
            "",
            State.SUCCESS,
            task_name="",
            created_at=LATER,
            results=(TaskResult("int64", 3), TaskResult("string", "x")),
        ),
        TaskState(
            "",
            State.SUCCESS,
            task_name="add",
            created_at=SENT,
            results=(TaskResult("int64", 3), TaskResult("string", "x")),
        ),
    ),
    (
        "PENDING replaces the record",
        TaskState("", State.FAILURE, task_name="add", created_at=SENT, error="boom"),
        TaskState("", State.PENDING, task_name="again", created_at=LATER),
        TaskState("", State.PENDING, task_name="again", created_at=LATER),
    ),
    (
        "a record without a name keeps the new name",
        TaskState("", State.PENDING, task_name="", created_at=SENT),
        TaskState("", State.RETRY, task_name="add", created_at=LATER, error="later"),
        TaskState("", State.RETRY, task_name="add", created_at=SENT, error="later"),
    ),
    (
        "a record with a zero time keeps the new time",
        TaskState("", State.PENDING, task_name="add", created_at=ZERO),
        TaskState("", State.FAILURE, task_name="x", created_at=LATER, error="e"),
        TaskState("", State.FAILURE, task_name="add", created_at=LATER, error="e"),
    ),
    (
        "text that looks like the keys is not mistaken for them",
        TaskState("", State.PENDING, task_name="add", created_at=SENT),
        TaskState(
            "",
            State.FAILURE,
            task_name="x",
            created_at=LATER,
            error='","TaskName":"forged","CreatedAt":"2001-01-01T00:00:00Z',
            results=(TaskResult("string", ',"State":"SUCCESS","TTL":1'),),
        ),
        TaskState(
            "",
            State.FAILURE,
            task_name="add",
            created_at=SENT,
            error='","TaskName":"forged","CreatedAt":"2001-01-01T00:00:00Z',
            results=(TaskResult("string", ',"State":"SUCCESS","TTL":1'),),
        ),
    ),
]


def with_id(state: TaskState | None, task_id: str) -> Any:
    return None if state is None else state.with_changes(task_uuid=task_id)


@pytest.mark.parametrize(("case", "stored", "new", "expected"), CASES, ids=[c[0] for c in CASES])
def test_python(case: str, stored: TaskState | None, new: TaskState, expected: TaskState) -> None:
    assert merged(with_id(new, "t"), with_id(stored, "t")) == with_id(expected, "t")


@pytest.mark.parametrize("write", ["set_states", "settle"])
@pytest.mark.parametrize(("case", "stored", "new", "expected"), CASES, ids=[c[0] for c in CASES])
def test_lua_on_redis(
    case: str,
    stored: TaskState | None,
    new: TaskState,
    expected: TaskState,
    write: str,
    redis_namespace: str,
    redis_server: Any,
    make_config: Callable[..., Any],
) -> None:
    """Through the backend, and through a worker's settle (the same Lua, then an ack)."""
    task_id = f"{redis_namespace}-task"
    if stored is not None:  # as a Go worker or sender would have written it
        redis_server.set(task_id, with_id(stored, task_id).encode(), ex=300)
    config = make_config("redis")
    broker, backend = open_broker(config), open_backend(config)
    try:
        if write == "settle":
            broker.publish_many([Message(redis_namespace, b"message")])
            deliveries = broker.fetch(redis_namespace, max_messages=1, wait_s=0)
            settle = settler_for(broker, backend)
            assert settle is not None and len(deliveries) == 1
            settle([with_id(new, task_id)], deliveries)
        else:
            backend.set_states([with_id(new, task_id)])
    finally:
        broker.close()
        backend.close()
    assert decode_state(redis_server.get(task_id)) == with_id(expected, task_id)
