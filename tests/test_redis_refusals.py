"""A Redis that cannot take writes for now, on real servers.

A failover that moves the master's address (a virtual IP, a DNS name, a managed service's
endpoint): connections made before it still reach the old master, now a replica that refuses
every write. taskd drops them and goes on with the new master; sends refused there are made
again, once each. Two private Redis servers, the second replicating the first, behind a relay
that plays the moving address: ``Failover.fail_over`` promotes the replica, demotes the
master, and sends the relay's new connections to the new master; those made before stay with
the old one.

A full Redis (maxmemory, noeviction): sends wait for room within their patience, and the
workers drain it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from taskd.client import Client, signature
from taskd.config import load_config
from taskd.errors import BrokerUnavailable, ResultTimeout, TaskdError
from taskd.wire import decode_signature
from tests.support.harness import PrivateRedis, wait_until, write_config
from tests.support.relay import Relay
from tests.support.tasks import lines, runs


class Failover:
    def __init__(self, master: PrivateRedis, replica: PrivateRedis) -> None:
        import redis

        self.master = redis.Redis(port=master.port)
        self.replica = redis.Redis(port=replica.port)
        self._replica_port = replica.port
        for server in (self.master, self.replica):
            server.config_set("repl-diskless-sync-delay", 0)  # no 5 s for others to join
        self.replica.replicaof("127.0.0.1", master.port)
        wait_until(
            lambda: self.replica.info("replication")["master_link_status"] == "up",
            20,
            what="the replica to follow its master",
        )
        self.relay = Relay(upstream=("127.0.0.1", master.port))
        self.url = f"redis://127.0.0.1:{self.relay.port}/0"

    def fail_over(self) -> None:
        """Redis's own coordinated failover (as Sentinel's or a managed service's): the master
        holds writes until the replica has every one, then the two swap roles; then the
        address moves."""
        self.master.execute_command("FAILOVER", "TO", "127.0.0.1", self._replica_port)
        wait_until(
            lambda: _role(self.replica) == "master" and _role(self.master) == "slave",
            20,
            what="the replica to take over",
        )
        self.relay.redirect(("127.0.0.1", self._replica_port))

    @property
    def new_master(self) -> Any:
        return self.replica

    def close(self) -> None:
        """Once neither server is syncing or rewriting its append-only file: Redis refuses
        to stop meanwhile ("Writing initial AOF, can't exit")."""
        self.relay.close()
        for server in (self.master, self.replica):
            wait_until(lambda server=server: _at_rest(server), 20, what="Redis to be at rest")
            server.close()


def _role(server: Any) -> str:
    return str(server.info("replication")["role"])


def _at_rest(server: Any) -> bool:
    info = server.info("persistence") | server.info("replication")
    busy = ("aof_rewrite_in_progress", "aof_rewrite_scheduled", "master_sync_in_progress")
    return not any(info.get(field) for field in busy) and info.get("master_failover_state") in (
        None,
        "no-failover",
    )


@pytest.fixture
def failover(tmp_path: Path) -> Iterator[Failover]:
    servers = []
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        servers.append(PrivateRedis(tmp_path / name))
        servers[-1].start()
    pair = Failover(*servers)
    yield pair
    pair.close()
    for server in servers:
        server.stop()


def _config(tmp_path: Path, url: str, **client: Any) -> Path:
    data = {
        "broker": url,
        "result_backend": url,
        "default_queue": "q",
        "imports": ["tests.support.tasks"],
        "client": client,
    }
    return write_config(tmp_path, data)


def _queued_ids(server: Any) -> list[str]:
    return [decode_signature(raw).uuid for raw in server.lrange("q", 0, -1)]


@pytest.mark.parametrize("pipeline", [0, 64])
def test_a_client_connected_before_a_failover_sends_to_the_new_master_once(
    failover: Failover, tmp_path: Path, pipeline: int
) -> None:
    """Its connections (kept for reuse, and the one its pipelined sends hold) reach the
    demoted master: the sends it refuses are made again on a new connection, each once,
    with no SendError; a wait for a state goes on with the new master too."""
    client = Client(load_config(_config(tmp_path, failover.url, pipeline=pipeline), env={}))
    before = client.send("add", 1, 2)
    with pytest.raises(ResultTimeout):  # no worker: this only opens the wait's connection
        before.wait(timeout=0.1)
    failover.fail_over()
    after = [client.send("add", i, i) for i in range(5)]
    client.flush()
    expected = [before.task_id] + [result.task_id for result in after]
    assert _queued_ids(failover.new_master) == expected
    with pytest.raises(ResultTimeout):  # not BackendUnavailable: the wait reached a master
        after[-1].wait(timeout=1)
    connections = failover.new_master.info("stats")["total_connections_received"]
    for n in range(20):
        client.send("add", n, n)
    client.flush()
    assert failover.new_master.info("stats")["total_connections_received"] == connections
    client.close()


def test_a_daemon_busy_through_a_failover_goes_on_with_the_new_master(
    failover: Failover, tmp_path: Path, daemon: Any
) -> None:
    """A child running a task as the master is demoted holds connections to it (Redis
    closes only its blocked clients): it stores the task's result and takes the next tasks
    on the new master, instead of finding the replica refusing its writes for ever."""
    config = _config(tmp_path, failover.url, pipeline=0)
    process = daemon(config, "--concurrency", "1")
    process.wait_ready(1)
    client = Client(load_config(config, env={}))
    trace = tmp_path / "slow.txt"
    slow = client.send("slow_record", str(trace), "slow", 1.5)
    wait_until(lambda: runs(trace), 20, what="the slow task to start")
    with pytest.raises(ResultTimeout):  # a wait on a connection made before the failover
        slow.wait(timeout=0.05)
    failover.fail_over()
    assert slow.get(timeout=30) == "slow"
    assert [client.send("add", i, 10).get(timeout=30) for i in range(3)] == [10, 11, 12]
    assert runs(trace) == ["start:slow", "end:slow"]  # it ran once
    client.close()


def test_a_send_to_a_full_redis_waits_for_room_within_the_patience(
    private_redis: PrivateRedis, tmp_path: Path
) -> None:
    """Redis out of memory (maxmemory, noeviction) refuses the send before running any of
    it (OOM): the send is made again once there is room, and goes out once; with no room
    within the patience it raises BrokerUnavailable, saying nothing was sent."""
    import threading

    import redis

    server = redis.Redis.from_url(private_redis.url)
    server.config_set("maxmemory-policy", "noeviction")
    empty = int(server.info("memory")["used_memory"])
    server.set("ballast", b"x" * 8_000_000)
    server.config_set("maxmemory", empty + 4_000_000)  # full with the ballast, not without
    config = load_config(_config(tmp_path, private_redis.url, pipeline=0), env={})
    impatient = Client(config, send_patience=0.5)
    with pytest.raises(BrokerUnavailable) as caught:
        impatient.send("add", 1, 1)
    assert caught.value.unsent and "OutOfMemoryError" in str(caught.value)
    assert server.llen("q") == 0
    client = Client(config, send_patience=30)
    with capture_logs() as logs:
        room = threading.Timer(0.5, lambda: server.delete("ballast"))
        room.start()
        sent = client.send("add", 2, 2)
        room.join()
    outage = [entry["event"] for entry in logs if entry["event"].startswith("broker_")]
    assert outage == ["broker_unavailable", "broker_recovered"]
    assert _queued_ids(server) == [sent.task_id]
    client.close()
    impatient.close()
    server.close()


@pytest.mark.parametrize("sets_off", ["nothing", "a callback", "a retry"])
def test_workers_drain_a_redis_their_backlog_filled(
    private_redis: PrivateRedis, tmp_path: Path, daemon: Any, sets_off: str
) -> None:
    """Tasks queued while no worker ran until Redis was full: the workers started then can
    beat, fetch, store states and ack (taskd's scripts run on a full Redis), and publish
    what the tasks set off, which takes the place of the messages they ack, so the queue
    drains, instead of every worker waiting for room that only they could make."""
    import redis

    server = redis.Redis.from_url(private_redis.url)
    server.config_set("maxmemory-policy", "noeviction")
    server.config_set("maxmemory", int(server.info("memory")["used_memory"]) + 2_000_000)
    config = _config(tmp_path, private_redis.url, pipeline=0, send_patience=0)
    client = Client(load_config(config, env={}))
    trace = str(tmp_path / "trace.txt")
    task = {
        "nothing": lambda n: client.send("add", n, 1),
        "a callback": lambda n: client.send("add", n, 1, on_success=[signature("collect", trace)]),
        "a retry": lambda n: client.send("always_retry", trace, retry_count=1),
    }[sets_off]
    sent = []
    with pytest.raises(BrokerUnavailable, match="OutOfMemoryError"):
        for n in range(100_000):  # bounded: about 2,000 fill it
            sent.append(task(n))
    assert server.llen("q") == len(sent) > 1000
    process = daemon(config, "--concurrency", "2")
    process.wait_ready(2)
    states = client.wait_states([result.task_id for result in sent], 60)
    final = "FAILURE" if sets_off == "a retry" else "SUCCESS"
    assert {state.state.value for state in states} == {final}
    if sets_off == "a callback":
        wait_until(lambda: len(lines(trace)) >= len(sent), 30, what="every callback to run")
        assert sorted(lines(trace)) == sorted([n + 1] for n in range(len(sent)))
    if sets_off == "a retry":
        assert len(runs(trace)) == 2 * len(sent)  # each ran, and ran again
    wait_until(lambda: server.llen("q") == 0, 10, what="the queue to drain")
    client.close()
    server.close()


def test_a_send_longer_than_redis_takes_fails_alone(
    tmp_path: Path, private_redis: PrivateRedis
) -> None:
    """A message longer than Redis's proto-max-bulk-len gets a protocol error, after which
    Redis closes the connection: the connection went back to the pool as it was, and the
    client's next send, on it, failed too (connection reset)."""
    import redis

    redis.Redis(port=private_redis.port).config_set("proto-max-bulk-len", "1mb")
    client = Client(load_config(_config(tmp_path, private_redis.url)))
    for attempt in range(3):
        with pytest.raises(TaskdError):
            client.send("record", str(tmp_path / "trace"), "x" * 1_100_000)
            client.flush()
        sent = client.send("noop")
        client.flush()
        assert redis.Redis(port=private_redis.port).exists(sent.task_id), attempt
    client.close()
