"""The embedded broker's doorbell, and the SQLite pair's one-transaction send and settle."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from taskd.backends import open_backend
from taskd.brokers import Message, open_broker
from taskd.brokers.doorbell import Doorbell
from taskd.pairs import sender_for, settler_for
from taskd.wire import GoTime, State, TaskState, new_id


def test_a_ring_wakes_a_waiting_consumer(tmp_path: Path) -> None:
    database = tmp_path / "q.db"
    Doorbell(database).ring()  # nobody waits, no FIFO yet: nothing happens
    waiter, woke = Doorbell(database), threading.Event()
    waiter.wait(0.001)  # now the FIFO is there and the consumer holds its end

    def wait() -> None:
        waiter.wait(60)
        woke.set()

    started = time.monotonic()
    threading.Thread(target=wait, daemon=True).start()
    ringer = Doorbell(database)
    ringer.ring()
    assert woke.wait(30)
    assert time.monotonic() - started < 30  # rung, not timed out after 60 s
    ringer.close()
    waiter.close()


def test_a_doorbell_that_is_no_fifo_only_sleeps(tmp_path: Path) -> None:
    database = tmp_path / "q.db"
    Path(f"{database}.doorbell").write_text("not a FIFO")
    bell = Doorbell(database)
    bell.ring()
    started = time.monotonic()
    bell.wait(0.05)
    assert time.monotonic() - started >= 0.05
    bell.close()


@pytest.fixture
def one_file(make_config: Callable[..., Any], tmp_path: Path) -> Any:
    return make_config("sqlite")


def test_one_sqlite_file_sends_and_settles_in_one_transaction(
    one_file: Any, make_config: Callable[..., Any], tmp_path: Path
) -> None:
    broker, backend = open_broker(one_file), open_backend(one_file)
    elsewhere = open_backend(make_config("sqlite", result_backend=f"sqlite://{tmp_path}/r.db"))
    assert settler_for(broker, elsewhere) is None  # two files: states, then acks
    settle = settler_for(broker, backend)
    assert settle is not None
    task_id = new_id()
    pending = TaskState(task_id, State.PENDING, task_name="t", created_at=GoTime.now())
    sender_for(broker, backend)([Message("q", b"body")], [pending], True)
    assert backend.get_state(task_id) == pending
    (delivery,) = broker.fetch("q", max_messages=1, wait_s=0)

    def broken(_conn: Any) -> None:
        raise RuntimeError("the state write failed")

    with pytest.raises(RuntimeError):
        broker.ack_many([delivery], also=broken)
    assert broker.holding("q").in_flight == 1  # not acked: the transaction rolled back
    done = pending.with_changes(state=State.SUCCESS)
    settle([done], [delivery])
    assert backend.get_state(task_id).state is State.SUCCESS  # type: ignore[union-attr]
    assert broker.holding("q").in_flight == 0 and broker.size("q") == 0
    for driver in (broker, backend, elsewhere):
        driver.close()


def test_the_embedded_broker_knows_when_more_messages_are_ready(one_file: Any) -> None:
    broker = open_broker(one_file)
    assert not broker.more_ready("q")
    broker.publish_many([Message("q", b"one"), Message("q", b"two"), Message("q", b"three")])
    assert broker.more_ready("q")
    assert len(broker.fetch("q", max_messages=2, wait_s=0)) == 2
    assert broker.more_ready("q")  # a full batch, and one left
    assert len(broker.fetch("q", max_messages=2, wait_s=0)) == 1
    assert not broker.more_ready("q")
    broker.publish_many([Message("q", b"later", GoTime(time.time_ns() + 60 * 10**9))])
    assert not broker.more_ready("q")  # not due for a minute
    broker.close()
