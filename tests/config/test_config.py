"""Configuration: defaults, the YAML file, TASKD_* overrides, errors that say where."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from taskd.config import (
    Config,
    dump,
    embedded_url,
    env_names,
    load_config,
    redact_url,
    state_dir,
    to_mapping,
)
from taskd.errors import ConfigError
from tests.support.harness import assert_refused


def _write(tmp_path: Path, text: str, name: str = "taskd.yml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME of its own, so the ~/.local/state default never touches the real one."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "home"


# -- defaults -------------------------------------------------------------------------------


def test_defaults(home: Path) -> None:
    config = load_config(env={})
    embedded = f"sqlite://{home}/.local/state/taskd/taskd.db"
    assert config.broker == embedded
    assert config.result_backend == embedded
    assert config.default_queue == "machinery_tasks"
    assert config.results_expire_in == 3600
    assert config.results_expire_in_s == 3600
    assert config.imports == ()
    assert config.log_level == "info"
    assert config.source is None
    assert config.redis.delayed_tasks_key == "delayed_tasks"
    assert config.redis.delayed_tasks_poll_period == 500
    assert config.amqp.exchange == "machinery_exchange"
    assert config.amqp.exchange_type == "direct"
    assert config.amqp.binding_key == "machinery_task"
    assert config.amqp.queue_declare_args == {}
    assert config.worker.concurrency == 0
    assert config.sqs.receive_visibility_timeout is None


def test_dataclass_defaults_leave_urls_empty() -> None:
    config = Config()
    assert (config.broker, config.result_backend) == ("", "")
    assert config.default_queue == "machinery_tasks"


def test_results_expire_in_zero_means_an_hour(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, "results_expire_in: 0\n"), env={})
    assert config.results_expire_in == 0
    assert config.results_expire_in_s == 3600
    config = load_config(_write(tmp_path, "results_expire_in: 60\n"), env={})
    assert config.results_expire_in_s == 60


def test_state_dir_precedence(tmp_path: Path, home: Path) -> None:
    assert state_dir({}) == home / ".local/state/taskd"
    assert state_dir({"XDG_STATE_HOME": str(tmp_path / "xdg")}) == tmp_path / "xdg" / "taskd"
    both = {"XDG_STATE_HOME": str(tmp_path / "xdg"), "TASKD_STATE_DIR": str(tmp_path / "own")}
    assert state_dir(both) == tmp_path / "own"
    assert state_dir({"TASKD_STATE_DIR": "~/somewhere"}) == home / "somewhere"
    assert state_dir({"TASKD_STATE_DIR": "", "XDG_STATE_HOME": ""}) == home / ".local/state/taskd"


def test_embedded_url_under_state_dir(tmp_path: Path, home: Path) -> None:
    assert embedded_url({"TASKD_STATE_DIR": str(tmp_path / "s")}) == (
        f"sqlite://{tmp_path}/s/taskd.db"
    )
    config = load_config(env={"XDG_STATE_HOME": str(tmp_path / "xdg")})
    assert config.broker == f"sqlite://{tmp_path}/xdg/taskd/taskd.db"
    assert config.result_backend == config.broker


def test_relative_state_dir_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert embedded_url({"TASKD_STATE_DIR": "rel"}) == f"sqlite://{tmp_path}/rel/taskd.db"


# -- the file -------------------------------------------------------------------------------

FULL_FILE = """\
broker: redis://localhost:6379/3
result_backend: redis://localhost:6379/4
default_queue: jobs
results_expire_in: 120
imports: [myapp.tasks, other.tasks]
log_level: debug
redis:
  key_prefix: "app:"
  delayed_tasks_key: app_delayed
  delayed_tasks_poll_period: 50
  connect_timeout: 2
  max_active: 4
amqp:
  exchange: ex
  exchange_type: topic
  queue_declare_args:
    x-max-priority: 10
  prefetch_count: 0
sqs:
  receive_wait_time_seconds: 0
  receive_visibility_timeout: 30
  visibility_heartbeat: false
worker:
  concurrency: 4
  prefetch: 2
  shutdown_timeout: 5
  retry_jitter: 0.25
client:
  pipeline: 8
"""


def test_file_values(tmp_path: Path) -> None:
    path = _write(tmp_path, FULL_FILE)
    config = load_config(path, env={})
    assert config.source == path
    assert config.broker == "redis://localhost:6379/3"
    assert config.result_backend == "redis://localhost:6379/4"
    assert config.default_queue == "jobs"
    assert config.results_expire_in == 120
    assert config.imports == ("myapp.tasks", "other.tasks")
    assert config.log_level == "debug"
    assert config.redis.key_prefix == "app:"
    assert config.redis.delayed_tasks_key == "app_delayed"
    assert config.redis.delayed_tasks_poll_period == 50
    assert config.redis.connect_timeout == 2.0
    assert isinstance(config.redis.connect_timeout, float)
    assert config.redis.max_active == 4
    assert config.redis.read_timeout == 15.0  # untouched keys keep their defaults
    assert config.amqp.exchange == "ex"
    assert config.amqp.exchange_type == "topic"
    assert config.amqp.queue_declare_args == {"x-max-priority": 10}
    assert config.amqp.prefetch_count == 0
    assert config.amqp.binding_key == "machinery_task"
    assert config.sqs.receive_wait_time_seconds == 0
    assert config.sqs.receive_visibility_timeout == 30
    assert config.sqs.visibility_heartbeat is False
    assert config.worker.concurrency == 4
    assert config.worker.prefetch == 2
    assert config.client.pipeline == 8
    assert config.worker.shutdown_timeout == 5.0
    assert config.worker.retry_jitter == 0.25


def test_imports_as_a_comma_string_in_the_file(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, "imports: 'a.b, c'\n"), env={})
    assert config.imports == ("a.b", "c")


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_empty_file_gives_defaults(tmp_path: Path, home: Path, text: str) -> None:
    config = load_config(_write(tmp_path, text), env={})
    assert config.default_queue == "machinery_tasks"
    assert config.worker == Config().worker


def test_null_section_gives_its_defaults(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, "redis:\nworker:\n"), env={})
    assert config.redis == Config().redis
    assert config.worker == Config().worker


def test_taskd_config_env_is_used_without_a_path(tmp_path: Path) -> None:
    path = _write(tmp_path, "default_queue: from_env_file\n")
    config = load_config(env={"TASKD_CONFIG": path})
    assert config.default_queue == "from_env_file"
    assert config.source == path


def test_a_path_wins_over_taskd_config(tmp_path: Path) -> None:
    env_file = _write(tmp_path, "default_queue: env_file\n", "env.yml")
    arg_file = _write(tmp_path, "default_queue: arg_file\n", "arg.yml")
    config = load_config(arg_file, env={"TASKD_CONFIG": env_file})
    assert config.default_queue == "arg_file"
    assert config.source == arg_file


def test_load_config_accepts_a_pathlike(tmp_path: Path) -> None:
    path = Path(_write(tmp_path, "default_queue: q\n"))
    assert load_config(path, env={}).default_queue == "q"


def test_os_environ_is_read_when_no_env_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("TASKD_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TASKD_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("TASKD_DEFAULT_QUEUE", "from_os_environ")
    config = load_config()
    assert config.default_queue == "from_os_environ"
    assert config.broker == f"sqlite://{tmp_path}/taskd.db"


# -- TASKD_* overrides ------------------------------------------------------------------------


def test_env_overrides_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, FULL_FILE)
    config = load_config(
        path,
        env={
            "TASKD_BROKER": "amqp://guest:guest@localhost:5672/",
            "TASKD_WORKER_CONCURRENCY": "8",
            "TASKD_IMPORTS": "x.tasks, y.tasks,,",
            "TASKD_REDIS_DELAYED_TASKS_KEY": "env_delayed",
        },
    )
    assert config.broker == "amqp://guest:guest@localhost:5672/"
    assert config.result_backend == "redis://localhost:6379/4"  # the file's, not overridden
    assert config.worker.concurrency == 8
    assert config.worker.prefetch == 2
    assert config.imports == ("x.tasks", "y.tasks")
    assert config.redis.delayed_tasks_key == "env_delayed"
    assert config.redis.key_prefix == "app:"


@pytest.mark.parametrize(
    ("name", "text", "path", "expected"),
    [
        ("TASKD_BROKER", "redis://localhost:6379/0", ("broker",), "redis://localhost:6379/0"),
        ("TASKD_DEFAULT_QUEUE", "q1", ("default_queue",), "q1"),
        ("TASKD_RESULTS_EXPIRE_IN", "60", ("results_expire_in",), 60),
        ("TASKD_WORKER_CONCURRENCY", "4", ("worker", "concurrency"), 4),
        ("TASKD_WORKER_SHUTDOWN_TIMEOUT", "2.5", ("worker", "shutdown_timeout"), 2.5),
        ("TASKD_WORKER_SHUTDOWN_TIMEOUT", "5", ("worker", "shutdown_timeout"), 5.0),
        ("TASKD_IMPORTS", "a.tasks", ("imports",), ("a.tasks",)),
        ("TASKD_IMPORTS", "a.tasks,b.tasks", ("imports",), ("a.tasks", "b.tasks")),
        ("TASKD_IMPORTS", " a , b ", ("imports",), ("a", "b")),
        ("TASKD_IMPORTS", "[a, b]", ("imports",), ("a", "b")),
        (
            "TASKD_REDIS_DELAYED_TASKS_KEY",
            "my_delayed",
            ("redis", "delayed_tasks_key"),
            "my_delayed",
        ),
        # a string key takes the text as is, even when it looks like YAML
        ("TASKD_REDIS_DELAYED_TASKS_KEY", "123", ("redis", "delayed_tasks_key"), "123"),
        ("TASKD_REDIS_KEY_PREFIX", "null", ("redis", "key_prefix"), "null"),
        ("TASKD_REDIS_CLIENT_NAME", "", ("redis", "client_name"), ""),
        ("TASKD_SQS_VISIBILITY_HEARTBEAT", "false", ("sqs", "visibility_heartbeat"), False),
        ("TASKD_SQS_RECEIVE_VISIBILITY_TIMEOUT", "30", ("sqs", "receive_visibility_timeout"), 30),
        ("TASKD_SQS_RECEIVE_VISIBILITY_TIMEOUT", "", ("sqs", "receive_visibility_timeout"), None),
        (
            "TASKD_AMQP_QUEUE_DECLARE_ARGS",
            '{"x-max-priority": 10}',
            ("amqp", "queue_declare_args"),
            {"x-max-priority": 10},
        ),
        ("TASKD_LOG_LEVEL", "warning", ("log_level",), "warning"),
    ],
)
def test_env_override(name: str, text: str, path: tuple[str, ...], expected: object) -> None:
    config = load_config(env={name: text, "TASKD_STATE_DIR": "/nonexistent/state"})
    value: object = config
    for part in path:
        value = getattr(value, part)
    assert value == expected
    assert type(value) is type(expected)


def test_env_names_cover_every_key() -> None:
    names = env_names()
    assert names["TASKD_BROKER"] == ("broker",)
    assert names["TASKD_IMPORTS"] == ("imports",)
    assert names["TASKD_WORKER_CONCURRENCY"] == ("worker", "concurrency")
    assert names["TASKD_REDIS_DELAYED_TASKS_KEY"] == ("redis", "delayed_tasks_key")
    assert names["TASKD_AMQP_QUEUE_DECLARE_ARGS"] == ("amqp", "queue_declare_args")
    assert "TASKD_SOURCE" not in names  # internal, not a key
    assert "TASKD_REDIS" not in names  # sections are not values
    assert all(name == name.upper() and name.startswith("TASKD_") for name in names)


@pytest.mark.parametrize(
    ("name", "text", "reason"),
    [
        ("TASKD_WORKER_CONCURRENCY", "four", "must be a whole number, got 'four'"),
        ("TASKD_WORKER_CONCURRENCY", "2.5", "must be a whole number"),
        ("TASKD_WORKER_CONCURRENCY", "-1", "must be at least 0, got -1"),
        ("TASKD_WORKER_PREFETCH", "-1", "must be at least 0"),
        ("TASKD_WORKER_SHUTDOWN_TIMEOUT", "soon", "must be a number"),
        ("TASKD_SQS_VISIBILITY_HEARTBEAT", "0", "must be true or false"),
        ("TASKD_DEFAULT_QUEUE", "", "must not be empty"),
        ("TASKD_LOG_LEVEL", "loud", "must be one of debug, info, warning, error, critical"),
        ("TASKD_IMPORTS", "{a: 1}", "must be a list of strings"),
        ("TASKD_AMQP_QUEUE_DECLARE_ARGS", "[1]", "must be a mapping"),
    ],
)
def test_bad_env_values_name_the_variable(name: str, text: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env={name: text})
    assert caught.value.key == name
    assert caught.value.file == "environment"
    assert str(caught.value).startswith(f"environment: {name}: ")
    assert reason in str(caught.value)


# -- errors in the file -----------------------------------------------------------------------


def test_unknown_nested_key_names_the_file_and_the_full_path(tmp_path: Path) -> None:
    path = _write(tmp_path, "redis:\n  delayed_taks_key: x\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert caught.value.key == "redis.delayed_taks_key"
    assert caught.value.file == path
    message = str(caught.value)
    assert message.startswith(f"{path}: redis.delayed_taks_key: unknown key")
    assert "delayed_tasks_key" in message  # the suggestion


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = _write(tmp_path, "default_queue: q\nbrokr: redis://\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert caught.value.key == "brokr"
    assert str(caught.value).startswith(f"{path}: brokr: unknown key")
    assert "'broker'" in str(caught.value)


def test_unknown_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, "memcache:\n  servers: [a]\n"), env={})
    assert caught.value.key == "memcache"
    assert "unknown key" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("worker:\n  concurrency: four\n", "worker.concurrency", "must be a whole number"),
        ("worker:\n  concurrency: 2.5\n", "worker.concurrency", "must be a whole number"),
        ("worker:\n  concurrency: true\n", "worker.concurrency", "must be a whole number"),
        ("worker:\n  shutdown_timeout: soon\n", "worker.shutdown_timeout", "must be a number"),
        ("worker:\n  shutdown_timeout: false\n", "worker.shutdown_timeout", "must be a number"),
        ("sqs:\n  visibility_heartbeat: 1\n", "sqs.visibility_heartbeat", "must be true or false"),
        ("broker: 5\n", "broker", "must be a string"),
        ("default_queue: [a]\n", "default_queue", "must be a string"),
        ("default_queue: ''\n", "default_queue", "must not be empty"),
        ("imports: [a, 1]\n", "imports", "must be a list of strings"),
        ("imports: 5\n", "imports", "must be a list of strings"),
        ("amqp:\n  queue_declare_args: [1]\n", "amqp.queue_declare_args", "must be a mapping"),
        ("amqp:\n  exchange_type: weird\n", "amqp.exchange_type", "must be one of direct"),
        ("log_level: loud\n", "log_level", "must be one of"),
        ("redis: 5\n", "redis", "must be a mapping of keys"),
        ("worker: [1]\n", "worker", "must be a mapping of keys"),
    ],
)
def test_wrong_types_name_the_file_and_key(
    tmp_path: Path, text: str, key: str, reason: str
) -> None:
    assert_refused(_write(tmp_path, text), key, reason)


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("worker:\n  prefetch: -1\n", "worker.prefetch", "must be at least 0, got -1"),
        ("worker:\n  concurrency: -1\n", "worker.concurrency", "must be at least 0, got -1"),
        ("worker:\n  poll_interval: 0\n", "worker.poll_interval", "must be at least 0.01"),
        ("redis:\n  connect_timeout: -1\n", "redis.connect_timeout", "must be at least 0"),
        ("redis:\n  max_active: -1\n", "redis.max_active", "must be at least 0"),
        ("redis:\n  delayed_tasks_poll_period: 0\n", "redis.delayed_tasks_poll_period", "least 1"),
        ("results_expire_in: -1\n", "results_expire_in", "must be at least 0"),
    ],
)
def test_values_below_minimum(tmp_path: Path, text: str, key: str, reason: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert caught.value.key == key
    assert reason in str(caught.value)


def test_invalid_yaml_gives_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "default_queue: q\nlog_level: info\nworker:\n\tconcurrency: 4\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    message = str(caught.value)
    assert message.startswith(f"{path}: not valid YAML at line 4")
    assert caught.value.file == path


def test_invalid_yaml_unclosed_flow_sequence(tmp_path: Path) -> None:
    path = _write(tmp_path, "imports: [a,\n  b\nlog_level: info\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+, column \d+"):
        load_config(path, env={})


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        ("broker: redis://h:6379/0\ndefault_queue: q\nbroker: sqlite:///tmp/x.db\n", 3, "broker"),
        ("worker:\n  concurrency: 2\n  prefetch: 1\n  concurrency: 3\n", 4, "concurrency"),
        ("redis: {max_active: 3, max_active: 4}\n", 1, "max_active"),
    ],
)
def test_a_key_given_twice_is_refused_not_silently_the_last(
    tmp_path: Path, text: str, line: int, key: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    message = str(caught.value)
    assert message.startswith(f"{path}: not valid YAML at line {line}"), message
    assert f"{key!r} is given twice" in message


def test_yaml_merge_keys_may_be_given_again(tmp_path: Path) -> None:
    text = "worker:\n  <<: {concurrency: 2, prefetch: 4}\n  concurrency: 3\n"
    config = load_config(_write(tmp_path, text), env={})
    assert (config.worker.concurrency, config.worker.prefetch) == (3, 4)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "5\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(path, env={})


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.yml")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert str(caught.value).startswith(f"{path}: cannot read config file")


def test_missing_file_named_by_taskd_config(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.yml")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(env={"TASKD_CONFIG": path})


# -- redaction and dump ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:secret@localhost:6379/0", "redis://:***@localhost:6379/0"),
        ("redis://user:secret@localhost:6379", "redis://user:***@localhost:6379"),
        ("amqp://guest:guest@localhost:5672/", "amqp://guest:***@localhost:5672/"),
        (
            "amqps://u:p@rabbit.example.com:5671/vhost",
            "amqps://u:***@rabbit.example.com:5671/vhost",
        ),
        ("mongodb://u:p@h1:27017,h2:27017/db", "mongodb://u:***@h1:27017,h2:27017/db"),
        ("redis://:p@ss@host:6379", "redis://:***@host:6379"),  # '@' inside the password
        # machinery's Redis form: redis://password@host:port/db
        ("redis://password@localhost:6379", "redis://***@localhost:6379"),
        ("rediss://password@localhost:6380/1", "rediss://***@localhost:6380/1"),
        ("redis+socket://password@/var/run/redis.sock", "redis+socket://***@/var/run/redis.sock"),
        # nothing secret: unchanged
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("amqp://guest@localhost:5672/", "amqp://guest@localhost:5672/"),
        ("sqlite:///var/lib/taskd/taskd.db", "sqlite:///var/lib/taskd/taskd.db"),
        ("https://sqs.us-east-1.amazonaws.com/123", "https://sqs.us-east-1.amazonaws.com/123"),
        ("", ""),
        ("not a url", "not a url"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0?client_name=me@example",
        "amqp://localhost:5672/team@vhost",
    ],
)
def test_redact_url_ignores_at_signs_after_the_host(url: str) -> None:
    assert redact_url(url) == url


def test_dump_is_yaml_with_the_password_redacted(tmp_path: Path) -> None:
    config = load_config(
        env={
            "TASKD_BROKER": "redis://:hunter2@localhost:6379/0",
            "TASKD_RESULT_BACKEND": "redis://hunter3@localhost:6379/1",
            "TASKD_STATE_DIR": str(tmp_path),
        }
    )
    text = dump(config)
    assert "hunter2" not in text
    assert "hunter3" not in text
    data = yaml.safe_load(text)
    assert data["broker"] == "redis://:***@localhost:6379/0"
    assert data["result_backend"] == "redis://***@localhost:6379/1"
    assert data["default_queue"] == "machinery_tasks"
    assert data["worker"]["concurrency"] == 0
    assert data["redis"]["delayed_tasks_key"] == "delayed_tasks"
    assert data["imports"] == []
    assert "source" not in data
    assert list(data) == [
        "broker",
        "result_backend",
        "default_queue",
        "results_expire_in",
        "imports",
        "log_level",
        "redis",
        "amqp",
        "sqs",
        "mongodb",
        "worker",
        "metrics",
        "client",
    ]


def test_dump_output_loads_back_as_the_same_config(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, FULL_FILE), env={})
    reloaded = load_config(_write(tmp_path, dump(config), "dumped.yml"), env={})
    assert reloaded == config  # source is not compared


def test_to_mapping_without_redaction_keeps_the_password() -> None:
    config = load_config(env={"TASKD_BROKER": "redis://:pw@h:1/0", "TASKD_STATE_DIR": "/s"})
    assert to_mapping(config)["broker"] == "redis://:***@h:1/0"
    assert to_mapping(config, redact=False)["broker"] == "redis://:pw@h:1/0"


def test_an_unknown_taskd_variable_is_an_error_with_a_hint(tmp_path: Path) -> None:
    env = {"TASKD_STATE_DIR": str(tmp_path), "TASKD_WORKER_CONCURENCY": "3"}
    with pytest.raises(
        ConfigError, match=r"unknown variable \(did you mean TASKD_WORKER_CONCURRENCY"
    ) as caught:
        load_config(env=env)
    assert caught.value.key == "TASKD_WORKER_CONCURENCY"
    # taskd's own non-key variables and the test suite's are not config keys, and fine:
    env = {"TASKD_STATE_DIR": str(tmp_path), "TASKD_CONFIG": "", "TASKD_TEST_MONGODB_URL": "x"}
    assert load_config(env=env).worker.concurrency == 0


@pytest.mark.parametrize(
    ("broker", "results_with_the_broker"),
    [
        ("redis://127.0.0.1:6379/0", True),
        ("amqp://guest:guest@127.0.0.1:5672/", True),
        ("sqs://127.0.0.1:9324/1", False),  # SQS holds no results: the embedded file
    ],
)
def test_results_default_to_the_brokers_server_where_it_can_hold_them(
    tmp_path: Path, broker: str, results_with_the_broker: bool
) -> None:
    config = load_config(env={"TASKD_STATE_DIR": str(tmp_path), "TASKD_BROKER": broker})
    expected = broker if results_with_the_broker else f"sqlite://{tmp_path / 'taskd.db'}"
    assert config.result_backend == expected


def test_check_config_loads_the_imports(tmp_path: Path) -> None:
    from tests.support.harness import run_cli, write_config

    config = write_config(tmp_path, {"imports": ["no_such_module_here"]})
    done = run_cli(tmp_path, "taskd", "check-config", "-c", str(config))
    assert done.returncode == 2
    assert f"{config}: imports: task plugin 'no_such_module_here' failed to load" in done.stderr
