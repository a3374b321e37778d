"""machinery's config files: every key of machinery's (v1 and v2 ``config/config.go``) is a
taskd key, mapped onto one, accepted and ignored with a reason, or refused with a reason;
never an unknown key."""

from __future__ import annotations

import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from taskd import redisdb
from taskd.config import env_names, load_config
from taskd.config_machinery import MACHINERY_KEYS
from taskd.errors import ConfigError
from tests.support.harness import REPO, assert_refused, run_cli, wait_until

# Every YAML key of machinery's Config structs (v2, plus v1's redis.cluster_mode), with a
# value of the type machinery's YAML takes, that a Redis user could leave in a file. The
# code-only fields (TLSConfig, clients, GCPPubSub, MongoDB) appear under yaml.v2's names.
MACHINERY_FILE = """\
broker: redis://127.0.0.1:6379/0
lock: redis://127.0.0.1:6379/0
multiple_broker_separator: ","
default_queue: machinery_tasks
result_backend: redis://127.0.0.1:6379/0
results_expire_in: 3600
no_unix_signals: true
tlsconfig:
amqp:
  exchange: machinery_exchange
  exchange_type: direct
  queue_declare_args: {x-max-priority: 10}
  queue_binding_args: {image-type: png, x-match: any}
  binding_key: machinery_task
  prefetch_count: 3
  auto_delete: false
  delayed_queue: ""
sqs:
  client:
  receive_wait_time_seconds: 20
  receive_visibility_timeout: 456
  visibility_hearth_beat: true
redis:
  max_idle: 12
  max_active: 123
  max_idle_timeout: 456
  wait: false
  read_timeout: 17
  write_timeout: 19
  connect_timeout: 21
  normal_tasks_poll_period: 1001
  delayed_tasks_poll_period: 23
  delayed_tasks_key: delayed_tasks_key
  client_name: machinery-app
  master_name: ""
  cluster_enabled: false
  cluster_mode: false
  sentinel_password: ""
dynamodb:
  client:
  task_states_table: task_states
  group_metas_table: group_metas
gcppubsub:
  client:
  max_extension: 0
mongodb:
  client:
  database: machinery
"""


def _write(tmp_path: Path, text: str, name: str = "machinery.yml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def _leaves(data: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in data.items():
        if isinstance(value, dict) and not key.endswith("_args"):
            out.extend(_leaves(value, f"{prefix}{key}."))
        else:
            out.append(f"{prefix}{key}")
    return out


def test_a_file_with_every_key_of_machinerys_loads(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, MACHINERY_FILE), env={})
    redis = config.redis
    assert (redis.max_active, redis.max_idle_timeout, redis.wait) == (123, 456, False)
    assert (redis.read_timeout, redis.write_timeout, redis.connect_timeout) == (17, 19, 21)
    assert (redis.delayed_tasks_poll_period, redis.delayed_tasks_key) == (23, "delayed_tasks_key")
    assert redis.client_name == "machinery-app"
    assert config.worker.poll_interval == 1.001  # normal_tasks_poll_period, ms -> s
    assert config.sqs.receive_visibility_timeout == 456
    assert config.sqs.visibility_heartbeat is True  # machinery v2's visibility_hearth_beat
    assert config.amqp.queue_binding_args == {"image-type": "png", "x-match": "any"}
    assert config.mongodb.database == "machinery"
    ignored = dict(config.ignored)
    mapped = {"redis.normal_tasks_poll_period", "sqs.visibility_hearth_beat"}
    taskd_keys = {".".join(path) for path in env_names().values()}
    # Every key of the file is a taskd key, mapped onto one, or ignored with a reason:
    for key in _leaves(yaml.safe_load(MACHINERY_FILE)):
        if key in taskd_keys - set(ignored) or key in mapped:
            continue
        assert ignored.get(key), f"{key} is neither used nor reported as ignored"
    assert not mapped & set(ignored)
    assert len(ignored) == len(set(ignored))  # once per key


def test_each_key_of_the_table_says_why() -> None:
    for path, spec in MACHINERY_KEYS.items():
        assert spec.reason.strip(), path
        assert path not in {".".join(p) for p in env_names().values()} or spec.taskd_key, path


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("redis:\n  cluster_enabled: true\n", "redis.cluster_enabled", "Cluster is not supported"),
        ("redis:\n  cluster_mode: true\n", "redis.cluster_mode", "Cluster is not supported"),
        ("tlsconfig:\n  insecureskipverify: true\n", "tlsconfig", "tls.Config are not supported"),
        ("tls: {ca_file: /etc/ca.pem}\n", "tls", "tls.Config are not supported"),
        (
            "broker: amqp://a:5672/;amqp://b:5672/\nmultiple_broker_separator: ';'\n",
            "multiple_broker_separator",
            "broker lists several URLs",
        ),
        ("broker: gcppubsub://project/subscription\n", "broker", "GCP Pub/Sub broker"),
        ("broker: eager\n", "broker", "eager mode is not supported"),
        ("result_backend: https://dynamodb.us-east-1.amazonaws.com\n", "result_backend", "Dyn"),
        ("result_backend: 'null'\n", "result_backend", "null backend is not supported"),
        ("broker: redis://127.0.0.1:6379,127.0.0.1:6380/0\n", "broker", "several Redis addresses"),
    ],
)
def test_what_taskd_cannot_honour_is_refused_naming_the_key(
    tmp_path: Path, text: str, key: str, reason: str
) -> None:
    assert_refused(_write(tmp_path, text), key, reason)


def test_machinery_sentinel_config_loads(tmp_path: Path) -> None:
    """go-redis's Sentinel form: the URL lists the Sentinels, redis.master_name the master."""
    text = (
        "broker: redis://:pw@127.0.0.1:26379,127.0.0.2:26380/3\n"
        "redis:\n  master_name: mymaster\n  sentinel_password: s3cret\n"
    )
    config = load_config(_write(tmp_path, text), env={})
    assert (config.redis.master_name, config.redis.sentinel_password) == ("mymaster", "s3cret")
    assert "redis.master_name" not in dict(config.ignored)


def test_a_separator_that_splits_nothing_is_ignored(tmp_path: Path) -> None:
    text = "broker: redis://127.0.0.1:6379/0\nmultiple_broker_separator: ';'\n"
    config = load_config(_write(tmp_path, text), env={})
    assert "one broker URL" in dict(config.ignored)["multiple_broker_separator"]


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("redis:\n  max_idle: three\n", "redis.max_idle", "must be a whole number, got 'three'"),
        ("redis:\n  max_idle: true\n", "redis.max_idle", "must be a whole number"),
        ("no_unix_signals: 1\n", "no_unix_signals", "must be true or false"),
        ("redis:\n  master_name: 5\n", "redis.master_name", "must be a string"),
        ("dynamodb: [1]\n", "dynamodb", "must be a mapping of keys"),
        (
            "redis:\n  normal_tasks_poll_period: 5\n",
            "redis.normal_tasks_poll_period",
            "must be at least 10",
        ),
        (
            "redis:\n  normal_tasks_poll_period: 500\nworker:\n  poll_interval: 2\n",
            "redis.normal_tasks_poll_period",
            "sets worker.poll_interval to 0.5, which is also given as 2",
        ),
        (
            "dynamodb:\n  task_states_tabel: t\n",
            "dynamodb.task_states_tabel",
            "unknown key (did you mean 'task_states_table'?)",
        ),
        ("redis:\n  max_idel: 3\n", "redis.max_idel", "unknown key (did you mean 'max_idle'?)"),
    ],
)
def test_machinery_keys_are_checked_like_taskds(
    tmp_path: Path, text: str, key: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, text), env={})
    assert caught.value.key == key
    assert reason in str(caught.value)


def test_the_same_poll_interval_given_twice_is_fine(tmp_path: Path) -> None:
    text = "redis:\n  normal_tasks_poll_period: 700\nworker:\n  poll_interval: 0.7\n"
    assert load_config(_write(tmp_path, text), env={}).worker.poll_interval == 0.7


def test_new_redis_keys_have_variables_and_machinery_only_keys_do_not() -> None:
    names = env_names()
    assert names["TASKD_REDIS_WAIT"] == ("redis", "wait")
    assert names["TASKD_REDIS_MAX_IDLE_TIMEOUT"] == ("redis", "max_idle_timeout")
    config = load_config(env={"TASKD_REDIS_WAIT": "true", "TASKD_STATE_DIR": "/nonexistent"})
    assert config.redis.wait is True
    with pytest.raises(ConfigError, match="unknown variable"):
        load_config(env={"TASKD_REDIS_MAX_IDLE": "3", "TASKD_STATE_DIR": "/nonexistent"})


def test_pool_settings_reach_redis_py(tmp_path: Path) -> None:
    text = "redis:\n  max_active: 3\n  wait: true\n  max_idle_timeout: 240\n"
    config = load_config(_write(tmp_path, text), env={})
    client = redisdb.connect("redis://127.0.0.1:6379/0", config, "broker")
    pool = client.connection_pool
    assert type(pool).__name__ == "BlockingConnectionPool"
    assert pool.max_connections == 3
    assert pool.connection_kwargs["health_check_interval"] == 240
    client.close()
    # machinery's zeros: no limit on the pool or the timeouts.
    text = "redis:\n  max_active: 0\n  read_timeout: 0\n  connect_timeout: 0\n  wait: true\n"
    config = load_config(_write(tmp_path, text, "zeros.yml"), env={})
    client = redisdb.connect("redis://127.0.0.1:6379/0", config, "broker")
    pool = client.connection_pool
    assert not isinstance(pool, redis.BlockingConnectionPool)
    assert pool.max_connections > 1_000_000
    assert pool.connection_kwargs["socket_timeout"] is None
    assert pool.connection_kwargs["socket_connect_timeout"] is None
    client.close()


def test_etc_taskd_yml_and_the_readme_document_every_key() -> None:
    example = yaml.safe_load((REPO / "etc" / "taskd.yml").read_text(encoding="utf-8"))
    assert set(_leaves(example)) == {".".join(path) for path in env_names().values()}
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("### machinery's config files", 1)[1].split("\n## ", 1)[0]
    for key in MACHINERY_KEYS:
        assert f"`{key}`" in section, key


# -- the walkthrough of issue 12, through the command line --------------------------------

WALKTHROUGH = """\
broker: redis://localhost:6379
default_queue: "asong"
result_backend: redis://localhost:6379
redis:
  max_idle: 3
  max_active: 3
  max_idle_timeout: 240
  wait: true
  read_timeout: 15
  write_timeout: 15
  connect_timeout: 15
  normal_tasks_poll_period: 1000
  delayed_tasks_poll_period: 500
  delayed_tasks_key: "asong"
"""

KEY_PATHS = re.compile(r"\b(?:redis|amqp|sqs|worker)\.[a-z_]+|\bdefault_queue\b")


def test_the_walkthrough_as_written_is_refused_naming_only_the_delayed_key(
    tmp_path: Path,
) -> None:
    path = _write(tmp_path, WALKTHROUGH)
    for command in ("check-config", "start"):
        done = run_cli(tmp_path, "taskd", command, "-c", path)
        assert done.returncode == 2, done.stderr
        assert f"{path}: redis.delayed_tasks_key: 'asong' is also a queue's name" in done.stderr
        assert set(KEY_PATHS.findall(done.stderr)) == {"redis.delayed_tasks_key"}
        assert "Traceback" not in done.stderr


def test_the_walkthrough_with_its_delayed_key_renamed_passes_check_config(
    tmp_path: Path, redis_namespace: str
) -> None:
    text = WALKTHROUGH.replace(
        'delayed_tasks_key: "asong"', f"delayed_tasks_key: {redis_namespace}"
    )
    path = _write(tmp_path, text)
    done = run_cli(tmp_path, "taskd", "check-config", "-c", path)
    assert done.returncode == 0, done.stderr
    # (The test Redis keeps nothing on disk: a warning about the server, not about a key.)
    about_keys = [line for line in done.stderr.splitlines() if "redis_not_persistent" not in line]
    assert about_keys == [
        f"{path}: redis.max_idle: accepted and ignored: redis-py's pool does not limit idle"
        " connections; redis.max_active bounds the pool"
    ]
    shown = yaml.safe_load(done.stdout)
    assert shown["redis"]["max_active"] == 3
    assert shown["redis"]["wait"] is True
    assert shown["worker"]["poll_interval"] == 1.0


def test_the_walkthrough_runs_sum_with_an_eta_and_a_retry(
    tmp_path: Path, redis_namespace: str, daemon: Callable[..., Any]
) -> None:
    """Every line as written but the names, which are this test's own (queue, delayed set
    and key prefix), and a short expiry."""
    from taskd.client import Client

    ns = redis_namespace
    text = WALKTHROUGH.replace('"asong"', ns).replace(
        f"delayed_tasks_key: {ns}", f"delayed_tasks_key: {ns}_delayed"
    )
    text += f'  key_prefix: "{ns}:"\nresults_expire_in: 300\n'
    path = _write(tmp_path, text)
    process = daemon(Path(path), "--concurrency", "1")
    process.wait_ready(1)
    ignored = process.events("config_key_ignored")
    assert [event["key"] for event in ignored] == ["redis.max_idle"]
    assert "max_active bounds the pool" in ignored[0]["reason"]
    with Client(load_config(path, env={"TASKD_STATE_DIR": str(tmp_path)})) as client:
        later = client.send("sum", [1, 2, 3], countdown=1)
        retried = client.send("flaky", 1, retry_count=2)
        assert client.send("sum", [4, 5]).get(timeout=30) == 9
        assert later.get(timeout=30) == 6
        assert retried.get(timeout=30) == 2  # its second attempt succeeded

    # A reload into a colliding config is refused; the running children carry on.
    _write(tmp_path, text.replace(f"{ns}_delayed", ns))
    process.signal(signal.SIGHUP)
    failed = wait_until(lambda: process.events("reload_failed"), 15, what="the refusal")
    assert "redis.delayed_tasks_key" in failed[0]["error"]
