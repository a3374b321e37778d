"""Client behaviour that needs no server: in-memory drivers."""

from __future__ import annotations

import pytest

from taskd.client import Client
from taskd.config import Config
from taskd.errors import NotSupported
from tests.support.fakes import MemoryBackend, MemoryBroker


def test_a_priority_the_broker_cannot_honour_is_refused_before_anything_is_recorded() -> None:
    broker, backend = MemoryBroker(), MemoryBackend()
    client = Client(Config(default_queue="tasks"), broker=broker, backend=backend)
    with pytest.raises(NotSupported, match="priority is not supported"):
        client.send("count", 1, priority=3)
    assert backend.states == {}  # no PENDING left behind for a task never sent
    assert broker.queues.get("tasks", []) == []
    client.send("count", 1)  # without one it goes
    assert len(broker.queues["tasks"]) == 1


def test_send_many_records_every_pending_then_publishes_in_order() -> None:
    from taskd.client import signature
    from taskd.wire import State, decode_signature

    broker, backend = MemoryBroker(), MemoryBackend()
    client = Client(Config(default_queue="tasks"), broker=broker, backend=backend)
    results = client.send_many([signature("count", n) for n in range(5)])
    bodies = [decode_signature(body) for body, _ in broker.queues["tasks"]]
    assert [sig.uuid for sig in bodies] == [result.task_id for result in results]
    assert [sig.args[0].value for sig in bodies] == [0, 1, 2, 3, 4]
    assert {backend.states[r.task_id].state for r in results} == {State.PENDING}


def test_signature_time_limits_travel_as_headers() -> None:
    from taskd.client import signature

    assert signature("t").headers is None
    assert signature("t", time_limit=10, soft_time_limit=0.5).headers == {
        "time_limit": 10,
        "soft_time_limit": "0.5",
    }
    with pytest.raises(ValueError, match="time_limit must be a number of seconds"):
        signature("t", time_limit=-1)
