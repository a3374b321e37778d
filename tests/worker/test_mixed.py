"""A broker of one kind with results in another: the pairings with AMQP, Memcache and MongoDB
run end to end."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from taskd.client import Client
from taskd.config import load_config
from tests.support.harness import TEST_TASKS, config_data, taskctl, write_config

PAIRS = [
    ("amqp", "memcache"),
    ("redis", "memcache"),
    ("amqp", "mongodb"),
    ("redis", "mongodb"),
    ("amqp", "redis"),
    ("amqp", "sqlite"),
    ("redis", "amqp"),
    ("sqlite", "amqp"),
    ("amqp", "amqp"),
]


@pytest.mark.parametrize(("broker", "backend"), PAIRS, ids=[f"{b}+{r}" for b, r in PAIRS])
def test_tasks_run_and_results_read_the_same_twice(
    broker: str,
    backend: str,
    namespace: str,
    tmp_path: Path,
    daemon: Callable[..., Any],
    request: pytest.FixtureRequest,
) -> None:
    servers = {
        "redis": "redis_namespace",
        "amqp": "amqp_namespace",
        "memcache": "memcached",
        "mongodb": "mongodb_namespace",
    }
    for kind in {broker, backend} & set(servers):
        request.getfixturevalue(servers[kind])  # there, and cleaned up afterwards
    data = config_data(broker, namespace, tmp_path, imports=[TEST_TASKS])
    results = config_data(backend, namespace, tmp_path)
    data["result_backend"] = results["result_backend"]
    for section in ("redis", "amqp", "mongodb"):  # the other kind's names for this test
        if section in results:
            data[section] = results[section]
    config = write_config(tmp_path, data)
    process = daemon(config, "--concurrency", "2")
    process.wait_ready(2)
    with Client(load_config(config, env={"TASKD_STATE_DIR": str(tmp_path / "state")})) as client:
        sent = [client.send("sum", list(range(n))) for n in range(1, 21)]
        assert [result.get(timeout=30) for result in sent] == [sum(range(n)) for n in range(1, 21)]
        delayed = client.send("sum", [4, 5], countdown=1)
        assert delayed.get(timeout=30) == 9
    first = taskctl(tmp_path, config, "result", sent[4].task_id)
    second = taskctl(tmp_path, config, "result", sent[4].task_id)
    assert first.returncode == second.returncode == 0, first.stderr
    assert first.stdout == second.stdout == "10\n"
