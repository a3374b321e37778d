"""A real ``taskd start``: machinery messages, signals, crashes and bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from taskd import sqlitedb
from taskd.brokers import lease
from taskd.client import Client, signature
from taskd.wire import GoTime, State, decode_signature, decode_state, new_id
from tests.support.harness import (
    BIN,
    REPO,
    TEST_TASKS,
    client_for,
    config_data,
    process_env,
    run_cli,
    running,
    wait_until,
    write_config,
)
from tests.support.tasks import runs

# A message exactly as machinery's Go producer writes it: all 19 fields, Go's encoding.
GO_MESSAGE = (
    '{"UUID":"%(id)s","Name":"add","RoutingKey":"%(queue)s","ETA":null,"GroupUUID":"",'
    '"GroupTaskCount":0,"Args":[{"Name":"","Type":"int64","Value":1},'
    '{"Name":"","Type":"int64","Value":1}],"Headers":{},"Priority":0,"Immutable":false,'
    '"RetryCount":0,"RetryTimeout":0,"OnSuccess":null,"OnError":null,"ChordCallback":null,'
    '"BrokerMessageGroupId":"","SQSReceiptHandle":"","StopTaskDeletionOnError":false,'
    '"IgnoreWhenTaskNotRegistered":false}'
)
GO_PENDING = (
    '{"TaskUUID":"%(id)s","TaskName":"add","State":"PENDING","Results":null,"Error":"",'
    '"CreatedAt":"2026-11-27T10:00:00.123456789Z","TTL":0}'
)
GO_SUCCESS = (
    '{"TaskUUID":"%(id)s","TaskName":"add","State":"SUCCESS",'
    '"Results":[{"Type":"int64","Value":2}],"Error":"",'
    '"CreatedAt":"2026-11-27T10:00:00.123456789Z","TTL":0}'
)


def stored_json(client: Client, task_id: str) -> bytes | None:
    state = client.backend.get_state(task_id)
    return None if state is None else state.encode()


def test_a_machinery_message_runs_and_its_state_is_machinerys(
    driver_kind: str, namespace: str, tmp_path: Path, daemon: Callable[..., Any], redis_server: Any
) -> None:
    config, client = client_for(driver_kind, namespace, tmp_path)
    task_id = new_id()  # fresh ids: a state left by an earlier run must not pass for this one
    values = {"id": task_id, "queue": namespace}
    delayed_id = new_id()
    delayed = {"id": delayed_id, "queue": namespace}
    eta_ns = time.time_ns() + 500_000_000
    if driver_kind == "redis":  # byte for byte what Go writes, straight into Redis
        redis_server.set(task_id, GO_PENDING % values, ex=300)
        redis_server.rpush(namespace, GO_MESSAGE % values)
        # machinery's delayed path: ZADD delayed_tasks <ETA in Unix ns> <message with its ETA>
        message = (GO_MESSAGE % delayed).replace('"ETA":null', f'"ETA":"{GoTime(eta_ns)}"')
        redis_server.zadd(f"{namespace}:delayed", {message: eta_ns})
    else:
        client.backend.set_state(decode_state(GO_PENDING % values))
        client.broker.publish(namespace, (GO_MESSAGE % values).encode())
    process = daemon(config, "--concurrency", "1")
    process.wait_ready(1)
    wait_until(lambda: (s := client.backend.get_state(task_id)) and s.is_completed, 20)
    expected = (GO_SUCCESS % values).encode()
    if driver_kind == "redis":
        assert redis_server.get(task_id) == expected
        late = wait_until(
            lambda: (s := client.backend.get_state(delayed_id)) and s.is_completed and s, 20
        )
        assert late.state is State.SUCCESS
        assert late.python_results() == [2]
    else:
        assert stored_json(client, task_id) == expected
    client.close()


@pytest.mark.parametrize("prefetch", [1, 2])
def test_sigterm_finishes_running_tasks_and_keeps_the_rest(
    driver_kind: str, namespace: str, tmp_path: Path, daemon: Callable[..., Any], prefetch: int
) -> None:
    config, client = client_for(
        driver_kind, namespace, tmp_path, worker={"shutdown_timeout": 20, "prefetch": prefetch}
    )
    process = daemon(config, "--concurrency", "2")
    process.wait_ready(2)
    results = [client.send("sleep", 3.0) for _ in range(5)]

    def started() -> list[Any]:
        states = [r.state() for r in results]
        return [s for s in states if s and s.state is State.STARTED]

    running = wait_until(lambda: len(started()) == 2 and started(), 15, what="two tasks running")
    process.signal(signal.SIGTERM)
    assert process.wait(25) == 0
    finished = {s.task_uuid for s in running}
    for result in results:
        state = result.state()
        assert state is not None
        if result.task_id in finished:
            assert state.state is State.SUCCESS
        else:
            assert state.state is State.PENDING, f"{result.task_id} should still wait"
    assert client.broker.size(namespace) == 3  # handed back, nothing lost
    assert process.events("child_stopped"), process.log()

    again = daemon(config, "--concurrency", "2")
    again.wait_ready(2)
    for result in results:
        assert result.get(timeout=30) == 3.0
    client.close()


def test_a_killed_child_is_replaced_and_its_task_runs_again(
    driver_kind: str, namespace: str, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    config, client = client_for(
        driver_kind, namespace, tmp_path, worker={"heartbeat_interval": 0.5, "consumer_timeout": 3}
    )
    process = daemon(config, "--concurrency", "1")
    process.wait_ready(1)
    trace = tmp_path / "trace"
    result = client.send("slow_record", str(trace), "t1", 2.0)
    wait_until(lambda: "start:t1" in runs(trace), 15, what="the task to start")
    (child,) = process.child_pids()
    os.kill(child, signal.SIGKILL)
    assert result.get(timeout=45) == "t1"
    assert runs(trace) == ["start:t1", "start:t1", "end:t1"]
    (exited,) = process.events("child_exited")
    assert exited["child_pid"] == child
    assert exited["signal"].startswith("SIGKILL")
    assert len(process.events("child_ready")) == 2  # the replacement
    assert process.process.poll() is None
    client.close()


def test_bad_input_never_stops_the_daemon(
    driver_kind: str, namespace: str, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    config, client = client_for(driver_kind, namespace, tmp_path)
    process = daemon(config, "--concurrency", "1")
    process.wait_ready(1)
    unknown = client.send("no_such_task")
    (ignored,) = client.publish(
        [signature("also_missing").with_changes(ignore_when_task_not_registered=True)]
    )
    wrong = client.send("sum", "not a list")
    client.broker.publish(namespace, b"{not json at all")
    after = client.send("sum", [1, 2, 3])

    assert after.get(timeout=20) == 6  # the queue kept moving
    failed = unknown.wait(5)
    assert failed.state is State.FAILURE
    assert failed.error == "task 'no_such_task' is not registered"
    bad_args = wrong.wait(5)
    assert bad_args.state is State.FAILURE
    assert re.fullmatch(
        r"argument 1 of task 'sum': numbers must be \[\]int64, got string", bad_args.error
    )
    assert client.backend.get_state(ignored.uuid).state is State.PENDING  # dropped, never run

    letters = sorted(client.broker.dead_letters(namespace, 10), key=lambda letter: letter.reason)
    assert [letter.reason.split(":")[0] for letter in letters] == [
        "malformed message",
        "task 'no_such_task' is not registered",
    ]
    assert letters[0].reason.startswith("malformed message: not valid JSON")
    assert letters[0].body == b"{not json at all"
    assert decode_signature(letters[1].body).uuid == unknown.task_id  # kept whole, replayable
    assert len(process.events("message_rejected")) == 1  # set aside once, no hot loop
    assert client.broker.size(namespace) == 0
    assert process.process.poll() is None
    client.close()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            ('"ETA":null', '"ETA":"garbage"'),
            "malformed message: ETA: time 'garbage' is not RFC 3339",
        ),
        (('"Name":"add"', '"Name":""'), "malformed message: UUID and Name must not be empty"),
        (('"Priority":0', '"Priority":"high"'), "malformed message: Priority must be"),
    ],
)
def test_a_message_set_aside_after_sending_fails_its_task(
    driver_kind: str,
    namespace: str,
    tmp_path: Path,
    daemon: Callable[..., Any],
    change: tuple[str, str],
    reason: str,
) -> None:
    """Its sender, waiting on the task's state, gets FAILURE with the reason, not PENDING
    for ever."""
    config, client = client_for(driver_kind, namespace, tmp_path)
    task_id = new_id()
    values = {"id": task_id, "queue": namespace}
    client.backend.set_state(decode_state(GO_PENDING % values))
    client.broker.publish(namespace, (GO_MESSAGE % values).replace(*change).encode())
    daemon(config, "--concurrency", "1").wait_ready(1)
    waited = run_cli(tmp_path, "taskctl", "-c", str(config), "result", task_id, "--wait", "20")
    assert waited.returncode == 1, waited.stderr
    assert f"{task_id} failed: {reason}" in waited.stderr
    (letter,) = client.broker.dead_letters(namespace, 5)
    assert letter.reason.startswith(reason)
    client.close()


def test_bad_config_exits_2_naming_file_and_key(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"worker": {"concurency": 2}}, "bad.yml")
    done = run_cli(tmp_path, "taskd", "start", "-c", str(path))
    assert done.returncode == 2
    assert str(path) in done.stderr
    assert "worker.concurency: unknown key (did you mean 'concurrency'?)" in done.stderr
    assert "Traceback" not in done.stderr
    wrong_type = write_config(tmp_path, {"worker": {"shutdown_timeout": "soon"}}, "worse.yml")
    done = run_cli(tmp_path, "taskd", "check-config", "-c", str(wrong_type))
    assert done.returncode == 2
    assert "worker.shutdown_timeout: must be a number" in done.stderr
    for data, message in [
        (
            {"broker": "redis://127.0.0.1:notaport/0"},
            "broker: 'redis://127.0.0.1:notaport/0' has an invalid port",
        ),
        ({"worker": {"shutdown_timeout": float("nan")}}, "must be a finite number"),
        (
            {"worker": {"heartbeat_interval": 10}},
            "must be more than twice worker.heartbeat_interval",
        ),
        ({"results_expire_in": 10**10}, "results_expire_in: must be at most"),
    ]:
        done = run_cli(tmp_path, "taskd", "start", "-c", str(write_config(tmp_path, data, "x.yml")))
        assert (done.returncode, message in done.stderr) == (2, True), done.stderr


def test_a_plugin_that_fails_to_import_stops_the_start(tmp_path: Path, namespace: str) -> None:
    data = config_data("sqlite", namespace, tmp_path, imports=["tests.support.no_such_module"])
    done = run_cli(
        tmp_path, "taskd", "start", "-c", str(write_config(tmp_path, data)), timeout_s=30
    )
    assert done.returncode == 1
    assert "tests.support.no_such_module" in done.stderr
    assert "plugin_failed" in done.stderr


def test_ttin_ttou_resize_and_hup_reloads(
    namespace: str, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    config, client = client_for("sqlite", namespace, tmp_path)
    process = daemon(config, "--concurrency", "1")
    process.wait_ready(1)
    process.signal(signal.SIGTTIN)
    wait_until(lambda: len(process.child_pids()) == 2, 15, what="a second child")
    process.signal(signal.SIGTTOU)
    wait_until(lambda: len(process.child_pids()) == 1, 15, what="back to one child")
    before = process.child_pids()

    # The same file, changed: reloaded, and fresh children replace the old ones (still one:
    # --concurrency on the command line outranks the file).
    write_config(
        tmp_path,
        config_data("sqlite", namespace, tmp_path, imports=[TEST_TASKS], log_level="debug"),
    )
    process.signal(signal.SIGHUP)
    wait_until(lambda: process.events("config_reloaded"), 15, what="the reload")

    def replaced() -> bool:
        now = process.child_pids()
        return len(now) == 1 and not now & before

    wait_until(replaced, 15, what="fresh children")
    assert client.send("sum", [2, 3]).get(timeout=30) == 5
    assert process.process.poll() is None

    for broken in ({"worker": {"concurrency": "many"}}, {"broker": "redis://127.0.0.1:notaport"}):
        refused = len(process.events("reload_failed"))
        write_config(tmp_path, broken)  # a broken config, or drivers that cannot be built
        process.signal(signal.SIGHUP)
        wait_until(lambda n=refused: len(process.events("reload_failed")) > n, 15, what="a refusal")
        assert client.send("sum", [1]).get(timeout=30) == 1  # the old children carry on
    client.close()


def test_a_reload_says_which_task_modules_changed_on_disk(
    namespace: str, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    """A reload reads the config again, but Python keeps the task code it imported (the
    children fork from the supervisor): after an upgrade of a task module a reload ran the
    old code, and said nothing. It now names the modules changed, and what runs them."""
    module = tmp_path / ("reloaded_" + re.sub(r"\W", "_", namespace) + ".py")
    source = "from taskd import task\n\n\n@task\ndef code_version() -> int:\n"
    module.write_text(source + "    return 1\n")
    config, client = client_for("sqlite", namespace, tmp_path, imports=[module.stem])
    process = daemon(config, "--concurrency", "1", PYTHONPATH=f"{REPO}:{tmp_path}")
    process.wait_ready(1)
    assert client.send("code_version").get(timeout=30) == 1
    process.signal(signal.SIGHUP)
    wait_until(lambda: process.events("config_reloaded"), 15, what="the reload")
    assert not process.events("task_code_not_reloaded")
    module.write_text(module.read_text().replace("return 1", "return 2"))
    stat = module.stat()
    os.utime(module, (stat.st_atime, stat.st_mtime + 10))  # a later upgrade, whatever the clock
    process.signal(signal.SIGHUP)
    wait_until(lambda: len(process.events("config_reloaded")) == 2, 15, what="a second reload")
    (warned,) = process.events("task_code_not_reloaded")
    assert warned["modules"] == [module.stem]
    assert "restart" in warned["fix"]
    assert client.send("code_version").get(timeout=30) == 1  # as the warning says
    client.close()


def test_workers_with_different_tasks_share_a_queue(
    namespace: str, tmp_path: Path, redis_namespace: str, daemon: Callable[..., Any]
) -> None:
    """Two daemons on one queue, one without the test tasks (as in a rolling upgrade): what
    the second takes of them it leaves to the first, and every task runs once, none FAILURE."""
    config, client = client_for("redis", namespace, tmp_path)
    (tmp_path / "lacking").mkdir()
    lacking = write_config(
        tmp_path / "lacking", config_data("redis", namespace, tmp_path, imports=[]), "taskd.yml"
    )
    having = daemon(config, "--concurrency", "1")
    without = daemon(lacking, "--concurrency", "1")
    having.wait_ready(1)
    without.wait_ready(1)

    def on_the_board() -> bool:  # a beat after its start (the workers board is how they know)
        return any("record" in entry.get("tasks", ()) for entry in client.workers())

    wait_until(on_the_board, 15, 0.1, "the daemon with the tasks on the workers board")
    trace = tmp_path / "trace"
    sent = client.send_many([signature("record", str(trace), f"t{i}") for i in range(20)])
    assert [result.get(timeout=60) for result in sent] == [f"t{i}" for i in range(20)]
    assert sorted(runs(trace)) == sorted(f"t{i}" for i in range(20))
    assert without.events("task_left_to_peer")
    assert not without.events("task_failed")
    client.close()


def test_quick_tasks_come_in_batches_but_a_slow_one_holds_nothing_back(
    driver_kind: str, namespace: str, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    """worker.prefetch 0 (auto): a child warmed up on quick tasks takes many at once; before a
    task not known to be quick it hands the rest back for the other child to run."""
    config, client = client_for(driver_kind, namespace, tmp_path)
    process = daemon(config, "--concurrency", "2")
    process.wait_ready(2)
    for result in [client.send("sum", [i]) for i in range(60)]:  # warm both children up
        result.get(timeout=30)
    trace = tmp_path / "trace"
    quick = [signature("record", str(trace), f"q{i}") for i in range(5)]
    slow = signature("slow_record", str(trace), "slow", 3.0)
    after = [signature("record", str(trace), f"a{i}") for i in range(20)]
    sent = client.publish([*quick, slow, *after])
    for result in (client.result(sig.uuid) for sig in sent):
        assert result.wait(60).state is State.SUCCESS
    order = runs(trace)
    done_before_slow_ended = order[: order.index("end:slow")]
    assert {f"a{i}" for i in range(20)} <= set(done_before_slow_ended)
    assert process.events("messages_released")  # handed back, not held
    client.close()


def test_a_second_sigterm_stops_at_once_and_the_task_runs_again_later(
    namespace: str, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    config, client = client_for("sqlite", namespace, tmp_path, worker={"shutdown_timeout": 60})
    process = daemon(config, "--concurrency", "1")
    process.wait_ready(1)
    trace = tmp_path / "trace"
    sent = client.send("slow_record", str(trace), "long", 30.0)
    wait_until(lambda: "start:long" in runs(trace), 15, what="the long task to start")
    process.signal(signal.SIGTERM)
    wait_until(lambda: process.events("taskd_draining"), 10, what="the drain to begin")
    process.signal(signal.SIGTERM)  # an operator who will not wait 30 s
    assert process.wait(15) == 0
    assert process.events("taskd_stopping_now")
    assert "end:long" not in runs(trace)  # interrupted, not finished...
    again = daemon(config, "--concurrency", "1")
    again.wait_ready(1)
    wait_until(lambda: runs(trace).count("start:long") == 2, 30, what="...so it runs again")
    assert sent.state().state is State.STARTED
    client.close()


def test_children_stop_when_their_supervisor_is_killed(
    namespace: str, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    config, client = client_for("sqlite", namespace, tmp_path)
    process = daemon(config, "--concurrency", "2")
    process.wait_ready(2)
    children = process.child_pids()
    assert len(children) == 2  # else "all gone" below would hold of nothing
    os.kill(process.pid, signal.SIGKILL)  # the supervisor alone, not its group
    process.process.wait(10)

    def all_gone() -> bool:
        return not any(lease.process_alive(pid) for pid in children)

    wait_until(all_gone, 15, what="the orphaned children to stop")
    client.close()


def test_a_database_file_deleted_under_the_daemon_is_followed(
    namespace: str, tmp_path: Path, daemon: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator's rm of the state directory while taskd runs (a "reset"): the daemon kept
    the unlinked file, clients made a new one, and nothing ran, silently. Its children now
    notice within a second (driver_stale) and make way for fresh ones on the new file; a
    long-lived client follows too, where it sent into the old file nobody read."""
    from taskd.config import load_config

    monkeypatch.setattr(sqlitedb, "FILE_CHECK_S", 0.0)  # this process's clients: at each use
    config, client = client_for("sqlite", namespace, tmp_path)
    process = daemon(config, "--concurrency", "2")
    process.wait_ready(2)
    assert client.send("sum", [1]).get(timeout=30) == 1
    for leftover in tmp_path.glob(f"{namespace}.db*"):
        leftover.unlink()
    fresh = Client(load_config(config, env={"TASKD_STATE_DIR": str(tmp_path / "state")}))
    assert fresh.send("sum", [2]).get(timeout=30) == 2
    wait_until(lambda: len(process.events("driver_stale")) == 2, 10, what="each child, once")
    assert client.send("sum", [3]).get(timeout=10) == 3  # the client opened before it
    fresh.close()
    client.close()


def test_a_task_that_takes_fd_2_leaves_the_daemons_logs_where_they_were(
    namespace: str, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    """A task closing fd 2 and opening a file (which takes that number): its child's log
    lines went into the task's file from then on, or nowhere."""
    process, client = one_child(daemon, namespace, tmp_path)
    taken = tmp_path / "task-file"
    assert client.send("take_stderr", str(taken)).get(timeout=30) == 2
    trace = tmp_path / "trace"
    sent = client.send("record", str(trace), "after")
    assert sent.get(timeout=30) == "after"
    wait_until(
        lambda: sent.task_id in {e.get("task_id") for e in process.events("task_succeeded")},
        10,
        what="the later task's log line in the daemon's log",
    )
    assert taken.read_text() == ""  # no log line of the daemon's in the task's own file
    client.close()


def test_a_task_that_leaves_its_own_sigterm_handler_does_not_stall_the_stop(
    namespace: str, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    """The child's handler is put back after the task (logged): before, the child never
    heard SIGTERM, and the daemon waited out its drain and killed it."""
    process, client = one_child(daemon, namespace, tmp_path)
    assert client.send("own_sigterm_handler").get(timeout=30) == "installed"
    (replaced,) = wait_until(lambda: process.events("task_signal_handler_replaced"), 10)
    assert replaced["signal"] == "SIGTERM" and replaced["task"] == "own_sigterm_handler"
    process.signal(signal.SIGTERM)
    assert process.wait(20) == 0
    assert process.events("children_killed") == []
    assert [e.get("exit_code") for e in process.events("child_exited")] == [0]  # not killed
    client.close()


def test_a_task_module_that_configures_structlog_leaves_the_daemons_logs_alone(
    namespace: str, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    """Its structlog.configure() at import took every later line of the daemon's to its
    stdout, in its form, without the running task's id: the journal and log shippers got
    none of them."""
    imports = [TEST_TASKS, "tests.support.app_structlog"]
    process, client = one_child(daemon, namespace, tmp_path, imports=imports)
    sent = client.send("app_double", 21)
    assert sent.get(timeout=30) == 42
    (done,) = wait_until(
        lambda: [e for e in process.events("task_succeeded") if e["task_id"] == sent.task_id], 10
    )
    assert done["task"] == "app_double" and done["level"] == "info" and "timestamp" in done
    client.close()


def test_a_task_can_end_the_multiprocessing_pool_it_forked(
    namespace: str, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    """Forked pool workers inherited the child's SIGTERM handler, lived on through the
    pool's terminate(), and the task waited for them for ever (about one pool in three, when
    a worker waited on the pool's lock by then)."""
    _process, client = one_child(daemon, namespace, tmp_path)
    assert client.send("pools_terminated", 10).get(timeout=30) == 10
    client.close()


def test_a_copy_of_the_child_that_a_task_forked_leaves_when_the_task_returns(
    namespace: str, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    """It went on as a second worker of the slot, unsupervised: it took tasks, and stayed
    after the daemon stopped."""
    process, client = one_child(daemon, namespace, tmp_path)
    forked = tmp_path / "forked"
    assert client.send("forks_and_returns", str(forked)).get(timeout=30) == "done"
    (copy,) = (int(pid) for pid in wait_until(lambda: runs(forked), 10, what="the copy's pid"))
    wait_until(lambda: not running(copy), 10, what="the copy to leave")
    (left,) = wait_until(lambda: process.events("task_fork_returned"), 10)
    assert left["task"] == "forks_and_returns"
    client.close()


def test_a_closed_log_pipe_does_not_end_a_daemon_whose_tasks_want_sigpipe(
    namespace: str, tmp_path: Path
) -> None:
    """A task module setting SIGPIPE back to its default (a Unix tool's idiom), at import or
    while it runs: the first log line after the reader of stderr went (a log shipper
    restarting) killed the child, then the supervisor, without a word."""
    config, client = client_for(
        "sqlite", namespace, tmp_path, imports=[TEST_TASKS, "tests.support.tasks_sigpipe"]
    )
    process = subprocess.Popen(
        [str(BIN / "taskd"), "start", "-c", str(config), "--concurrency", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=process_env(tmp_path),
        start_new_session=True,
    )
    assert process.stderr is not None
    try:
        seen = _events_until(process.stderr, "taskd_ready")
        assert [e["by"] for e in seen if e["event"] == "sigpipe_ignored_again"] == ["imports"]
        assert client.send("pipe_default_again").get(timeout=30) == "set"
        again = _events_until(process.stderr, "sigpipe_ignored_again")
        assert again[-1]["by"] == "task" and again[-1]["task"] == "pipe_default_again"
        process.stderr.close()  # the log's reader is gone
        for number in range(3):
            assert client.send("add", number, 1).get(timeout=15) == number + 1
        assert process.poll() is None
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        client.close()


def _events_until(stream: Any, name: str) -> list[dict[str, Any]]:
    """The daemon's log events read from ``stream`` up to the first ``name``."""
    events: list[dict[str, Any]] = []
    for line in stream:
        events.append(json.loads(line))
        if events[-1]["event"] == name:
            return events
    raise AssertionError(f"the log ended before {name}: {events}")


def test_an_alarm_a_task_left_behind_does_not_end_its_child_in_a_later_task(
    namespace: str, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    """SIGALRM's default ended the child in the midst of the next task, which ran again."""
    process, client = one_child(daemon, namespace, tmp_path)
    assert client.send("leaves_an_alarm", 1).get(timeout=30) == "set"
    trace = tmp_path / "trace"
    assert client.send("slow_record", str(trace), "later", 2.0).get(timeout=30) == "later"
    wait_until(lambda: process.events("stray_alarm_ignored"), 10)
    assert process.events("child_exited") == []
    assert runs(trace) == ["start:later", "end:later"]  # ran once
    client.close()


def one_child(
    daemon: Callable[..., Any], namespace: str, tmp_path: Path, **overrides: Any
) -> tuple[Any, Any]:
    """A daemon of one child on the embedded default, ready, and a client of it."""
    config, client = client_for("sqlite", namespace, tmp_path, **overrides)
    process = daemon(config, "--concurrency", "1")
    process.wait_ready(1)
    return process, client


def test_a_child_whose_tasks_leave_it_out_of_descriptors_makes_way_for_a_fresh_one(
    namespace: str, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    """It went on without room to open its database's log for a sync, or a connection
    after an outage, for as long as it lived."""
    process, client = one_child(daemon, namespace, tmp_path)
    (first,) = process.child_pids()
    assert client.send("leaks_descriptors", 2).get(timeout=30) > 0
    (short,) = wait_until(lambda: process.events("child_out_of_descriptors"), 10)
    assert short["limit"] - short["open"] < 8
    wait_until(lambda: process.events("child_exited"), 10, what="the child to leave")
    assert process.events("child_exited")[0]["reason"] == "recycled"
    assert client.send("add", 2, 3).get(timeout=30) == 5  # on the fresh child
    assert first not in process.child_pids()
    client.close()
