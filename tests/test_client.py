"""Client behaviour that needs no server: in-memory drivers."""

from __future__ import annotations

import pytest

from taskd.client import Client
from taskd.config import Config
from taskd.errors import NotSupported
from taskd.wire import Arg, GoTime, Signature
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


CALLBACKS = (Signature(name="cb"),)


@pytest.mark.parametrize(
    ("option", "field", "value"),
    [
        ("task_id", "uuid", "task_given"),
        ("queue", "routing_key", "reports"),
        ("eta", "eta", GoTime.parse("2030-01-02T03:04:05Z")),
        ("headers", "headers", {"h": 1}),
        ("priority", "priority", 7),
        ("immutable", "immutable", True),
        ("retry_count", "retry_count", 3),
        ("retry_timeout", "retry_timeout", 5),
        ("on_success", "on_success", CALLBACKS),
        ("on_error", "on_error", CALLBACKS),
    ],
)
def test_each_option_of_signature_lands_in_its_own_field(
    option: str, field: str, value: object
) -> None:
    """signature() builds a Signature from its fields in order (not through its __init__):
    each option given alone is where Signature's own constructor puts it, nowhere else."""
    from taskd.client import signature

    built = signature("t", 1, **{option: value})
    assert built == Signature(name="t", args=(Arg("int64", 1),), **{field: value})


def test_a_pending_state_may_keep_a_later_one_only_for_an_id_made_here() -> None:
    """An id the client makes is fresh (its PENDING must not overwrite a worker's state that
    landed first); an id the caller gives may be a re-send, whose PENDING replaces the record."""
    from taskd.client import signature

    class Recording(MemoryBackend):
        def __init__(self) -> None:
            super().__init__()
            self.fresh: list[bool] = []

        def begin_pending(self, states, *, fresh):  # type: ignore[no-untyped-def]
            self.fresh.append(fresh)
            return super().begin_pending(states, fresh=fresh)

    backend = Recording()
    client = Client(Config(default_queue="tasks"), broker=MemoryBroker(), backend=backend)
    client.send("count", 1)
    client.send("count", 1, task_id="task_given")
    client.send(signature("count", 1))
    client.send(signature("count", 1, task_id="task_given_too"))
    client.flush()
    assert backend.fresh == [True, False, True, False]


def test_a_task_sent_by_name_is_filled_in_as_machinerys_send_task_does() -> None:
    from taskd.client import signature
    from taskd.wire import decode_signature

    broker = MemoryBroker()
    client = Client(Config(default_queue="tasks"), broker=broker, backend=MemoryBackend())
    by_name = client.send("count", 1, headers={"trace": "t1"}, time_limit=5)
    given = client.send(signature("count", 1))
    client.send("count", 1, queue="other")
    first, second = (decode_signature(body) for body, _ in broker.queues["tasks"])
    assert first.uuid == by_name.task_id and first.uuid.startswith("task_")
    assert first.routing_key == "tasks"
    assert first.headers == {"trace": "t1", "time_limit": 5}
    assert second.uuid == given.task_id and second.headers == {}
    assert first.encode().count(b'"Headers":{') == 1
    (other,) = (decode_signature(body) for body, _ in broker.queues["other"])
    assert other.routing_key == "other" and other.headers == {}


@pytest.mark.parametrize("driver", ["broker", "backend"])
def test_threads_sharing_a_new_client_open_each_driver_once(
    driver: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second driver, opened by a thread that raced the first and then dropped, closed its
    connections under sends still reading their replies (seen with 8 threads sending at
    once: 'Connection closed by server' for PENDING writes)."""
    import threading

    import taskd.client

    opened: list[int] = []
    second_one = threading.Event()

    def open_slowly(config: Config) -> object:
        opened.append(threading.get_ident())
        if len(opened) > 1:
            second_one.set()
        second_one.wait(timeout=1.0)  # time for a second thread to come in, if it may
        return MemoryBroker() if driver == "broker" else MemoryBackend()

    monkeypatch.setattr(taskd.client, f"open_{driver}", open_slowly)
    client = Client(Config())
    start = threading.Barrier(6)
    got: list[object] = []

    def use() -> None:
        start.wait(timeout=10)
        got.append(getattr(client, driver))

    threads = [threading.Thread(target=use) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert len(opened) == 1
    assert len(got) == 6 and all(each is got[0] for each in got)


def test_a_wait_rides_out_a_backend_outage_only_as_long_as_it_may_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import taskd.client
    from taskd.errors import BackendUnavailable
    from taskd.wire import State, TaskState

    backend = MemoryBackend()
    client = Client(Config(), broker=MemoryBroker(), backend=backend)
    backend.states["task_1"] = TaskState("task_1", State.SUCCESS, task_name="t")
    backend.fail("get_states", 3)  # a short outage: the wait goes on through it
    assert client.wait_states(["task_1"], timeout_s=30)[0].state is State.SUCCESS
    assert backend.failures["get_states"] == 0

    backend.fail("get_states", 10**6)  # one that outlasts the wait: its error, not a timeout
    with pytest.raises(BackendUnavailable):
        client.wait_states(["task_1"], timeout_s=0.3)
    monkeypatch.setattr(taskd.client, "OUTAGE_PATIENCE_S", 0.3)
    with pytest.raises(BackendUnavailable):  # no timeout: the outage's patience runs out
        client.wait_states(["task_1"])


def test_a_send_rides_out_a_broker_it_cannot_reach_only_where_nothing_was_sent() -> None:
    from taskd.errors import BrokerUnavailable

    broker, backend = MemoryBroker(), MemoryBackend()
    client = Client(Config(default_queue="tasks"), broker=broker, backend=backend)
    broker.fail("publish_many", 3, unsent=True)  # no connection: tried again, and it goes
    client.send("count", 1)
    assert broker.failures["publish_many"] == 0
    assert len(broker.queues["tasks"]) == 1

    broker.fail("publish_many", 1)  # lost after it was written: it may be queued
    with pytest.raises(BrokerUnavailable):
        client.send("count", 2)
    assert len(broker.called("publish_many")) == 1  # not made again
    client.send("count", 3)
    assert len(broker.queues["tasks"]) == 2


def test_a_send_gives_up_on_an_unreachable_broker_after_its_patience() -> None:
    from taskd.errors import BrokerUnavailable

    broker, backend = MemoryBroker(), MemoryBackend()
    impatient = Client(Config(), broker=broker, backend=backend, send_patience=0)
    broker.fail("publish_many", 2, unsent=True)
    with pytest.raises(BrokerUnavailable) as caught:
        impatient.send("count", 1)
    assert caught.value.unsent
    assert broker.failures["publish_many"] == 1  # one attempt only

    patient = Client(Config(), broker=broker, backend=backend, send_patience=0.3)
    broker.fail("publish_many", 10**6, unsent=True)
    with pytest.raises(BrokerUnavailable):
        patient.send("count", 1)
    assert 10**6 - broker.failures["publish_many"] > 1  # tried more than once meanwhile
    assert broker.queues.get("default", []) == []


def test_a_send_whose_pending_state_cannot_be_written_is_made_again_whole() -> None:
    """Before anything is published, a backend outage leaves nothing a second attempt would
    duplicate; the message goes out once."""
    broker, backend = MemoryBroker(), MemoryBackend()
    client = Client(Config(default_queue="tasks"), broker=broker, backend=backend)
    backend.fail("set_states", 2)  # not marked unsent by the backend itself
    sent = client.send("count", 1)
    assert len(broker.queues["tasks"]) == 1
    assert backend.states[sent.task_id].state.value == "PENDING"


def test_workflows_ride_out_a_backend_outage_before_they_publish() -> None:
    from taskd.client import signature
    from taskd.workflows import chain, group

    broker, backend = MemoryBroker(), MemoryBackend()
    client = Client(Config(default_queue="tasks"), broker=broker, backend=backend)
    backend.fail("init_group", 2)
    sent = client.send_group(group(*[signature("count", n) for n in range(3)]))
    assert backend.groups[sent.group_id].task_uuids == sent.member_ids
    backend.fail("set_states", 2)
    client.send_chain(chain(signature("count", 1), signature("count", 2)))
    assert len(broker.queues["tasks"]) == 4
