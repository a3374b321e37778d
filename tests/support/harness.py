"""Test helpers: polling, per-test configs, and real taskd processes."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

REPO = Path(__file__).resolve().parent.parent.parent
BIN = Path(sys.executable).parent
REDIS_URL = "redis://127.0.0.1:6379/0"  # loopback only, ever
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
RABBITMQ = ("127.0.0.1", 5672)  # AMQP_URL's server, for relays and proxies in front of it
MEMCACHE_URL = ""  # the test run's own memcached, set by the ``memcached`` fixture
MONGODB_URL = ""  # the test run's MongoDB (a wire server of its own), set by ``mongodb``
SQS_URL = ""  # the test run's moto SQS server, set by the ``sqs_server`` fixture
SQS_ACCOUNT = "123456789012"  # moto's default account
TEST_RESULTS_EXPIRE_S = 300

T = TypeVar("T")


def running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, waiting for its parent to read its end, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_until(
    predicate: Callable[[], T], timeout_s: float = 10.0, interval_s: float = 0.02, what: str = ""
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what or predicate}")
        time.sleep(interval_s)


def delete_amqp_namespace(namespace: str, queues: tuple[str, ...] = ()) -> None:
    """Delete what a test's AMQP drivers declared: its queue, dead letters, delay ladder and
    exchanges (all named after the namespace), and any other ``queues`` it names."""
    import pika

    from taskd.brokers.amqp.delays import Ladder
    from taskd.brokers.amqp.topology import DEAD_PREFIX

    ladder = Ladder(namespace)
    routing_keys = (namespace, f"{namespace}.task")  # its queue's name and binding key
    names = [namespace, DEAD_PREFIX + namespace, *queues, *ladder.queues()]
    names += [ladder.final(key) for key in routing_keys]
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        for name in names:
            with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
                connection.channel().queue_delete(name)
        for name in [namespace, *ladder.exchanges()]:
            with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
                connection.channel().exchange_delete(name)
    finally:
        connection.close()


def delete_amqp_records(namespaces: Sequence[str]) -> None:
    """Delete the durable queues the AMQP result backend made for these namespaces' tasks
    (``<exchange>.state.<task id>`` and the like, which no test can name in advance): one
    listing for a whole session. Left behind, they would expire only after 300 s, and a run
    after run left so many that RabbitMQ's restart in the ``alone`` test took minutes."""
    import pika

    if not namespaces:
        return
    listing = subprocess.run(
        ["rabbitmqctl", "--quiet", "list_queues", "--no-table-headers", "name"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    prefixes = tuple(f"{namespace}." for namespace in namespaces)
    names = [name for name in listing.stdout.split() if name.startswith(prefixes)]
    if not names:
        return
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        for name in names:
            with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
                connection.channel().queue_delete(name)
    finally:
        connection.close()


def delete_sqs_namespace(url: str, namespace: str) -> None:
    """Delete a test's SQS queues: all named after its namespace, and their dead letters."""
    from taskd.brokers.sqs.queues import DEAD_PREFIX, endpoint_of, new_client
    from taskd.config import Config

    client = new_client(endpoint_of(url, Config()), 10.0)
    try:
        for prefix in (namespace, DEAD_PREFIX + namespace):
            for queue_url in client.list_queues(QueueNamePrefix=prefix).get("QueueUrls", []):
                client.delete_queue(QueueUrl=queue_url)
    finally:
        client.close()


def delete_namespace(client: Any, namespace: str) -> None:
    keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
    if keys:
        client.delete(*keys)


def config_data(kind: str, namespace: str, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """A config for one test: its own queue, key prefix and database file."""
    if kind == "sqlite":
        url = f"sqlite://{tmp_path}/{namespace}.db?synchronous=normal"
        data: dict[str, Any] = {"broker": url, "result_backend": url}
    elif kind == "redis":
        data = {
            "broker": REDIS_URL,
            "result_backend": REDIS_URL,
            "redis": {"key_prefix": f"{namespace}:", "delayed_tasks_key": f"{namespace}:delayed"},
        }
    elif kind in ("amqp", "amqp_quorum"):  # an exchange and binding key of the test's own
        data = {
            "broker": AMQP_URL,
            "result_backend": AMQP_URL,
            "amqp": {
                "exchange": namespace,
                "binding_key": f"{namespace}.task",
                "queue_declare_args": (
                    {"x-queue-type": "quorum"} if kind == "amqp_quorum" else {"x-max-priority": 9}
                ),
            },
        }
    elif kind in ("sqs", "sqs_fifo"):  # messages on the test run's moto, results in SQLite
        data = {
            "broker": SQS_URL,
            "result_backend": f"sqlite://{tmp_path}/{namespace}.db?synchronous=normal",
            "sqs": {"receive_wait_time_seconds": 2},
            # A consumer that died loses its messages after 6 s, not 15 (its visibility);
            # a live one extends it 2-3 s in, so a loaded machine has 3 s of slack.
            "worker": {"heartbeat_interval": 1.0, "consumer_timeout": 6},
        }
    elif kind == "memcache":  # results in the test run's memcached, messages in SQLite
        data = {
            "broker": f"sqlite://{tmp_path}/{namespace}.db?synchronous=normal",
            "result_backend": MEMCACHE_URL,
        }
    elif kind == "mongodb":  # results in a database of the test's own, messages in SQLite
        data = {
            "broker": f"sqlite://{tmp_path}/{namespace}.db?synchronous=normal",
            "result_backend": MONGODB_URL,
            "mongodb": {"database": namespace},
        }
    else:
        raise ValueError(kind)
    queue = f"{namespace}.fifo" if kind == "sqs_fifo" else namespace
    data.update(default_queue=queue, results_expire_in=TEST_RESULTS_EXPIRE_S)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


TEST_TASKS = "tests.support.tasks"


def client_for(kind: str, namespace: str, tmp_path: Path, **overrides: Any) -> tuple[Path, Any]:
    """A config file for this test (with the test tasks imported) and a Client of it.

    A ``broker`` override serves as the result backend too.
    """
    from taskd.client import Client
    from taskd.config import load_config

    data = config_data(kind, namespace, tmp_path, **{"imports": [TEST_TASKS], **overrides})
    if "broker" in overrides and "result_backend" not in overrides:
        data["result_backend"] = overrides["broker"]
    path = write_config(tmp_path, data)
    return path, Client(load_config(path, env={"TASKD_STATE_DIR": str(tmp_path / "state")}))


def taskctl(tmp_path: Path, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(tmp_path, "taskctl", "-c", str(config), *args)


def write_config(tmp_path: Path, data: dict[str, Any], name: str = "taskd.yml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def process_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a taskd/taskctl process under test: no stray TASKD_* settings."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("TASKD_")}
    env.update(
        TASKD_STATE_DIR=str(tmp_path / "state"),
        PYTHONPATH=str(REPO),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class Daemon:
    """A real ``taskd start`` in its own process group, its JSON log in a file."""

    def __init__(
        self,
        config: Path | None,
        tmp_path: Path,
        args: list[str],
        env: dict[str, str],
        wrapper: Sequence[str] = (),  # a command that execs taskd after it (taskset -c 0)
    ) -> None:
        self.log_path = tmp_path / f"taskd-{secrets.token_hex(3)}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                *wrapper,
                str(BIN / "taskd"),
                "start",
                *(["-c", str(config)] if config else []),
                *args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            env=env,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if name is None or event.get("event") == name:
                out.append(event)
        return out

    def wait_ready(self, children: int, timeout_s: float = 20.0) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"taskd exited early ({self.process.returncode}):\n{self.log()}"
                )
            return len(self.events("child_ready")) >= children

        wait_until(ready, timeout_s, what=f"{children} children ready")

    def child_pids(self) -> set[int]:
        """Pids of the children alive now (spawned and not yet exited)."""
        ready = {event["pid"] for event in self.events("child_ready")}
        gone = {event["child_pid"] for event in self.events("child_exited")}
        return ready - gone

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout_s: float = 30.0) -> int:
        return self.process.wait(timeout=timeout_s)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """Kill the whole group: children of a supervisor that died may still run."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self._log.close()


def assert_kept_leased(process: Daemon, task_id: str, said: str) -> None:
    """The broker refused to set ``task_id``'s message aside (the refusal ``said`` so): its
    child logged it once and went on, and the daemon then stops cleanly, the message going
    back to its queue."""
    (refused,) = wait_until(lambda: process.events("message_reject_failed"), 20)
    assert refused["task_id"] == task_id and said in refused["error"], refused
    assert not process.events("child_crashed")
    process.signal(signal.SIGTERM)
    assert process.wait() == 0


def run_cli(
    tmp_path: Path, command: str, *args: str, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``taskd``/``taskctl`` as a user would, from the venv, with this test's environment."""
    return subprocess.run(
        [str(BIN / command), *args],
        capture_output=True,
        text=True,
        env=process_env(tmp_path),
        timeout=timeout_s,
        check=False,
    )


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def server_on_free_port(
    command: Callable[[int], list[str]], what: str, timeout_s: float = 30, **popen: Any
) -> Iterator[int]:
    """Start ``command(port)`` (a server of the test run's own) on a free loopback port;
    yield the port once it accepts connections; stop it afterwards. A server that exits
    first fails the wait at once."""
    import socket

    port = free_port()
    process = subprocess.Popen(
        command(port), stdout=subprocess.DEVNULL, stderr=popen.pop("stderr", subprocess.DEVNULL),
        **popen,
    )  # fmt: skip

    def answers() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"{what} exited with status {process.returncode}")
        with socket.socket() as client:
            return client.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_until(answers, timeout_s, 0.05, f"{what} to start")
        yield port
    finally:
        process.terminate()
        process.wait(10)


class PrivateRedis:
    """A redis-server of one test's own, on a loopback port, persisting every write (AOF), so
    it can be restarted mid-run without losing what it held."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.socket = directory / "redis.sock"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import redis

        self.process = subprocess.Popen(
            [
                "redis-server", "--bind", "127.0.0.1", "--port", str(self.port),
                "--dir", str(self.directory), "--appendonly", "yes", "--appendfsync", "always",
                "--save", "", "--logfile", str(self.directory / "redis.log"),
                "--unixsocket", str(self.socket), "--unixsocketperm", "700",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_until(answers, 10, 0.05, "the private redis-server to answer")
        client.close()

    def stop(self) -> None:
        """SIGTERM: Redis flushes its append-only file and exits."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


# machinery's Signature fields, in the order Go's encoding/json writes them.
GO_FIELDS = [
    "UUID", "Name", "RoutingKey", "ETA", "GroupUUID", "GroupTaskCount", "Args", "Headers",
    "Priority", "Immutable", "RetryCount", "RetryTimeout", "OnSuccess", "OnError",
    "ChordCallback", "BrokerMessageGroupId", "SQSReceiptHandle", "StopTaskDeletionOnError",
    "IgnoreWhenTaskNotRegistered",
]  # fmt: skip


def go_message(task_id: str, name: str, args: str, routing_key: str, eta: str = "null") -> bytes:
    """A message byte for byte as machinery's Go producer writes it (see GO_MESSAGE in
    test_daemon.py); ``args`` is the Args JSON, ``eta`` the ETA's (a quoted time or null)."""
    return (
        f'{{"UUID":"{task_id}","Name":"{name}","RoutingKey":"{routing_key}","ETA":{eta},'
        f'"GroupUUID":"","GroupTaskCount":0,"Args":{args},"Headers":{{}},"Priority":0,'
        '"Immutable":false,"RetryCount":0,"RetryTimeout":0,"OnSuccess":null,"OnError":null,'
        '"ChordCallback":null,"BrokerMessageGroupId":"","SQSReceiptHandle":"",'
        '"StopTaskDeletionOnError":false,"IgnoreWhenTaskNotRegistered":false}'
    ).encode()


@contextlib.contextmanager
def amqp_connection() -> Iterator[Any]:
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        yield connection
    finally:
        connection.close()


def consumer_count(connection: Any, queue: str) -> int:
    """Consumers of ``queue`` (0 if it does not exist yet), on a channel of its own: a
    passive declare of a missing queue closes its channel."""
    import pika.exceptions

    channel = connection.channel()
    try:
        return int(channel.queue_declare(queue, passive=True).method.consumer_count)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return 0
        raise
    finally:
        if channel.is_open:
            channel.close()


def declare_machinery_state_queue(channel: Any, exchange: str, task_id: str) -> None:
    """The queue machinery's AMQP backend reads a task's states from, declared as it declares
    it (its producer's PENDING write, or its first read): named and bound by the task id."""
    channel.exchange_declare(exchange, "direct", durable=True)
    expires_ms = TEST_RESULTS_EXPIRE_S * 1000
    arguments = {"x-message-ttl": expires_ms, "x-expires": expires_ms}
    channel.queue_declare(task_id, durable=False, auto_delete=True, arguments=arguments)
    channel.queue_bind(task_id, exchange, routing_key=task_id)


def create_queue_with_redrive(raw: Any, name: str, max_receives: int) -> None:
    """An SQS queue ``name`` with a redrive policy into ``<name>-dlq`` after
    ``max_receives`` receives, as an operator sets one up (1 s visibility timeout)."""
    dead_url = raw.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    attributes = raw.get_queue_attributes(QueueUrl=dead_url, AttributeNames=["QueueArn"])
    policy = {"deadLetterTargetArn": attributes["Attributes"]["QueueArn"]}
    policy["maxReceiveCount"] = max_receives
    raw.create_queue(
        QueueName=name,
        Attributes={"RedrivePolicy": json.dumps(policy), "VisibilityTimeout": "1"},
    )


def assert_refused(path: Any, key: str, reason: str) -> None:
    """Loading the config file at ``path`` fails naming the file and ``key``, with ``reason``."""
    import pytest

    from taskd.config import load_config
    from taskd.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert caught.value.key == key
    assert str(caught.value).startswith(f"{path}: {key}: ")
    assert reason in str(caught.value)


def assert_poison_set_aside(
    tmp_path: Path, config: Path, client: Any, unknown: Any, after: Any, queue: str
) -> None:
    """A task sent after an unknown task (``unknown``) and a message that is not JSON
    (``{not json at all``) still runs; both are set aside with their reasons, shown by
    ``taskctl queue dead``, and the unknown task ends FAILURE."""
    from taskd.wire import State, decode_signature

    assert after.get(timeout=20) == 6  # the queue kept moving
    failed = unknown.wait(5)
    assert failed.state is State.FAILURE
    assert failed.error == "task 'no_such_task' is not registered"
    done = taskctl(tmp_path, config, "queue", "dead", "--json")
    assert done.returncode == 0, done.stderr
    letters = sorted(
        (json.loads(line) for line in done.stdout.splitlines()),
        key=lambda letter: letter["reason"],
    )
    assert [letter["reason"].split(":")[0] for letter in letters] == [
        "malformed message",
        "task 'no_such_task' is not registered",
    ]
    assert letters[0]["reason"].startswith("malformed message: not valid JSON")
    assert letters[0]["body"] == "{not json at all"
    assert decode_signature(letters[1]["body"].encode()).uuid == unknown.task_id
    wait_until(lambda: client.broker.size(queue) == 0, 5, what=f"{queue} to be empty")
