"""The Redis broker's checks before it serves (``Broker.check``, run by ``check_drivers``):
colliding names and keys of the wrong type are config errors naming the setting (exit 2 from
``taskd check-config`` and ``taskd start``), not a loop of WRONGTYPE errors at run time."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from taskd.boards import WORKERS
from taskd.checks import check_drivers
from taskd.client import Client
from taskd.config import load_config
from taskd.errors import ConfigError
from taskd.wire import State, TaskResult, TaskState
from tests.support.harness import (
    Daemon,
    client_for,
    config_data,
    free_port,
    run_cli,
    server_on_free_port,
    wait_until,
    write_config,
)


def _refusal(config: Any, queues: list[str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        check_drivers(config, queues or [])
    return caught.value


def test_a_queue_named_like_the_delayed_set_is_refused_before_any_write(
    redis_namespace: str, make_config: Callable[..., Any], redis_server: Any
) -> None:
    ns = redis_namespace
    config = make_config("redis", redis={"delayed_tasks_key": ns})  # the queue's name
    error = _refusal(config)
    assert error.key == "redis.delayed_tasks_key"
    assert error.file == config.source
    assert "is also a queue's name" in error.reason and "WRONGTYPE" in error.reason
    # the same through --queue, with a delayed key of its own
    config = make_config("redis")
    assert _refusal(config, [f"{ns}:delayed"]).key == "redis.delayed_tasks_key"
    assert redis_server.keys(f"{ns}*") == []  # nothing was written


@pytest.mark.parametrize("owned", ["consumers", "consumer_queues", "deliveries", "dead:x"])
def test_a_queue_named_like_one_of_taskds_own_keys_is_refused(
    redis_namespace: str, make_config: Callable[..., Any], owned: str
) -> None:
    ns = redis_namespace
    error = _refusal(make_config("redis", default_queue=f"{ns}:{owned}"))
    assert error.key == "default_queue"
    assert f"{ns}:{owned}" in error.reason and "redis.key_prefix" in error.reason
    error = _refusal(make_config("redis"), [f"{ns}:processing:c1"])
    assert (error.key, error.file) == ("--queue", None)
    error = _refusal(make_config("redis", redis={"delayed_tasks_key": f"{ns}:{owned}"}))
    assert error.key == "redis.delayed_tasks_key"


@pytest.mark.parametrize(
    ("plant", "setting", "found", "kept"),
    [
        (lambda r, ns: r.set(ns, "x", ex=60), "default_queue", "string", "list"),
        (lambda r, ns: r.zadd(ns, {"m": 1}), "default_queue", "zset", "list"),
        (lambda r, ns: r.rpush(f"{ns}:delayed", "m"), "redis.delayed_tasks_key", "list", "zset"),
        (lambda r, ns: r.set(f"{ns}:consumers", "x", ex=60), "redis.key_prefix", "string", "zset"),
        (lambda r, ns: r.hset(f"{ns}:dead:{ns}", "a", "b"), "redis.key_prefix", "hash", "list"),
    ],
)
def test_a_key_of_the_wrong_type_is_refused_naming_the_setting(
    redis_namespace: str,
    make_config: Callable[..., Any],
    redis_server: Any,
    plant: Callable[[Any, str], Any],
    setting: str,
    found: str,
    kept: str,
) -> None:
    plant(redis_server, redis_namespace)
    error = _refusal(make_config("redis"))
    assert error.key == setting
    assert f"holds a {found}, where taskd keeps a {kept}" in error.reason


def test_keys_taskd_wrote_itself_pass(
    redis_namespace: str, make_config: Callable[..., Any], redis_server: Any
) -> None:
    config = make_config("redis")
    with Client(config) as client:
        client.send("add", 1, 2)
        client.send("add", 3, 4, countdown=600)
        assert client.broker.size(redis_namespace) == 1
        assert client.broker.delayed(redis_namespace) == 1
    assert redis_server.type(redis_namespace) == b"list"
    check_drivers(config, [redis_namespace])  # no error: a list and a sorted set, as kept


def test_an_unreachable_redis_is_not_a_config_error(
    redis_namespace: str, make_config: Callable[..., Any]
) -> None:
    config = make_config("redis", broker=f"redis://127.0.0.1:{free_port()}/0")
    assert check_drivers(config, [redis_namespace]) is None  # the daemon rides it out


def test_the_command_line_exits_2_naming_the_setting(
    redis_namespace: str, tmp_path: Path, redis_server: Any
) -> None:
    ns = redis_namespace
    redis_server.zadd(f"{ns}-other", {"m": 1})
    path = write_config(tmp_path, config_data("redis", ns, tmp_path))
    done = run_cli(tmp_path, "taskd", "start", "-c", str(path), "--queue", f"{ns}-other")
    assert done.returncode == 2, done.stderr
    assert f"--queue: the Redis key '{ns}-other' holds a zset, where taskd keeps a list" in (
        done.stderr
    )
    redis_server.set(ns, "not a queue", ex=60)
    done = run_cli(tmp_path, "taskd", "check-config", "-c", str(path))
    assert done.returncode == 2, done.stderr
    assert f"{path}: default_queue: the Redis key '{ns}' holds a string" in done.stderr
    assert "Traceback" not in done.stderr


def checked_and_sent(
    port: int, namespace: str, tmp_path: Path
) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    """``taskd check-config``, then a ``taskctl send``, with the Redis on ``port`` in both
    roles."""
    url = f"redis://127.0.0.1:{port}/0"
    data = config_data("redis", namespace, tmp_path, broker=url, result_backend=url)
    config = str(write_config(tmp_path, data))
    done = run_cli(tmp_path, "taskd", "check-config", "-c", config)
    sent = run_cli(tmp_path, "taskctl", "-c", config, "send", "sum", "--arg", "[]int64:[1]")
    return done, sent


@pytest.mark.parametrize(
    ("limit", "policy", "loses"),
    [
        ("64mb", "allkeys-lru", "queued messages and results"),
        ("64mb", "volatile-ttl", "results"),
        ("64mb", "noeviction", None),
        ("0", "allkeys-lru", None),  # never full
    ],
    ids=["allkeys", "volatile", "noeviction", "no-limit"],
)
def test_a_redis_that_may_evict_taskds_keys_is_warned_of(
    limit: str, policy: str, loses: str | None, redis_namespace: str, tmp_path: Path
) -> None:
    def command(port: int) -> list[str]:
        return ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                "--appendonly", "no", "--maxmemory", limit,
                "--maxmemory-policy", policy]  # fmt: skip

    with server_on_free_port(command, "redis-server with maxmemory") as port:
        done, sent = checked_and_sent(port, redis_namespace, tmp_path)
    assert done.returncode == 0, done.stderr  # Redis's configuration is the operator's
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.startswith("task_") and len(sent.stdout.splitlines()) == 1, sent.stdout
    for run in (done, sent):  # on stderr: stdout is the commands' output
        warned = [json.loads(line) for line in run.stderr.splitlines() if "redis_may_evict" in line]
        if loses is None:
            assert not warned, run.stderr
        else:  # one line for each role, saying what that role loses
            by_key = {line["key"]: line["loses"] for line in warned}
            assert sorted(by_key) == ["broker", "result_backend"], run.stderr
            assert by_key["broker"] == loses and "chord" in by_key["result_backend"], by_key
            assert all("noeviction" in line["fix"] for line in warned), run.stderr


@pytest.mark.parametrize(
    ("persistence", "warned"),
    [
        (["--save", "", "--appendonly", "no"], True),
        (["--save", "", "--appendonly", "yes"], False),
        (["--save", "3600 1", "--appendonly", "no"], False),
    ],
    ids=["nothing-on-disk", "append-only-file", "snapshots"],
)
def test_a_redis_that_keeps_nothing_on_disk_is_warned_of(
    persistence: list[str], warned: bool, redis_namespace: str, tmp_path: Path
) -> None:
    """At-least-once holds only as far as Redis keeps what it holds: one that keeps nothing on
    disk loses every queued message on a restart, and nothing said so. The daemon's check
    says it (start, check-config); taskctl, run again and again, does not."""

    def command(port: int) -> list[str]:
        return ["redis-server", "--bind", "127.0.0.1", "--port", str(port),
                "--dir", str(tmp_path), *persistence]  # fmt: skip

    with server_on_free_port(command, "redis-server") as port:
        done, sent = checked_and_sent(port, redis_namespace, tmp_path)
    assert done.returncode == 0, done.stderr  # Redis's configuration is the operator's
    assert sent.returncode == 0 and "redis_not_persistent" not in sent.stderr, sent.stderr
    lines = [
        json.loads(line) for line in done.stderr.splitlines() if "redis_not_persistent" in line
    ]
    assert sorted(line["key"] for line in lines) == (
        ["broker", "result_backend"] if warned else []
    ), done.stderr
    for line in lines:
        assert "appendonly yes" in line["fix"], line
        assert ("every queued message" if line["key"] == "broker" else "chord") in line["loses"]


def test_a_redis_that_holds_only_results_is_warned_of_too(
    redis_namespace: str, tmp_path: Path
) -> None:
    """Results, groups and chords in a Redis that keeps nothing on disk and evicts keys,
    messages elsewhere: a restart or a full Redis loses the record a chord fires from, and
    its callback never runs. Only the broker's Redis was looked at: not a word was said."""

    def command(port: int) -> list[str]:
        return ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                "--appendonly", "no", "--maxmemory", "64mb",
                "--maxmemory-policy", "volatile-lru"]  # fmt: skip

    with server_on_free_port(command, "redis-server for results only") as port:
        data = config_data("sqlite", redis_namespace, tmp_path)
        data["result_backend"] = f"redis://127.0.0.1:{port}/0"
        config = str(write_config(tmp_path, data))
        done = run_cli(tmp_path, "taskd", "check-config", "-c", config)
        sent = run_cli(tmp_path, "taskctl", "-c", config, "send", "sum", "--arg", "[]int64:[1]")
    assert done.returncode == 0, done.stderr  # Redis's configuration is the operator's
    assert sent.returncode == 0, sent.stderr

    def warned(run: subprocess.CompletedProcess[str]) -> dict[str, str]:
        lines = [json.loads(line) for line in run.stderr.splitlines() if "redis_" in line]
        return {line["event"]: f"{line['key']}: {line['loses']}" for line in lines}

    said = warned(done)
    assert sorted(said) == ["redis_may_evict", "redis_not_persistent"], done.stderr
    assert all(text.startswith("result_backend: ") and "chord" in text for text in said.values())
    assert sorted(warned(sent)) == ["redis_may_evict"], sent.stderr  # taskctl: the first only


def test_a_url_naming_a_replica_is_warned_of_for_each_role(
    redis_namespace: str, tmp_path: Path
) -> None:
    """A URL naming a replica passed check-config in silence; the daemon said taskd_ready
    while every fetch and write was refused (READONLY), an outage that never ended."""

    def server(*extra: str) -> Callable[[int], list[str]]:
        return lambda port: ["redis-server", "--bind", "127.0.0.1", "--port", str(port),
                             "--save", "", "--appendonly", "no", *extra]  # fmt: skip

    with (
        server_on_free_port(server(), "the master") as master,
        server_on_free_port(
            server("--replicaof", "127.0.0.1", str(master)), "its replica"
        ) as replica,
    ):
        warned = {}
        for name, port in (("master", master), ("replica", replica)):
            url = f"redis://127.0.0.1:{port}/0"
            data = config_data("redis", redis_namespace, tmp_path, broker=url, result_backend=url)
            config = str(write_config(tmp_path, data))
            done = run_cli(tmp_path, "taskd", "check-config", "-c", config)
            assert done.returncode == 0, done.stderr  # a failover may be under way: not refused
            warned[name] = [
                json.loads(line)["key"]
                for line in done.stderr.splitlines()
                if "redis_is_a_replica" in line
            ]
        looked = run_cli(tmp_path, "taskctl", "-c", config, "result", "task_x")  # reads only
    assert warned == {"master": [], "replica": ["broker", "result_backend"]}
    assert "redis_is_a_replica" not in looked.stderr, looked.stderr


@pytest.mark.timeout(90)
def test_connections_the_server_closed_while_idle_are_connected_anew(
    redis_namespace: str, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    """Redis's ``timeout`` (as a proxy's idle limit) closes a connection that sat idle; the
    next send, result wait and worker write must connect anew, not fail."""
    import redis

    def command(port: int) -> list[str]:
        return ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                "--appendonly", "no", "--timeout", "1"]  # fmt: skip

    with server_on_free_port(command, "redis-server with an idle timeout") as port:
        url = f"redis://127.0.0.1:{port}/0"
        config, _ = client_for("redis", redis_namespace, tmp_path, broker=url)
        process = daemon(config, "--concurrency", "1")
        process.wait_ready(1)
        env = {"TASKD_STATE_DIR": str(tmp_path / "state"), "TASKD_REDIS_CLIENT_NAME": "idler"}
        client = Client(load_config(config, env=env))
        admin = redis.Redis(port=port)

        def client_connections() -> list[str]:
            return [c["id"] for c in admin.client_list() if c["name"] == "idler"]

        for round_ in range(3):
            assert client.send("count", round_, 1).get(timeout=20) == 2
            assert client_connections()
            # Left idle, the client's connections are closed by the server (so is the
            # child's to the backend, idle since the task) before the next round.
            wait_until(lambda: not client_connections(), 15, what="the server to close them")
        client.close()
        assert not process.events("broker_unavailable")
        assert not process.events("backend_unavailable")
        admin.close()


def test_a_redis_cluster_is_refused_naming_the_key(redis_namespace: str, tmp_path: Path) -> None:
    """Every script of taskd's touches keys of many hash slots: on a cluster each fetch
    failed with CROSSSLOT, for ever, after check-config and sends had passed."""

    def command(port: int) -> list[str]:
        return ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                "--appendonly", "no", "--cluster-enabled", "yes",
                "--cluster-port", str(free_port()),  # port + 10000 may be past 65535
                "--cluster-config-file", str(tmp_path / f"nodes-{port}.conf")]  # fmt: skip

    with server_on_free_port(command, "redis-server in cluster mode") as port:
        cluster = f"redis://127.0.0.1:{port}/0"
        for key, urls in (
            ("broker", {"broker": cluster, "result_backend": cluster}),
            ("result_backend", {"broker": f"sqlite://{tmp_path}/q.db", "result_backend": cluster}),
        ):
            data = config_data("redis", redis_namespace, tmp_path, **urls)
            config = str(write_config(tmp_path, data))
            done = run_cli(tmp_path, "taskd", "check-config", "-c", config)
            assert done.returncode == 2, done.stderr
            assert f"{config}: {key}: the Redis server runs in cluster mode" in done.stderr


def _without(*commands: str) -> Any:
    """A private Redis on a free port with ``commands`` renamed away (as managed services
    do, and as a Redis older than a command lacks it); yields its URL."""

    def command(port: int) -> list[str]:
        renames = [word for name in commands for word in ("--rename-command", name, "")]
        return ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                "--appendonly", "no", *renames]  # fmt: skip

    return server_on_free_port(command, f"redis-server without {', '.join(commands)}")


def test_a_redis_without_blmove_is_refused_naming_the_broker(
    redis_namespace: str, tmp_path: Path
) -> None:
    """Redis older than 6.2 (Debian 11's 6.0, Ubuntu 20.04's 5.0), or one with BLMOVE and
    LMOVE renamed away: the daemon said taskd_ready, then every fetch failed for good and
    every send stayed PENDING. Its results backend needs neither: that still passes."""
    with _without("BLMOVE", "LMOVE") as port:
        old = f"redis://127.0.0.1:{port}/0"
        data = config_data("redis", redis_namespace, tmp_path, broker=old, result_backend=old)
        config = str(write_config(tmp_path, data))
        for args in (("check-config",), ("start", "--concurrency", "1")):
            done = run_cli(tmp_path, "taskd", *args, "-c", config)
            assert done.returncode == 2, done.stderr
            assert f"{config}: broker: this Redis (version " in done.stderr
            assert "has no BLMOVE, LMOVE" in done.stderr and "Redis 6.2 or later" in done.stderr
        data = config_data("redis", redis_namespace, tmp_path, result_backend=old,
                           broker=f"sqlite://{tmp_path}/q.db")  # fmt: skip
        done = run_cli(tmp_path, "taskd", "check-config", "-c", str(write_config(tmp_path, data)))
        assert done.returncode == 0, done.stderr


def test_a_redis_without_lua_scripts_is_refused_in_either_role(
    redis_namespace: str, tmp_path: Path
) -> None:
    """EVAL and EVALSHA disabled (some managed services allow that): check-config passed,
    then each child crashed on its first script, again and again, and sends failed."""
    with _without("EVAL", "EVALSHA") as port:
        scriptless = f"redis://127.0.0.1:{port}/0"
        queue = f"sqlite://{tmp_path}/q.db"
        for key, urls in (
            ("broker", {"broker": scriptless, "result_backend": f"sqlite://{tmp_path}/r.db"}),
            ("result_backend", {"broker": queue, "result_backend": scriptless}),
        ):
            data = config_data("redis", redis_namespace, tmp_path, **urls)
            config = str(write_config(tmp_path, data))
            for args in (("check-config",), ("start", "--concurrency", "1")):
                done = run_cli(tmp_path, "taskd", *args, "-c", config)
                assert done.returncode == 2, done.stderr
                assert f"{config}: {key}: this Redis (version " in done.stderr
                assert "has no EVALSHA, EVAL" in done.stderr and "Lua scripts" in done.stderr


def test_a_redis_that_hides_what_it_lacks_from_command_is_refused_all_the_same(
    redis_namespace: str, tmp_path: Path
) -> None:
    """COMMAND renamed too (or a proxy that serves neither it nor scripts): the check could
    not tell what was missing, passed, and each child then failed on its first script."""
    with _without("COMMAND", "EVAL", "EVALSHA") as port:
        url = f"redis://127.0.0.1:{port}/0"
        data = config_data("redis", redis_namespace, tmp_path, broker=url, result_backend=url)
        config = str(write_config(tmp_path, data))
        done = run_cli(tmp_path, "taskd", "check-config", "-c", config)
        assert done.returncode == 2, done.stderr
        assert f"{config}: broker: this Redis (version " in done.stderr
        assert "has no EVALSHA, EVAL" in done.stderr


@pytest.fixture
def acl_user(redis_server: Any, namespace: str) -> Iterator[Callable[..., str]]:
    """``acl_user(*keys, commands="+@all")``: a Redis URL of a user of this test's, allowed
    the keys of the ACL patterns ``keys`` and the ``commands`` (ACL rules); deleted
    afterwards."""

    def user(*keys: str, commands: str = "+@all") -> str:
        rules = [*keys, *commands.split()]
        redis_server.execute_command("ACL", "SETUSER", namespace, "reset", "on", ">pw", *rules)
        return f"redis://{namespace}:pw@127.0.0.1:6379/0"

    yield user
    redis_server.execute_command("ACL", "DELUSER", namespace)


def test_an_acl_that_keeps_taskd_to_its_prefix_is_refused_naming_the_setting(
    redis_namespace: str, acl_user: Callable[..., str], tmp_path: Path
) -> None:
    """Allowed only the keys under redis.key_prefix, a user could send (PENDING unstored,
    a warning), and every worker failed to start; task states live under their task's
    id, as in machinery. check-config, start and taskctl now name the setting (exit 2)."""
    url = acl_user(f"~{redis_namespace}*")
    config, client = client_for("redis", redis_namespace, tmp_path, broker=url)
    client.close()
    for command in (
        ["taskd", "check-config", "-c", str(config)],
        ["taskctl", "-c", str(config), "send", "noop"],
    ):
        done = run_cli(tmp_path, *command)
        assert done.returncode == 2, done.stderr
        assert f"{config}: broker: this user has no permissions" in done.stderr
        assert "under the task's id" in done.stderr and "(task_*)" in done.stderr
    url = acl_user("~*")  # every key: it passes
    config, client = client_for("redis", redis_namespace, tmp_path, broker=url)
    client.close()
    done = run_cli(tmp_path, "taskd", "check-config", "-c", str(config))
    assert done.returncode == 0, done.stderr


def test_a_user_kept_to_the_prefix_and_the_task_ids_runs_tasks(
    redis_namespace: str,
    acl_user: Callable[..., str],
    tmp_path: Path,
    daemon: Callable[..., Daemon],
) -> None:
    """The keys the README asks an ACL to allow are all taskd needs. check-config passed,
    but children could not start (their readiness probe read "taskd-readiness-probe") and
    every script failed (each deleted "taskd:never-written" first), keys outside both."""
    url = acl_user(f"~{redis_namespace}*", "~task_*")
    config, client = client_for("redis", redis_namespace, tmp_path, broker=url)
    done = run_cli(tmp_path, "taskd", "check-config", "-c", str(config))
    assert done.returncode == 0, done.stderr
    process = daemon(config, "--concurrency", "1")
    process.wait_ready(1)
    assert client.send("add", 2, 3).get(timeout=20) == 5
    assert client.send("add", 4, 5, countdown=0.5).get(timeout=20) == 9  # through the ETA set
    client.close()
    assert not process.events("beacon_failed")


def test_a_user_denied_scripts_or_blocking_commands_is_refused_naming_them(
    redis_namespace: str, acl_user: Callable[..., str], tmp_path: Path
) -> None:
    """COMMAND INFO shows what the server has, not what this user may run: with scripts
    denied (-@scripting, a common policy) taskd said taskd_ready, then each fetch failed for
    good; with BLMOVE denied (-@blocking), likewise."""
    for denied, named in (("-@scripting", "EVALSHA, EVAL"), ("-@blocking", "BLMOVE")):
        url = acl_user("~*", commands=f"+@all {denied}")
        config, client = client_for("redis", redis_namespace, tmp_path, broker=url)
        client.close()
        for args in (("check-config",), ("start", "--concurrency", "1")):
            done = run_cli(tmp_path, "taskd", *args, "-c", str(config))
            assert done.returncode == 2, done.stderr
            assert f"{config}: broker: this Redis user may not run {named} (" in done.stderr
    url = acl_user("~*", commands="+@all -@scripting")
    data = config_data("redis", redis_namespace, tmp_path, result_backend=url,
                       broker=f"sqlite://{tmp_path}/q.db")  # fmt: skip
    done = run_cli(tmp_path, "taskd", "check-config", "-c", str(write_config(tmp_path, data)))
    assert done.returncode == 2, done.stderr
    assert "result_backend: this Redis user may not run EVALSHA, EVAL (" in done.stderr


def test_a_read_only_user_may_look_with_taskctl_but_not_serve_or_send(
    redis_namespace: str, acl_user: Callable[..., str], tmp_path: Path
) -> None:
    """The checks ask a user's permission to write only of those that write: a monitoring
    user (+@read +@fast -@write) reads results, queues and live workers with taskctl, while
    the daemon, a send and a wait for a result (which registers the waiter: a write) are
    refused up front. Live workers were read by a script, which such a user may not run."""
    _, admin = client_for("redis", redis_namespace, tmp_path)
    sent = admin.send("add", 1, 2)
    admin.backend.set_states([TaskState(sent.task_id, State.SUCCESS, task_name="add",
                                        results=(TaskResult("int64", 3),))])  # fmt: skip
    admin.backend.post(WORKERS, {"host-a:41": {"host": "host-a", "pid": 41}}, 30)
    admin.close()
    url = acl_user("~*", commands="+@read +@fast +@connection -@write")
    config = write_config(tmp_path, config_data("redis", redis_namespace, tmp_path, broker=url,
                                                result_backend=url))  # fmt: skip
    for args, shows in (
        (["result", sent.task_id], "3"),
        (["queue", "stats"], f"{redis_namespace}: 1 ready"),
        (["queue", "peek"], sent.task_id),
        (["queue", "dead"], f"no dead letters in {redis_namespace}"),  # said on stderr
        (["workers", "--json"], '"host":"host-a"'),
    ):
        done = run_cli(tmp_path, "taskctl", "-c", str(config), *args)
        assert done.returncode == 0, (args, done.stderr)
        assert shows in done.stdout + done.stderr, (args, done.stdout, done.stderr)
    for command in (
        ["taskd", "check-config", "-c", str(config)],
        ["taskctl", "-c", str(config), "send", "noop"],
        ["taskctl", "-c", str(config), "result", sent.task_id, "--wait", "1"],
    ):
        done = run_cli(tmp_path, *command)
        assert done.returncode == 2, (command, done.stderr)
        assert "broker: this Redis user may not run DEL" in done.stderr, done.stderr


def test_credentials_redis_refuses_are_a_config_error_naming_the_key(
    redis_namespace: str, acl_user: Callable[..., str], tmp_path: Path
) -> None:
    """A wrong password passed check-config (an outage, to the check), and the children
    waited for Redis for good, as for one that was down."""
    wrong = acl_user("~*").replace(":pw@", ":not-the-password@")
    for key, urls in (
        ("broker", {"broker": wrong, "result_backend": wrong}),
        ("result_backend", {"broker": f"sqlite://{tmp_path}/q.db", "result_backend": wrong}),
    ):
        config = write_config(tmp_path, config_data("redis", redis_namespace, tmp_path, **urls))
        done = run_cli(tmp_path, "taskd", "check-config", "-c", str(config))
        assert done.returncode == 2, done.stderr
        assert f"{config}: {key}: Redis refused the connection: invalid username-password" in (
            done.stderr
        )
        assert "not-the-password" not in done.stderr
