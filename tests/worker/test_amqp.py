"""A real ``taskd start`` on RabbitMQ: machinery's messages both ways, long tasks, delays,
connection loss, a RabbitMQ restart and bad input (kill -9 is in test_reliability.py, for
every broker). Results go to SQLite; each test has an exchange,
binding key and queues of its own (``amqp_namespace`` deletes them)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from taskd.brokers import open_broker
from taskd.brokers.amqp import delays
from taskd.brokers.amqp.delays import Ladder
from taskd.brokers.amqp.topology import DEAD_EXCHANGE, DEAD_PREFIX, Topology
from taskd.client import Client, signature
from taskd.config import load_config
from taskd.drivers import IDLE_CHECK_S
from taskd.errors import BrokerError, ConfigError
from taskd.wire import (
    Arg,
    GoTime,
    Signature,
    State,
    TaskState,
    decode_signature,
    decode_state,
    new_id,
)
from tests.support.harness import (
    AMQP_URL,
    GO_FIELDS,
    Daemon,
    amqp_connection,
    assert_kept_leased,
    assert_poison_set_aside,
    client_for,
    consumer_count,
    declare_machinery_state_queue,
    delete_amqp_namespace,
    go_message,
    run_cli,
    wait_until,
    write_config,
)
from tests.support.tasks import runs
from tests.support.traces import (
    ended,
    send_slow,
)

AMQP_PORT = 5672
QUICK_RECOVERY = {"heartbeat_interval": 0.5}


def amqp_client(namespace: str, tmp_path: Path, **overrides: Any) -> tuple[Path, Client]:
    """The AMQP broker with results in SQLite: these tests are about the broker."""
    backend = f"sqlite://{tmp_path}/{namespace}.db?synchronous=normal"
    return client_for("amqp", namespace, tmp_path, result_backend=backend, **overrides)


# -- RabbitMQ from the outside --------------------------------------------------------------


def test_ready_means_consuming(
    amqp_namespace: str, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    """A producer that starts when taskd says it is ready (``child_ready``, ``taskd_ready``,
    READY=1) finds the queue declared, bound and consumed: machinery publishes without
    ``mandatory``, so a message sent to an exchange with no queue bound yet is dropped."""
    config, _client = amqp_client(amqp_namespace, tmp_path)
    process = daemon(config, "--concurrency", "2")
    process.wait_ready(2)
    with amqp_connection() as connection:
        assert consumer_count(connection, amqp_namespace) == 2
    wait_until(lambda: process.events("taskd_ready"), 10, what="taskd_ready")
    (ready,) = process.events("taskd_ready")
    assert ready["children"] == 2 and ready["queue"] == amqp_namespace


def go_publish(connection: Any, exchange: str, routing_key: str, body: bytes) -> None:
    """Publish as machinery does (persistent JSON, empty headers); confirmed and mandatory,
    so that a message RabbitMQ could not route fails the test here."""
    import pika

    channel = connection.channel()
    channel.confirm_delivery()
    properties = pika.BasicProperties(content_type="application/json", delivery_mode=2, headers={})
    channel.basic_publish(exchange, routing_key, body, properties, mandatory=True)
    channel.close()


def machinery_get(channel: Any, exchange: str, task_id: str) -> list[TaskState]:
    """machinery's AsyncResult.Get on its AMQP backend: GetState declares the task's queue and
    consumes one state, again until one is completed. Every state read, in order."""
    declare_machinery_state_queue(channel, exchange, task_id)
    read: list[TaskState] = []

    def completed() -> bool:
        method, _properties, body = channel.basic_get(task_id, auto_ack=True)
        if method is not None:
            read.append(decode_state(body))
        return bool(read) and read[-1].is_completed

    wait_until(completed, 20, 0.05, f"machinery's reader to find {task_id} completed")
    return read


def rabbitmqctl(*args: str) -> str:
    done = subprocess.run(
        ["rabbitmqctl", "--quiet", *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@contextlib.contextmanager
def rabbit_setting(name: str, value: int) -> Iterator[None]:
    """RabbitMQ's setting ``name`` (an integer of the rabbit application) at ``value``, put
    back after. Server-wide: for tests pytest runs alone."""
    was = rabbitmqctl("eval", f"application:get_env(rabbit, {name}).").strip()
    found = re.fullmatch(r"\{ok,(\d+)\}", was)
    rabbitmqctl("eval", f"application:set_env(rabbit, {name}, {value}).")
    try:
        yield
    finally:
        if found:
            rabbitmqctl("eval", f"application:set_env(rabbit, {name}, {found[1]}).")
        else:
            rabbitmqctl("eval", f"application:unset_env(rabbit, {name}).")


def queues_named_after(namespace: str) -> set[str]:
    listing = rabbitmqctl("list_queues", "--no-table-headers", "name")
    return {name for name in listing.split() if namespace in name}


def amqp_ports_of_group(pgid: int) -> set[int]:
    """Local ports of the TCP connections to RabbitMQ held by processes of group ``pgid``."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):  # gone meanwhile
                if os.getpgid(int(entry)) == pgid:
                    pids.append(int(entry))
    return amqp_ports_of(pids)


def amqp_ports_of(pids: list[int]) -> set[int]:
    """Local ports of the TCP connections to RabbitMQ held by these processes."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):  # gone meanwhile
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, remote, inode = fields[1], fields[2], fields[9]
                if inode in inodes and int(remote.rsplit(":", 1)[1], 16) == AMQP_PORT:
                    ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def daemon_connections(process: Daemon) -> dict[str, int]:
    """RabbitMQ's connections of this daemon (and only its: other tests' connections are
    left alone): connection pid -> negotiated heartbeat in seconds."""
    return connections_on(amqp_ports_of_group(process.pid))


def connections_on(ports: set[int]) -> dict[str, int]:
    """RabbitMQ's connections from these local ports: connection pid -> heartbeat (s)."""
    listing = rabbitmqctl("list_connections", "--no-table-headers", "pid", "peer_port", "timeout")
    found = {}
    for line in listing.splitlines():
        pid, port, heartbeat = line.split("\t")
        if int(port) in ports:
            found[pid] = int(heartbeat)
    return found


def close_connections(pids: list[str]) -> None:
    """Force-close these connections from the RabbitMQ side, as a broker restart or a
    network cut would look to the client (the server itself keeps running)."""
    closing = [
        subprocess.Popen(
            ["rabbitmqctl", "--quiet", "close_connection", pid, "taskd test: connection loss"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for pid in pids
    ]
    for command in closing:
        _out, err = command.communicate(timeout=60)
        assert command.returncode == 0, err


# -- traces ---------------------------------------------------------------------------------


def all_succeeded(client: Client, ids: list[str]) -> bool:
    return all(s is not None and s.state is State.SUCCESS for s in client.backend.get_states(ids))


# -- the tests ------------------------------------------------------------------------------


def test_messages_from_a_go_producer_run(
    amqp_namespace: str, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    """Published as machinery does: to the exchange with the binding key, and delayed through
    machinery's own per-delay queue, which dead-letters into the exchange."""
    namespace = amqp_namespace
    binding_key = f"{namespace}.task"
    config, client = amqp_client(namespace, tmp_path)
    process = daemon(config, "--concurrency", "1")
    process.wait_ready(1)
    trace = tmp_path / "trace"
    delay_ms = 1500
    delay_queue = f"delay.{delay_ms}.{namespace}.{binding_key}"
    with amqp_connection() as connection:
        now_id, later_id = new_id(), new_id()
        int_args = '[{"Name":"","Type":"int64","Value":1},{"Name":"","Type":"int64","Value":1}]'
        go_publish(
            connection, namespace, binding_key, go_message(now_id, "add", int_args, binding_key)
        )

        # machinery's delay(): declare delay.<ms>.<exchange>.<routing key>, bind it by its own
        # name, publish to it; the message carries its ETA.
        channel = connection.channel()
        try:
            channel.queue_declare(
                delay_queue,
                durable=True,
                arguments={
                    "x-dead-letter-exchange": namespace,
                    "x-dead-letter-routing-key": binding_key,
                    "x-message-ttl": delay_ms,
                    "x-expires": 2 * delay_ms,
                },
            )
            channel.queue_bind(delay_queue, namespace, routing_key=delay_queue)
            sent_at = time.time()
            eta = GoTime(time.time_ns() + delay_ms * 1_000_000)
            path_arg = json.dumps([{"Name": "", "Type": "string", "Value": str(trace)}])
            body = go_message(later_id, "stamp", path_arg, binding_key, f'"{eta}"')
            go_publish(connection, namespace, delay_queue, body)

            state = client.result(now_id).wait(20)
            assert state.state is State.SUCCESS
            assert state.python_results() == [2]
            later = client.result(later_id).wait(20)
            assert later.state is State.SUCCESS
            (ran_at,) = (float(stamp) for stamp in runs(trace))
            assert ran_at >= sent_at + delay_ms / 1000  # not before the delay
        finally:
            with contextlib.suppress(Exception):
                connection.channel().queue_delete(delay_queue)
    assert process.process.poll() is None
    client.close()


def test_a_go_producer_on_machinery_s_amqp_backend_reads_the_result(
    amqp_namespace: str, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    """Results in RabbitMQ as well, as in machinery's example config: its producer writes
    PENDING to a queue named by the task id and reads by consuming that queue; after its own
    PENDING it finds taskd's states there, while taskd's readers keep their own record."""
    namespace = amqp_namespace
    binding_key = f"{namespace}.task"
    config, client = client_for("amqp", namespace, tmp_path)  # AMQP broker and results
    process = daemon(config, "--concurrency", "1")
    process.wait_ready(1)
    task_id = new_id()
    with amqp_connection() as connection:
        channel = connection.channel()
        try:
            declare_machinery_state_queue(channel, namespace, task_id)  # SetStatePending
            pending = TaskState(task_id, State.PENDING, task_name="add", created_at=GoTime.now())
            go_publish(connection, namespace, task_id, pending.encode())
            int_args = '[{"Name":"","Type":"int64","Value":2},{"Name":"","Type":"int64","Value":3}]'
            go_publish(
                connection,
                namespace,
                binding_key,
                go_message(task_id, "add", int_args, binding_key),
            )
            read = machinery_get(channel, namespace, task_id)
        finally:
            with contextlib.suppress(Exception):
                connection.channel().queue_delete(task_id)
    assert read[0] == pending
    assert {state.state for state in read[1:-1]} <= {State.RECEIVED, State.STARTED}
    assert (read[-1].state, read[-1].python_results()) == (State.SUCCESS, [5])
    for _ in range(2):
        assert client.result(task_id).wait(10) == read[-1]
    client.close()


NUMBERS = range(1, 11)  # a chord of 10 members, as issue 8's acceptance has for taskd's own


def test_a_go_producer_s_chord_on_machinery_s_amqp_backend_fires_once(
    amqp_namespace: str, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    """machinery's SendChord on its AMQP backend stores no group metadata: the members carry
    the group's id and size, and the callback, which fires once with every result."""
    namespace = amqp_namespace
    binding_key = f"{namespace}.task"
    config, client = client_for("amqp", namespace, tmp_path)  # AMQP broker and results
    process = daemon(config, "--concurrency", "2")
    process.wait_ready(2)
    group_id, callback_id = new_id("group"), new_id("chord")
    callback = Signature("add", uuid=callback_id)  # as NewChord leaves it: no routing key yet
    members = [
        signature("add", n, n).with_changes(
            uuid=new_id(),
            routing_key=binding_key,
            headers={},
            group_uuid=group_id,
            group_task_count=len(NUMBERS),
            chord_callback=callback,
        )
        for n in NUMBERS
    ]
    with amqp_connection() as connection:
        channel = connection.channel()
        try:
            for member in members:  # SendGroup: each recorded PENDING, then published
                declare_machinery_state_queue(channel, namespace, member.uuid)
                go_publish(connection, namespace, binding_key, member.encode())
            # ChordAsyncResult.Get: the members, then the callback (which has run by then).
            for member, n in zip(members, NUMBERS, strict=True):
                read = machinery_get(channel, namespace, member.uuid)
                assert read[-1].python_results() == [2 * n]  # add(n, n)
            total = [2 * sum(NUMBERS)]  # add() of every member's result
            assert client.result(callback_id).wait(20).python_results() == total
            read = machinery_get(channel, namespace, callback_id)
        finally:
            for queue in (callback_id, group_id, *(member.uuid for member in members)):
                with contextlib.suppress(Exception):
                    connection.channel().queue_delete(queue)
    assert (read[-1].state, read[-1].python_results()) == (State.SUCCESS, total)

    def logged() -> list[dict[str, Any]] | None:
        events = process.events("task_succeeded")
        return events if len(events) > len(members) else None

    ran = [event["task_id"] for event in wait_until(logged, 10, what="every task logged")]
    assert sorted(ran) == sorted([*(member.uuid for member in members), callback_id])
    client.close()


def test_a_go_producer_on_machinery_s_amqp_backend_reads_a_chain_link_by_link(
    amqp_namespace: str, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    """machinery's ChainAsyncResult.Get reads each link in turn, and its GetState declares a
    link's queue only when it gets to it: here after the last link has run already."""
    namespace = amqp_namespace
    binding_key = f"{namespace}.task"
    config, client = client_for("amqp", namespace, tmp_path)  # AMQP broker and results
    process = daemon(config, "--concurrency", "1")
    process.wait_ready(1)
    last = Signature("multiply", uuid=new_id(), args=(Arg("int64", 4),))  # as NewChain makes
    head = signature("add", 1, 2).with_changes(
        uuid=new_id(), routing_key=binding_key, headers={}, on_success=(last,)
    )
    with amqp_connection() as connection:
        channel = connection.channel()
        try:
            declare_machinery_state_queue(channel, namespace, head.uuid)  # SetStatePending
            go_publish(connection, namespace, binding_key, head.encode())
            assert machinery_get(channel, namespace, head.uuid)[-1].python_results() == [3]
            assert client.result(last.uuid).wait(20).state is State.SUCCESS  # ran already
            assert machinery_get(channel, namespace, last.uuid)[-1].python_results() == [12]
        finally:
            for queue in (head.uuid, last.uuid):
                with contextlib.suppress(Exception):
                    connection.channel().queue_delete(queue)
    client.close()


def test_what_taskd_sends_is_what_a_go_worker_reads(amqp_namespace: str, tmp_path: Path) -> None:
    """No daemon: the messages are read from the queue as machinery's consumer would."""
    namespace = amqp_namespace
    binding_key = f"{namespace}.task"
    _config, client = amqp_client(namespace, tmp_path)
    now = client.send("add", 2, 3)
    later = client.send("add", 4, 5, countdown=1.5)
    got: dict[str, tuple[float, Any, Any, bytes]] = {}
    with amqp_connection() as connection:
        channel = connection.channel()

        def take() -> bool:
            method, properties, body = channel.basic_get(namespace, auto_ack=True)
            if method is not None:
                got[json.loads(body)["UUID"]] = (time.time(), method, properties, body)
            return len(got) >= 2

        wait_until(take, 15, 0.01, "both messages in the queue")
    assert set(got) == {now.task_id, later.task_id}
    for task_id, (_arrived, _method, properties, body) in got.items():
        assert properties.content_type == "application/json"
        assert properties.delivery_mode == 2
        fields = json.loads(body)
        assert list(fields) == GO_FIELDS  # machinery's layout, field for field
        assert fields["RoutingKey"] == binding_key
        assert decode_signature(body).uuid == task_id
    _arrived, method, _properties, body = got[now.task_id]
    assert method.exchange == namespace
    assert method.routing_key == binding_key
    assert json.loads(body)["ETA"] is None
    arrived, method, _properties, body = got[later.task_id]
    # Out of the delay ladder through the exchange, by the binding key, as if never delayed.
    assert method.exchange == namespace
    assert method.routing_key == binding_key
    eta = GoTime.parse(json.loads(body)["ETA"])
    assert arrived >= eta.to_unix()  # no earlier than its ETA
    client.close()


def test_a_long_task_is_not_delivered_again(
    amqp_namespace: str, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    """A task three times consumer_timeout long: the connection's heartbeats (1 s) go on
    while it runs, so RabbitMQ keeps it with its consumer and no idle child takes it."""
    config, client = amqp_client(
        amqp_namespace, tmp_path, log_level="debug",
        worker={"heartbeat_interval": 0.5, "consumer_timeout": 2},
    )  # fmt: skip
    process = daemon(config, "--concurrency", "2")
    process.wait_ready(2)
    trace = tmp_path / "trace"
    sent = client.send("slow_record", str(trace), "long", 6.0)
    wait_until(lambda: "start:long" in runs(trace), 15, what="the task to start")
    heartbeats = daemon_connections(process)
    assert heartbeats and set(heartbeats.values()) == {1}  # consumer_timeout / 2
    assert sent.wait(30).state is State.SUCCESS
    assert runs(trace) == ["start:long", "end:long"]  # once: never taken while it ran
    assert not process.events("amqp_connection_lost"), process.log()[-2000:]
    assert not process.events("broker_unavailable")
    client.close()


def test_delayed_tasks_run_after_their_eta_through_a_fixed_ladder(
    amqp_namespace: str, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    namespace = amqp_namespace
    config, client = amqp_client(namespace, tmp_path)
    process = daemon(config, "--concurrency", "2")
    process.wait_ready(2)
    trace = tmp_path / "trace"
    sigs = [
        signature("stamp_token", str(trace), f"d{i}", countdown=1 + 3 * i / 99) for i in range(100)
    ]
    sent = client.publish(sigs)
    ladder = set(delays.Ladder(namespace).queues())
    assert len(ladder) == delays.LEVELS == 28
    ladder.add(delays.Ladder(namespace).final(f"{namespace}.task"))  # the way out
    # One queue per level and one out, whatever the delays: not one per delay as machinery's.
    # Besides them: the queue, and its dead letters' (declared at start, as a check).
    assert queues_named_after(namespace) == {namespace, DEAD_PREFIX + namespace} | ladder
    wait_until(lambda: len(runs(trace)) >= 100, 30, 0.05, "100 delayed tasks to run")
    # A task's trace line is written while it runs, its state after: the last ones may lag.
    wait_until(lambda: all_succeeded(client, [sig.uuid for sig in sent]), 10, 0.05, "states")
    stamps = dict(line.split("@") for line in runs(trace))
    assert len(stamps) == 100
    for i, sig in enumerate(sent):
        assert sig.eta is not None
        assert float(stamps[f"d{i}"]) >= sig.eta.to_unix() - 1e-6, f"d{i} ran before its ETA"
    assert queues_named_after(namespace) == {namespace, DEAD_PREFIX + namespace} | ladder
    assert process.process.poll() is None
    client.close()


def test_a_lost_connection_loses_nothing(
    amqp_namespace: str, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    """RabbitMQ closes the daemon's connections mid-run (the server stays up): the children
    connect again and every task ends SUCCESS."""
    config, client = amqp_client(amqp_namespace, tmp_path, log_level="debug", worker=QUICK_RECOVERY)
    process = daemon(config, "--concurrency", "2")
    process.wait_ready(2)
    before = wait_until(
        lambda: len(c := daemon_connections(process)) >= 2 and c, 20, 0.2, "both children"
    )
    trace = tmp_path / "trace"
    # 6 s of work on 2 children: rabbitmqctl (an Erlang VM per call) closes the connections
    # well before the end, even on a loaded machine.
    results = send_slow(client, trace, 200, 0.06)
    wait_until(lambda: ended(trace) >= 20, 30, 0.01, "the run to be under way")
    close_connections(list(before))
    assert ended(trace) < 200  # the loss came mid-run
    ids = [result.task_id for result in results]
    wait_until(lambda: all_succeeded(client, ids), 60, 0.1, "all 200 tasks to succeed")
    assert {line.split(":", 1)[1] for line in runs(trace)} == {f"t{i}" for i in range(200)}
    assert process.process.poll() is None  # it never exited
    assert len(process.events("amqp_connection_lost")) >= len(before), process.log()[-3000:]
    after = daemon_connections(process)
    assert len(after) >= 2 and not set(after) & set(before)  # connected again
    client.close()


def test_workers_declare_their_queue_again_once_it_is_deleted(
    amqp_namespace: str, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    """Deleting the queue (an operator purging it that way, a policy's expiry; here with its
    exchange) cancels its consumers. The children consumed it again without declaring it,
    failing every fetch with 404 for as long as nobody else declared it, and a Go producer's
    tasks (which only publish) were unroutable. They declare both again now, and such a task
    runs."""
    namespace = amqp_namespace
    binding_key = f"{namespace}.task"
    config, client = amqp_client(namespace, tmp_path)
    process = daemon(config, "--concurrency", "2")
    process.wait_ready(2)
    task_id = new_id()
    args = '[{"Name":"","Type":"int64","Value":2},{"Name":"","Type":"int64","Value":3}]'
    with amqp_connection() as connection:
        channel = connection.channel()
        channel.queue_delete(namespace)
        channel.exchange_delete(namespace)  # the namespace's exchange too
        wait_until(lambda: consumer_count(connection, namespace) == 2, 20, 0.1, "consumers")
        message = go_message(task_id, "add", args, binding_key)
        go_publish(connection, namespace, binding_key, message)
    assert client.result(task_id).get(timeout=20) == 5
    assert len(process.events("amqp_consumer_cancelled")) == 2
    assert not process.events("fetch_failed")
    client.close()


def test_a_sender_whose_connection_rabbitmq_closed_while_idle_sends_without_error(
    amqp_namespace: str, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    """A publish written on a connection RabbitMQ closed meanwhile (a restart, missed
    heartbeats) leaves without an error and never arrives: its send must not be lost or
    fail, but go out on a new connection."""
    config, client = amqp_client(amqp_namespace, tmp_path)
    process = daemon(config, "--concurrency", "1")
    process.wait_ready(1)
    others = amqp_ports_of([os.getpid()])
    assert client.send("sum", [1, 2, 3]).get(timeout=20) == 6
    last_used = time.monotonic()
    ports = amqp_ports_of([os.getpid()]) - others  # the sender's own
    ours = connections_on(ports)
    assert ours
    close_connections(list(ours))
    wait_until(lambda: not connections_on(ports), 20, what="RabbitMQ to close them")
    wait_until(lambda: time.monotonic() - last_used >= IDLE_CHECK_S, 5)  # idle, as it was
    for i in range(3):
        assert client.send("sum", [i, 1]).get(timeout=20) == i + 1
    client.flush()  # every send confirmed
    assert process.process.poll() is None
    client.close()


@pytest.mark.parametrize(
    ("key", "overrides"),
    [
        ("default_queue", {"default_queue": "q" * 200}),
        ("default_queue", {"default_queue": "é" * 100}),  # counted in bytes: 200
        ("amqp.binding_key", {"amqp": {"binding_key": "k" * 200}}),
        ("amqp.exchange", {"amqp": {"exchange": "x" * 250}}),
        ("--queue", {}),
    ],
)
def test_names_too_long_for_rabbitmq_are_config_errors_naming_the_key(
    key: str, overrides: dict[str, Any], tmp_path: Path
) -> None:
    path = write_config(tmp_path, {"broker": AMQP_URL, "default_queue": "q", **overrides})
    with pytest.raises(ConfigError) as caught:
        open_broker(load_config(path, env={})).check(["r" * 200])
    assert caught.value.key == key
    assert "RabbitMQ" in str(caught.value) and "bytes" in str(caught.value)


@pytest.fixture
def amqp_user(namespace: str) -> Iterator[Callable[[str, str, str], str]]:
    """``amqp_user(configure, write, read)``: the AMQP URL of a RabbitMQ user of this test's
    with these permissions (regular expressions) on vhost /; deleted afterwards."""
    rabbitmqctl("add_user", namespace, namespace)

    def user(configure: str, write: str, read: str) -> str:
        rabbitmqctl("set_permissions", "-p", "/", namespace, configure, write, read)
        return f"amqp://{namespace}:{namespace}@127.0.0.1:5672/%2F"

    try:
        yield user
    finally:
        rabbitmqctl("delete_user", namespace)


@pytest.fixture
def amqp_user_who_cannot_declare(amqp_user: Callable[[str, str, str], str]) -> str:
    """A RabbitMQ user who may read and write but not configure (declare): an AMQP URL."""
    return amqp_user("^$", ".*", ".*")


@pytest.mark.parametrize("key", ["broker", "result_backend"])
def test_a_user_who_may_not_declare_is_a_config_error_at_start(
    key: str, amqp_namespace: str, amqp_user_who_cannot_declare: str, tmp_path: Path
) -> None:
    """As the broker, the daemon started, its children never became ready, and each logged
    fetch_failed (ACCESS_REFUSED) every second for good; as the result backend (a queue per
    task), it started and failed every task's state. check-config said the file was fine."""
    url = amqp_user_who_cannot_declare
    if key == "broker":
        config, client = amqp_client(amqp_namespace, tmp_path, broker=url)
    else:
        sqlite = f"sqlite://{tmp_path}/{amqp_namespace}.db"
        config, client = client_for(
            "amqp", amqp_namespace, tmp_path, broker=sqlite, result_backend=url
        )
    client.close()
    for command in (["check-config"], ["start", "--concurrency", "1"]):
        done = run_cli(tmp_path, "taskd", *command, "-c", str(config), timeout_s=30)
        assert done.returncode == 2, (command, done.stderr)
        assert f"{config}: {key}: RabbitMQ refused to declare" in done.stderr
        assert "ACCESS_REFUSED" in done.stderr


def test_a_user_kept_to_names_of_its_own_is_refused_until_it_may_set_messages_aside(
    amqp_namespace: str,
    amqp_user: Callable[[str, str, str], str],
    tmp_path: Path,
    daemon: Callable[..., Daemon],
) -> None:
    """A user allowed its own exchange and queue alone (``^<name>``): check-config passed,
    and every child given a message to set aside (an unknown task) crashed, again and
    again: RabbitMQ refused taskd.dead.<queue>, and then the publish through the default
    exchange (a write to amq.default). Now refused at start; allowed ``^taskd.dead`` (the
    dead-letter exchange and queues), the message is set aside and no child crashes."""
    own = f"^{re.escape(amqp_namespace)}"
    config, client = amqp_client(amqp_namespace, tmp_path, broker=amqp_user(own, own, own))
    client.close()
    for args in (("check-config",), ("start", "--concurrency", "1")):
        done = run_cli(tmp_path, "taskd", *args, "-c", str(config), timeout_s=30)
        assert done.returncode == 2, done.stderr
        assert f"{config}: broker: RabbitMQ refused to let undeliverable messages" in done.stderr
        assert f"ACCESS_REFUSED - access to exchange '{DEAD_EXCHANGE}'" in done.stderr
    allowed = own + rf"|^{re.escape(DEAD_EXCHANGE)}"
    amqp_user(allowed, allowed, allowed)
    done = run_cli(tmp_path, "taskd", "check-config", "-c", str(config), timeout_s=30)
    assert done.returncode == 0, done.stderr
    process = daemon(config, "--concurrency", "1")
    process.wait_ready(1)
    with Client(load_config(config, env={"TASKD_STATE_DIR": str(tmp_path / "state")})) as client:
        client.send("no_such_task")

    def set_aside() -> bool:
        listed = run_cli(tmp_path, "taskctl", "-c", str(config), "queue", "dead")
        return "'no_such_task' is not registered" in listed.stdout

    wait_until(set_aside, 20, what="the unknown task set aside")
    assert not process.events("child_crashed")


def test_a_permission_to_set_aside_taken_away_at_run_time_keeps_the_message_leased(
    amqp_namespace: str,
    amqp_user: Callable[[str, str, str], str],
    tmp_path: Path,
    daemon: Callable[..., Daemon],
) -> None:
    """The user's permissions on taskd.dead taken away while the daemon runs: the child that
    set an unknown task aside crashed (ACCESS_REFUSED), and so did each next one given it
    back. Now the child logs the refusal, keeps the message unacked and serves the rest; the
    message is back in its queue once the daemon stops."""
    own = f"^{re.escape(amqp_namespace)}"
    allowed = own + rf"|^{re.escape(DEAD_EXCHANGE)}"
    config, client = amqp_client(
        amqp_namespace, tmp_path, broker=amqp_user(allowed, allowed, allowed)
    )
    client.close()
    process = daemon(config, "--concurrency", "1")
    process.wait_ready(1)
    amqp_user(own, own, own)
    with Client(load_config(config, env={"TASKD_STATE_DIR": str(tmp_path / "state")})) as client:
        unknown = client.send("no_such_task")
        assert client.send("add", 2, 3).get(timeout=20) == 5  # served after it
    assert_kept_leased(process, unknown.task_id, "ACCESS_REFUSED")
    with amqp_connection() as connection:
        channel = connection.channel()
        assert channel.queue_declare(amqp_namespace, passive=True).method.message_count == 1


def test_a_dead_letter_exchange_of_another_type_is_refused_naming_the_broker(
    namespace: str, tmp_path: Path
) -> None:
    """taskd.dead declared before as another type (in a vhost of the test's own, as the
    exchange is shared by every queue of a vhost): refused naming the broker, not
    amqp.exchange_type, which is about the exchange tasks go through."""
    import pika

    rabbitmqctl("add_vhost", namespace)
    try:
        rabbitmqctl("set_permissions", "-p", namespace, "guest", ".*", ".*", ".*")
        url = f"amqp://guest:guest@127.0.0.1:5672/{namespace}"
        connection = pika.BlockingConnection(pika.URLParameters(url))
        connection.channel().exchange_declare(DEAD_EXCHANGE, "fanout", durable=True)
        connection.close()
        config, client = amqp_client(namespace, tmp_path, broker=url)
        client.close()
        done = run_cli(tmp_path, "taskd", "check-config", "-c", str(config), timeout_s=30)
        assert done.returncode == 2, done.stderr
        assert f"{config}: broker: RabbitMQ refused to let undeliverable messages" in done.stderr
        assert f"inequivalent arg 'type' for exchange '{DEAD_EXCHANGE}'" in done.stderr
    finally:
        rabbitmqctl("delete_vhost", namespace)


@pytest.mark.parametrize(
    ("key", "url", "reason"),
    [
        ("broker", "amqp://guest:guest@127.0.0.1:5672/taskd-no-such-vhost", "NOT_ALLOWED"),
        ("result_backend", "amqp://guest:not-the-password@127.0.0.1:5672/", "ACCESS_REFUSED"),
    ],
)
def test_a_connection_rabbitmq_refuses_is_a_config_error_at_start(
    key: str, url: str, reason: str, amqp_namespace: str, tmp_path: Path
) -> None:
    """An unknown vhost or a wrong password: check-config passed (drivers connect lazily),
    and the daemon's children failed every fetch or state for good."""
    config, client = client_for("amqp", amqp_namespace, tmp_path, **{key: url})
    client.close()
    done = run_cli(tmp_path, "taskd", "check-config", "-c", str(config))
    assert done.returncode == 2, done.stderr
    assert f"{config}: {key}: refused: " in done.stderr and reason in done.stderr
    assert "not-the-password" not in done.stderr


@pytest.mark.parametrize(
    ("declared", "key"),
    [
        ("queue", "amqp.queue_declare_args"),  # with another x-max-priority
        ("exchange", "amqp.exchange_type"),  # fanout, where the config says direct
    ],
)
def test_a_topology_rabbitmq_has_otherwise_is_a_config_error_naming_the_key(
    declared: str, key: str, amqp_namespace: str, tmp_path: Path
) -> None:
    config, client = amqp_client(amqp_namespace, tmp_path)
    client.close()
    with amqp_connection() as connection:
        channel = connection.channel()
        if declared == "queue":
            channel.queue_declare(amqp_namespace, durable=True, arguments={"x-max-priority": 3})
        else:
            channel.exchange_declare(amqp_namespace, exchange_type="fanout", durable=True)
    done = run_cli(tmp_path, "taskd", "check-config", "-c", str(config))
    assert done.returncode == 2, done.stderr
    assert f"{config}: {key}: RabbitMQ refused to declare" in done.stderr
    assert "PRECONDITION_FAILED" in done.stderr


def test_the_longest_queue_name_rabbitmq_takes_runs_delays_and_dead_letters(
    amqp_namespace: str, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    """The longest name allowed (taskd derives longer ones from it: its delayed routing key,
    the last queue of its delays, its dead letters' queue) works end to end; one byte more is
    refused with the reason before anything is sent."""
    config, client = amqp_client(amqp_namespace, tmp_path)
    topology = Topology.of(client.config)
    longest = next(
        name
        for size in range(255, 0, -1)
        if topology.name_error(name := (amqp_namespace + "-" + "q" * 255)[:size]) is None
    )
    assert topology.name_error(longest + "q") is not None
    derived = (Ladder(amqp_namespace).final(longest), DEAD_PREFIX + longest)
    try:
        process = daemon(config, "--concurrency", "1", "--queue", longest)
        process.wait_ready(1)
        now = client.send("sum", [1, 2, 3], queue=longest)
        later = client.send("sum", [4, 5], queue=longest, countdown=0.5)
        unknown = client.send("no_such_task", queue=longest)
        assert (now.get(timeout=20), later.get(timeout=20)) == (6, 9)
        state = unknown.wait(20)
        assert state.state is State.FAILURE and "not registered" in state.error
        with pytest.raises(BrokerError, match="at most"):
            client.send("sum", [1], queue=longest + "q")
        client.flush()
    finally:
        client.close()
        delete_amqp_namespace(amqp_namespace, (longest, *derived))


def test_poison_is_set_aside_and_the_next_task_runs(
    amqp_namespace: str, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    namespace = amqp_namespace
    config, client = amqp_client(namespace, tmp_path)
    process = daemon(config, "--concurrency", "1")
    process.wait_ready(1)
    unknown = client.send("no_such_task")
    with amqp_connection() as connection:
        go_publish(connection, namespace, f"{namespace}.task", b"{not json at all")
    after = client.send("sum", [1, 2, 3])

    assert_poison_set_aside(tmp_path, config, client, unknown, after, namespace)
    assert process.process.poll() is None
    client.close()


@pytest.mark.alone
def test_a_rabbitmq_restart_mid_run_loses_nothing(
    amqp_namespace: str, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    """RabbitMQ itself stops (stop_app) and starts again while 500 tasks are queued: every
    task ends SUCCESS and the daemon carries on. Other tests on this RabbitMQ would see the
    outage too: pytest runs this one alone."""
    config, client = amqp_client(amqp_namespace, tmp_path, worker=QUICK_RECOVERY)
    process = daemon(config, "--concurrency", "2")
    process.wait_ready(2)
    trace = tmp_path / "trace"
    results = send_slow(client, trace, 500, 0.01)
    wait_until(lambda: ended(trace) >= 20, 30, 0.01, "the run to be under way")
    try:
        rabbitmqctl("stop_app")
        assert ended(trace) < 500  # the outage came mid-run
        wait_until(lambda: process.events("broker_unavailable"), 30, 0.1, "the outage seen")
    finally:
        rabbitmqctl("start_app")
    ids = [result.task_id for result in results]
    wait_until(lambda: all_succeeded(client, ids), 120, 0.2, "all 500 tasks to succeed")
    assert {line.split(":", 1)[1] for line in runs(trace)} == {f"t{i}" for i in range(500)}
    assert process.process.poll() is None  # it never exited
    assert process.events("broker_recovered"), process.log()[-3000:]
    client.close()
