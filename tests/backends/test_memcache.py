"""The Memcache backend against values as Go's machinery writes them (raw bytes in the run's
memcached), read through ``taskctl result``."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from taskd.backends.memcache import servers_of
from taskd.wire import new_id
from tests.support.harness import client_for, taskctl, wait_until
from tests.worker.test_daemon import GO_MESSAGE, GO_PENDING, GO_SUCCESS


@pytest.fixture
def raw_memcache(memcached: str) -> Iterator[Any]:
    """A plain pymemcache client: what a Go worker sharing the servers reads and writes."""
    from pymemcache.client.base import Client

    client = Client(servers_of(memcached, "result_backend")[0])
    yield client
    client.close()


def test_a_go_pending_state_keeps_its_name_and_time_when_taskd_runs_the_task(
    raw_memcache: Any, namespace: str, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    """machinery's producer stores PENDING (TaskName, CreatedAt) and sends the message; a
    taskd worker runs it, and its SUCCESS keeps both, byte for byte what Go would store."""
    config, client = client_for("memcache", namespace, tmp_path)
    task_id = new_id()
    values = {"id": task_id, "queue": namespace}
    raw_memcache.set(task_id, (GO_PENDING % values).encode(), expire=300)
    client.broker.publish(namespace, (GO_MESSAGE % values).encode())
    daemon(config, "--concurrency", "1").wait_ready(1)
    wait_until(lambda: (s := client.backend.get_state(task_id)) and s.is_completed, 20)
    assert raw_memcache.get(task_id) == (GO_SUCCESS % values).encode()
    shown = taskctl(tmp_path, config, "result", task_id, "--json")
    assert shown.returncode == 0, shown.stderr
    stored = json.loads(shown.stdout)
    assert (stored["State"], stored["TaskName"]) == ("SUCCESS", "add")
    assert stored["CreatedAt"] == "2026-11-27T10:00:00.123456789Z"  # the PENDING's
    assert taskctl(tmp_path, config, "result", task_id).stdout == "2\n"
    client.close()


def test_a_state_go_wrote_reads_back_through_taskctl(
    raw_memcache: Any, namespace: str, tmp_path: Path
) -> None:
    """machinery's own Memcache backend does not merge: its SUCCESS has no TaskName."""
    config, client = client_for("memcache", namespace, tmp_path)
    task_id = new_id()
    go_success = (
        f'{{"TaskUUID":"{task_id}","TaskName":"","State":"SUCCESS",'
        '"Results":[{"Type":"int64","Value":6}],"Error":"",'
        '"CreatedAt":"0001-01-01T00:00:00Z","TTL":0}'
    )
    raw_memcache.set(task_id, go_success.encode(), expire=300)
    shown = taskctl(tmp_path, config, "result", task_id)
    assert (shown.returncode, shown.stdout) == (0, "6\n"), shown.stderr
    as_json = taskctl(tmp_path, config, "result", task_id, "--json")
    assert as_json.stdout.strip() == go_success
    client.close()
