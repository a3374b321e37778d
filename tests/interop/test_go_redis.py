"""Go's side of machinery's Redis layout, for real: the program in ``machinery_redis.go``
(machinery's struct layouts, Go's encoding/json, standard library only) against taskd.

Skipped where Go is not installed; ``.ci/run`` installs it (Debian's golang-go).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from taskd.client import Client, signature
from taskd.config import load_config
from taskd.workflows import chain, chord, group
from tests.interop.goprograms import json_lines, send_now_and_later
from tests.support.harness import (
    REDIS_URL,
    TEST_RESULTS_EXPIRE_S,
    TEST_TASKS,
    Daemon,
    config_data,
    taskctl,
    wait_until,
    write_config,
)
from tests.support.tasks import runs

REDIS_ADDRESS = REDIS_URL.removeprefix("redis://").split("/")[0]  # loopback only
FINAL = {"SUCCESS", "FAILURE"}


def test_a_go_producer_s_tasks_run_and_go_reads_what_taskd_stored(
    go_machinery: Callable[..., str],
    redis_namespace: str,
    tmp_path: Path,
    daemon: Callable[..., Daemon],
) -> None:
    """add, sum_ints, concat, a chain, a chord, a failing task and a task with an ETA, sent
    as machinery's SendTask, SendChain and SendChord do; every state taskd stores reads back
    in Go, and Go encodes it again to the very bytes taskd wrote (the failure's error holds
    every kind of character Go's encoder escapes)."""
    data = config_data("redis", redis_namespace, tmp_path, imports=[TEST_TASKS])
    queue, delayed_key = data["default_queue"], data["redis"]["delayed_tasks_key"]
    process = daemon(write_config(tmp_path, data), "--concurrency", "2")
    process.wait_ready(2)
    stamps = tmp_path / "stamps"
    sent = json.loads(
        go_machinery(
            "send", REDIS_ADDRESS, queue, delayed_key, str(stamps), str(TEST_RESULTS_EXPIRE_S)
        )
    )
    names = ["add", "sum_ints", "concat", "chain", "chord", "eta"]
    chain_end, callback = sent["chain"][-1], sent["chord"][-1]
    ids = [sent["add"], sent["sum_ints"], sent["concat"], chain_end, callback, sent["eta"]]
    ids.append(sent["fail"])

    def all_final() -> list[dict[str, Any]] | None:
        states = json_lines(go_machinery("states", REDIS_ADDRESS, *ids))
        return states if all(state["state"] in FINAL for state in states) else None

    final = wait_until(all_final, 30, 0.1, "Go to read every task final")
    *succeeded, failed = final
    states = dict(zip(names, succeeded, strict=True))
    assert (failed["state"], failed["identical"]) == ("FAILURE", True)
    assert failed["error"] == 'it broke: <&> "quoted" \\ ünïcode \u2028 tab\t'
    for name, state in states.items():
        assert state["state"] == "SUCCESS", (name, state["error"])
        assert state["identical"], name
        assert not state["created_at_zero"], name  # the PENDING record's, kept (merge rule)
    assert {name: state["values"] for name, state in states.items()} == {
        "add": [5],
        "sum_ints": [6],
        "concat": ["foo<&>bär"],
        "chain": [12],  # add(1, 2), then multiply(4, 3)
        "chord": [6],  # add() with the group's results, 2 and 4
        "eta": [],
    }
    assert [state["task_name"] for state in states.values()] == [
        "add", "sum_ints", "concat", "multiply", "add", "stamp",
    ]  # fmt: skip
    group = json.loads(go_machinery("group", REDIS_ADDRESS, sent["group"]))
    assert group["chord_triggered"] and group["identical"]
    (ran_at,) = (float(stamp) for stamp in runs(stamps))
    assert ran_at >= sent["eta_unix"]  # not before its ETA
    assert process.process.poll() is None


def test_what_taskctl_sends_a_go_worker_runs(
    go_machinery: Callable[..., str], redis_namespace: str, tmp_path: Path
) -> None:
    """No daemon: a Go worker BLPOPs the queue and moves due delayed messages as machinery's
    does, decodes each message to the very bytes taskctl sent, and stores its result the way
    machinery does; taskctl reads that result, twice alike."""
    data = config_data("redis", redis_namespace, tmp_path)
    queue, delayed_key = data["default_queue"], data["redis"]["delayed_tasks_key"]
    config = write_config(tmp_path, data)
    now_id, later_id = send_now_and_later(tmp_path, config)

    ran = json_lines(
        go_machinery(
            "work", REDIS_ADDRESS, queue, delayed_key, "2", "30", str(TEST_RESULTS_EXPIRE_S)
        )
    )
    by_id = {run["id"]: run for run in ran}
    assert set(by_id) == {now_id, later_id}
    assert all(run["identical"] and run["routing_key"] == queue for run in ran)
    assert (by_id[now_id]["eta_unix"], by_id[now_id]["result"]) == (None, 5)
    assert by_id[later_id]["result"] == 9
    assert by_id[later_id]["ran_unix"] >= by_id[later_id]["eta_unix"]
    for task_id, printed in ((now_id, "5\n"), (later_id, "9\n")):
        for _ in range(2):
            result = taskctl(tmp_path, config, "result", task_id)
            assert (result.returncode, result.stdout) == (0, printed), result.stderr


def test_workflows_taskd_sends_decode_in_go_to_the_same_bytes(
    go_machinery: Callable[..., str], redis_namespace: str, tmp_path: Path
) -> None:
    """A chain's head carries the next link nested in OnSuccess, a chord's members carry its
    callback: Go decodes each message, nested signatures and all, and encodes it back to
    the very bytes taskd sent."""
    data = config_data("redis", redis_namespace, tmp_path)
    queue, delayed_key = data["default_queue"], data["redis"]["delayed_tasks_key"]
    client = Client(load_config(write_config(tmp_path, data)))
    head = client.send_chain(chain(signature("add", 1, 2), signature("add", 3))).link_ids[0]
    members = group(signature("add", 1, 1), signature("add", 2, 2))
    client.send_chord(chord(members, signature("add")))
    client.close()

    ran = json_lines(
        go_machinery(
            "work", REDIS_ADDRESS, queue, delayed_key, "3", "30", str(TEST_RESULTS_EXPIRE_S)
        )
    )
    assert all(run["identical"] for run in ran)
    by_id = {run["id"]: run for run in ran}
    assert (by_id[head]["on_success"], by_id[head]["result"]) == (1, 3)
    member_ids = [member.uuid for member in members.members]
    assert [by_id[i]["chord_callback"] for i in member_ids] == [True, True]
    assert [by_id[i]["result"] for i in member_ids] == [2, 4]
