"""The Memcache backend against values as Go's machinery writes them (raw bytes in the run's
memcached), read through ``taskctl result``."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from taskd.backends.memcache import MemcacheBackend, servers_of
from taskd.backends.memcache_servers import Servers
from taskd.config import load_config
from taskd.errors import BackendUnavailable
from taskd.wire import GroupMeta, State, TaskState, new_id
from tests.support.harness import client_for, free_port, taskctl, wait_until, write_config
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


# -- servers: where keys live, outages, closed connections ---------------------------------


def test_keys_stay_on_the_servers_hashclient_put_them_on() -> None:
    from pymemcache.client.hash import HashClient

    servers = [("127.0.0.1", 11211), ("127.0.0.2", 11212), ("127.0.0.3", 11213)]
    ours, theirs = Servers(servers), HashClient(servers)
    keys = [new_id("task") for _ in range(300)]
    assert [ours.server_of(key) for key in keys] == [theirs.hasher.get_node(key) for key in keys]
    assert {ours.server_of(key) for key in keys} == {f"{h}:{p}" for h, p in servers}


@contextlib.contextmanager
def _own_memcached(port: int, *options: str) -> Iterator[None]:
    command = ["memcached", "-l", "127.0.0.1", "-U", "0", "-m", "64", "-u", "root", *options]
    process = subprocess.Popen([*command, "-p", str(port)])
    try:
        wait_until(lambda: _answers(port), 10, what="memcached to start")
        yield
    finally:
        process.terminate()
        process.wait(10)


def _answers(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _backend(port: int, tmp_path: Path) -> MemcacheBackend:
    data = {"broker": "redis://127.0.0.1:6379/0", "result_backend": f"memcache://127.0.0.1:{port}"}
    return MemcacheBackend(data["result_backend"], load_config(write_config(tmp_path, data)))


def test_a_server_that_does_not_answer_is_an_outage_never_a_missing_record(
    tmp_path: Path,
) -> None:
    port = free_port()
    task_id, group_id = new_id("task"), new_id("group")
    with _own_memcached(port):
        backend = _backend(port, tmp_path)
        backend.set_states([TaskState(task_id, State.SUCCESS, task_name="t")])
        backend.init_group(GroupMeta(group_id, (task_id,)))
    calls: dict[str, Callable[[], object]] = {
        "read": lambda: backend.get_states([task_id]),
        "write": lambda: backend.set_states([TaskState(task_id, State.SUCCESS, task_name="t")]),
        "group": lambda: backend.get_group(group_id),
        "claim": lambda: backend.claim_chord(group_id, "me"),
    }
    for _ in range(3):  # again and again: never a default answer after the first error
        for name, call in calls.items():
            with pytest.raises(BackendUnavailable):
                call()
                pytest.fail(f"{name}: answered while the server was down")
    with _own_memcached(port):  # back, empty (memcached keeps nothing across a restart)
        assert backend.get_states([task_id]) == [None]
        backend.set_states([TaskState(task_id, State.SUCCESS, task_name="t")])
        (stored,) = backend.get_states([task_id])
        assert stored is not None and stored.state is State.SUCCESS
        backend.close()


def test_a_connection_the_server_closed_while_idle_is_replaced(tmp_path: Path) -> None:
    from pymemcache.client.base import Client

    port = free_port()

    def idle_kicks() -> int:  # on a connection of its own, closed at once
        probe = Client(("127.0.0.1", port))
        try:
            return int(probe.stats()[b"idle_kicks"])
        finally:
            probe.close()

    with _own_memcached(port, "-o", "idle_timeout=1"):
        backend = _backend(port, tmp_path)
        task_id = new_id("task")
        for kicks in range(1, 4):
            backend.set_states([TaskState(task_id, State.SUCCESS, task_name="t")])
            wait_until(partial(lambda n: idle_kicks() >= n, kicks), 20, what="an idle close")
            (stored,) = backend.get_states([task_id])  # on a closed connection: replaced
            assert stored is not None and stored.state is State.SUCCESS
        backend.close()
