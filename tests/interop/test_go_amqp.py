"""Go's side of machinery's AMQP layout, for real: the program in ``machinery_amqp.go``
(machinery's struct layouts, Go's encoding/json, the rabbitmq/amqp091-go client) against
taskd on RabbitMQ, broker and result backend both.

Skipped where Go or Debian's amqp091-go is not installed; ``.ci/run`` installs both.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

from taskd.wire import State
from tests.interop.goprograms import GoProgram, json_lines, send_now_and_later
from tests.support.harness import (
    AMQP_URL,
    TEST_RESULTS_EXPIRE_S,
    TEST_TASKS,
    Daemon,
    amqp_connection,
    config_data,
    write_config,
)
from tests.support.tasks import runs

EXPIRE_S = str(TEST_RESULTS_EXPIRE_S)


def delete_queues(names: Iterable[str]) -> None:
    """machinery's queues named by task and group ids, which no namespace covers."""
    import pika

    with amqp_connection() as connection:
        for name in names:
            with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
                connection.channel().queue_delete(name)


def test_a_go_producer_s_tasks_run_and_go_reads_every_state_from_its_queues(
    go_machinery_amqp: GoProgram,
    amqp_namespace: str,
    tmp_path: Path,
    daemon: Callable[..., Daemon],
) -> None:
    """add, sum_ints, concat, a chain, a chord, a failing task and a task delayed through
    machinery's per-delay queue, sent as machinery's SendTask, SendChain and SendChord do
    with AMQP broker and results; Go reads each task's states by consuming its queue, as
    machinery's AsyncResult.Get does, down to the very bytes taskd wrote."""
    data = config_data("amqp", amqp_namespace, tmp_path, imports=[TEST_TASKS])
    exchange, binding_key = data["amqp"]["exchange"], data["amqp"]["binding_key"]
    process = daemon(write_config(tmp_path, data), "--concurrency", "2")
    process.wait_ready(2)  # queue bound and consumed: machinery's publishes are not mandatory
    stamps = tmp_path / "stamps"
    sent = json.loads(
        go_machinery_amqp("send", AMQP_URL, exchange, binding_key, str(stamps), EXPIRE_S)
    )
    head, last = sent["chain"]
    *members, callback = sent["chord"]
    names = ["add", "sum_ints", "concat", "eta", "fail"]
    ids = [*(sent[name] for name in names), head, last, *members, callback]
    try:
        read = json_lines(go_machinery_amqp("states", AMQP_URL, exchange, EXPIRE_S, "30", *ids))
    finally:
        delete_queues([*ids, sent["group"], sent["delayed_to"]])
    states = dict(zip(ids, read, strict=True))
    assert all(state["identical"] for state in read)  # Go writes back taskd's very bytes
    failed = states[sent["fail"]]
    assert failed["state"] == "FAILURE"
    assert failed["error"] == 'it broke: <&> "quoted" \\ ünïcode \u2028 tab\t'
    results = {
        task_id: state["values"] for task_id, state in states.items() if task_id != sent["fail"]
    }
    assert results == {
        sent["add"]: [5],
        sent["sum_ints"]: [6],
        sent["concat"]: ["foo<&>bär"],
        sent["eta"]: [],
        head: [3],
        last: [12],  # multiply(4, 3)
        members[0]: [2],
        members[1]: [4],
        callback: [6],  # add() with the group's results, 2 and 4
    }
    assert all(states[task_id]["state"] == "SUCCESS" for task_id in results)
    # What Go sent it read from its own PENDING on; the chain's next link and the chord's
    # callback, which taskd sent, from the states taskd copied to their queues.
    for task_id in [*(sent[name] for name in names), head, *members]:
        assert states[task_id]["walked"][0] == State.PENDING.value, task_id
    for task_id in (last, callback):
        assert State.PENDING.value not in states[task_id]["walked"], task_id
    (ran_at,) = (float(stamp) for stamp in runs(stamps))
    assert ran_at >= sent["eta_unix"]  # not before its ETA
    assert len(process.events("task_succeeded")) == len(results)  # each ran once
    assert process.process.poll() is None


def test_what_taskctl_sends_on_amqp_a_go_worker_runs(
    go_machinery_amqp: GoProgram, amqp_namespace: str, tmp_path: Path
) -> None:
    """No daemon: a Go worker consumes the queue as machinery's does, and decodes each
    message, one sent with a countdown included, to the very bytes taskctl sent."""
    data = config_data("amqp", amqp_namespace, tmp_path)
    exchange, binding_key = data["amqp"]["exchange"], data["amqp"]["binding_key"]
    config = write_config(tmp_path, data)
    now_id, later_id = send_now_and_later(tmp_path, config)

    queue = data["default_queue"]
    ran = json_lines(go_machinery_amqp("work", AMQP_URL, exchange, binding_key, queue, "2", "30"))
    by_id = {run["id"]: run for run in ran}
    assert set(by_id) == {now_id, later_id}
    for run in ran:
        assert run["identical"] and run["persistent"]
        assert run["content_type"] == "application/json"
        assert run["routing_key"] == run["delivered_by"] == binding_key
    assert (by_id[now_id]["eta_unix"], by_id[now_id]["result"]) == (None, 5)
    assert by_id[later_id]["result"] == 9
    assert by_id[later_id]["ran_unix"] >= by_id[later_id]["eta_unix"]
