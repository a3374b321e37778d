"""Redis Sentinel (``redis.master_name``): a master, its replica and a Sentinel of the test's
own, on free loopback ports; tasks run through the master the Sentinel names, and go on
running after the Sentinel promotes the replica when the master dies."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from taskd.client import Client
from taskd.config import Config, RedisConfig, load_config
from taskd.errors import ConfigError
from taskd.redisdb import connect, same_server
from taskd.wire import decode_signature
from tests.support.harness import (
    TEST_TASKS,
    config_data,
    server_on_free_port,
    wait_until,
    write_config,
)

MASTER = "taskd-test-master"


@dataclass(frozen=True)
class Sentinels:
    master: int
    replica: int
    sentinel: int

    def ask(self, *command: Any) -> Any:
        import redis

        with redis.Redis(port=self.sentinel, socket_timeout=5) as client:
            return client.execute_command(*command)

    def master_port(self) -> int:
        return int(self.ask("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)[1])


def _redis_server(directory: Path, *extra: str) -> Callable[[int], list[str]]:
    # --dir: a replica's full sync writes the master's snapshot there
    return lambda port: [
        "redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(directory),
        "--save", "", "--appendonly", "no", *extra,
    ]  # fmt: skip


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[Sentinels]:
    import redis

    with contextlib.ExitStack() as servers:
        master_dir, replica_dir = tmp_path / "master", tmp_path / "replica"
        master_dir.mkdir()
        replica_dir.mkdir()
        master = servers.enter_context(server_on_free_port(_redis_server(master_dir), "a master"))
        replica_of = _redis_server(replica_dir, "--replicaof", "127.0.0.1", str(master))
        replica = servers.enter_context(server_on_free_port(replica_of, "a replica"))
        conf = tmp_path / "sentinel.conf"

        def sentinel(port: int) -> list[str]:
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {master} 1\n"
                f"sentinel down-after-milliseconds {MASTER} 1000\n"
                f"sentinel failover-timeout {MASTER} 5000\n"
            )
            return ["redis-server", str(conf), "--sentinel"]

        found = Sentinels(
            master, replica, servers.enter_context(server_on_free_port(sentinel, "a Sentinel"))
        )

        def replica_known() -> bool:  # a Sentinel can promote only a replica it has seen
            with redis.Redis(port=replica) as client:
                synced = client.info("replication").get("master_link_status") == "up"
            return synced and bool(found.ask("SENTINEL", "REPLICAS", MASTER))

        wait_until(replica_known, 30, 0.1, "the Sentinel to know the replica")
        yield found


def sentinel_config(sentinels: Sentinels, namespace: str, tmp_path: Path) -> dict[str, Any]:
    url = f"redis://127.0.0.1:{sentinels.sentinel}/0"
    data = config_data("redis", namespace, tmp_path, imports=[TEST_TASKS])
    data.update(broker=url, result_backend=url)
    data["redis"]["master_name"] = MASTER
    return data


def sums(config: Path, tmp_path: Path, first: int) -> list[Any]:
    with Client(load_config(config, env={"TASKD_STATE_DIR": str(tmp_path / "state")})) as client:
        sent = [client.send("sum", [first, n]) for n in range(10)]
        return [result.get(timeout=30) for result in sent]


def test_tasks_run_through_the_master_the_sentinel_names_and_after_a_failover(
    sentinels: Sentinels, namespace: str, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    import redis

    config = write_config(tmp_path, sentinel_config(sentinels, namespace, tmp_path))
    process = daemon(config, "--concurrency", "2")
    process.wait_ready(2)
    assert sums(config, tmp_path, 100) == [100 + n for n in range(10)]
    with redis.Redis(port=sentinels.master) as master:
        assert master.dbsize() > 0  # the states are on the master the Sentinel named
        master.shutdown(nosave=True)
    wait_until(
        lambda: sentinels.master_port() == sentinels.replica, 30, 0.1, "the replica's promotion"
    )
    assert sums(config, tmp_path, 200) == [200 + n for n in range(10)]
    assert process.process.poll() is None  # the daemon rode the failover out
    assert process.events("broker_unavailable"), "the children never saw the master go"


def test_with_min_replicas_to_write_no_send_is_lost_to_a_sentinel_failover(
    sentinels: Sentinels, namespace: str, tmp_path: Path
) -> None:
    """Sentinel promotes the replica while the old master, alive, stays a master until
    Sentinel reconfigures it (some seconds): what a client connected to it writes meanwhile
    is lost. With min-replicas-to-write the old master refuses it (NOREPLICAS) instead: the
    sends wait that out (``client.send_patience``), then go to the new master, each once."""
    import redis

    with redis.Redis(port=sentinels.master) as old:
        old.config_set("min-replicas-to-write", 1)
        old.config_set("min-replicas-max-lag", 1)
    data = sentinel_config(sentinels, namespace, tmp_path)
    data["client"] = {"send_patience": 60}  # Sentinel reconfigures the old master in ~10 s
    config = load_config(write_config(tmp_path, data), env={"TASKD_STATE_DIR": str(tmp_path)})
    with Client(config) as client:
        before = [client.send("add", 1, n).task_id for n in range(3)]
        client.flush()
        sentinels.ask("SENTINEL", "FAILOVER", MASTER)
        wait_until(lambda: sentinels.master_port() == sentinels.replica, 30, 0.1, "promotion")
        after = [client.send("add", 2, n).task_id for n in range(5)]
        client.flush()
    with redis.Redis(port=sentinels.replica) as new:
        queued = [decode_signature(raw).uuid for raw in new.lrange(namespace, 0, -1)]
    assert queued == before + after


def test_a_pool_that_waits_when_full_works_through_sentinel(sentinels: Sentinels) -> None:
    """redis.wait with Sentinel: redis-py has no blocking Sentinel pool, taskd composes one."""
    settings = RedisConfig(master_name=MASTER, wait=True, max_active=1)
    client = connect(f"redis://127.0.0.1:{sentinels.sentinel}/0", Config(redis=settings), "broker")
    assert type(client.connection_pool).__name__ == "BlockingSentinelConnectionPool"
    client.set("taskd-test-key", "through the master")
    assert client.get("taskd-test-key") == b"through the master"
    assert client.connection_pool.get_master_address()[1] == sentinels.master
    client.close()


def test_a_sentinel_pair_shares_round_trips_only_with_its_own_master(tmp_path: Path) -> None:
    """Broker and backend on one master (one script per send) only if both name the same
    master through the same Sentinels; connecting is lazy, so no server is needed."""

    def client(url: str, master: str) -> Any:
        return connect(url, Config(redis=RedisConfig(master_name=master)), "broker")

    one = client("redis://127.0.0.1:26379,127.0.0.2:26379/0", "a")
    assert same_server(one, client("redis://127.0.0.2,127.0.0.1/0", "a"))
    assert not same_server(one, client("redis://127.0.0.1:26379,127.0.0.2:26379/0", "b"))
    assert not same_server(one, client("redis://127.0.0.1:26379/0", "a"))
    assert not same_server(one, connect("redis://127.0.0.1:26379/0", Config(), "broker"))
    assert not same_server(one, client("redis://127.0.0.1:26379,127.0.0.2:26379/1", "a"))


def test_sentinels_need_hosts(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="URL names the Sentinels"):
        connect(
            f"redis+socket://{tmp_path}/redis.sock",
            Config(redis=RedisConfig(master_name="a")),
            "broker",
        )
