"""taskctl as a user runs it: real processes against a real daemon."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import (
    BIN,
    config_data,
    process_env,
    run_cli,
    taskctl,
    wait_until,
    write_config,
)

TASK_ID = re.compile(r"task_([0-9a-f-]{36})")


def test_send_and_wait_prints_the_result(tmp_path: Path, served: Path) -> None:
    done = taskctl(tmp_path, served, "send", "sum", "--arg", "[]int64:[1,2,3]", "--wait", "30")
    assert (done.returncode, done.stdout) == (0, "6\n"), done.stderr


def test_send_prints_only_the_id_then_result_reads_it(tmp_path: Path, served: Path) -> None:
    sent = taskctl(tmp_path, served, "send", "sum", "--arg", "[]int64:[1,2,3]")
    assert sent.returncode == 0
    match = TASK_ID.fullmatch(sent.stdout.strip())
    assert match and uuid.UUID(match.group(1)).version == 4
    assert sent.stdout.count("\n") == 1
    task_id = sent.stdout.strip()

    waited = taskctl(tmp_path, served, "result", task_id, "--wait", "30")
    assert (waited.returncode, waited.stdout) == (0, "6\n")
    as_json = taskctl(tmp_path, served, "result", task_id, "--json")
    assert as_json.returncode == 0
    state = json.loads(as_json.stdout)
    assert '"State":"SUCCESS"' in as_json.stdout
    assert '"Results":[{"Type":"int64","Value":6}]' in as_json.stdout
    assert list(state) == ["TaskUUID", "TaskName", "State", "Results", "Error", "CreatedAt", "TTL"]
    assert state["TaskUUID"] == task_id
    assert state["TaskName"] == "sum"


def test_a_failed_task_exits_1_with_its_error(tmp_path: Path, served: Path) -> None:
    done = taskctl(tmp_path, served, "send", "fail", "--arg", "string:it broke", "--wait", "30")
    assert done.returncode == 1
    assert done.stdout == ""
    assert "it broke" in done.stderr
    assert "Traceback" not in done.stderr


def test_not_finished_exits_3(tmp_path: Path, served: Path, namespace: str) -> None:
    idle_queue = f"{namespace}-nobody-reads"
    done = taskctl(
        tmp_path,
        served,
        "send",
        "sum",
        "--arg",
        "[]int64:[1]",
        "--queue",
        idle_queue,
        "--wait",
        "0.3",
    )
    assert done.returncode == 3
    assert "has not finished: PENDING" in done.stderr


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("int64:1.5", "1.5 is not int64"),
        ("uint8:300", "300 is out of range for uint8"),
        ("complex128:1", "'complex128' is not one of machinery's types"),
        ("[]int64:[1,", "is not a JSON value for []int64"),
        ("no-colon", "is not TYPE:VALUE"),
    ],
)
def test_bad_arguments_are_usage_errors_and_nothing_is_sent(
    tmp_path: Path, namespace: str, arg: str, message: str
) -> None:
    config = write_config(tmp_path, config_data("sqlite", namespace, tmp_path))
    done = taskctl(tmp_path, config, "send", "sum", "--arg", arg)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    stats = taskctl(tmp_path, config, "queue", "stats", "--json")
    assert json.loads(stats.stdout) == {
        "delayed": 0, "in_flight": 0, "orphaned": 0, "queue": namespace, "ready": 0
    }  # fmt: skip


def test_exit_statuses_without_a_daemon(
    tmp_path: Path, namespace: str, redis_namespace: str, redis_server: Any
) -> None:
    """Every status taskctl documents (0, 1 and 3 with a daemon: above), each for what it
    says and nothing else, with or without --json."""
    from taskd.exitcodes import TASKCTL_EXIT_STATUSES

    config = write_config(tmp_path, config_data("sqlite", namespace, tmp_path))
    for extra in ((), ("--json",)):
        unknown = taskctl(tmp_path, config, "result", "task_00000000-0000-4000-8000-0000", *extra)
        assert unknown.returncode == 4, unknown.stderr
        assert "no state is stored" in unknown.stderr
    empty = taskctl(tmp_path, config, "result", "")
    assert empty.returncode == 2 and "TASK_ID must not be empty" in empty.stderr
    bad = write_config(tmp_path, {"broker": 5}, "bad.yml")
    done = taskctl(tmp_path, bad, "send", "sum")
    assert done.returncode == 2
    assert f"{bad}: broker: must be a string" in done.stderr
    nowhere = write_config(tmp_path, {"broker": "kafka://127.0.0.1"}, "nowhere.yml")
    done = taskctl(tmp_path, nowhere, "send", "sum")
    assert done.returncode == 2
    assert "broker: no driver for 'kafka'" in done.stderr
    refused = write_config(tmp_path, {"broker": "redis://127.0.0.1:1/0"}, "refused.yml")
    for args in (("send", "sum"), ("queue", "stats", "--json")):
        done = taskctl(tmp_path, refused, *args)
        assert done.returncode == 69, done.stderr
        assert "Connection refused" in done.stderr and "Traceback" not in done.stderr
    # A broker that answers with an error: the queue's key holds something else.
    redis_config = write_config(tmp_path, config_data("redis", namespace, tmp_path), "r.yml")
    redis_server.set(f"{namespace}-wrong", "not a list")
    try:
        done = taskctl(tmp_path, redis_config, "queue", "stats", f"{namespace}-wrong")
    finally:
        redis_server.delete(f"{namespace}-wrong")
    assert done.returncode == 70, done.stderr
    assert "WRONGTYPE" in done.stderr
    cancelled = subprocess.run(
        [str(BIN / "taskctl"), "-c", str(config), "queue", "purge", namespace],
        input="n\n", capture_output=True, text=True, env=process_env(tmp_path), timeout=60,
        check=False,
    )  # fmt: skip
    assert cancelled.returncode == 5 and "nothing was purged" in cancelled.stderr
    listed = taskctl(tmp_path, config, "--help").stdout
    for code, meaning in TASKCTL_EXIT_STATUSES:
        assert re.search(rf"^ +{code} +{re.escape(meaning)}$", listed, re.MULTILINE)


def test_ctrl_c_while_waiting_exits_130(tmp_path: Path, namespace: str) -> None:
    config = write_config(tmp_path, config_data("sqlite", namespace, tmp_path))
    waiting = subprocess.Popen(
        [str(BIN / "taskctl"), "-c", str(config), "send", "sum", "--wait", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=process_env(tmp_path),
    )  # fmt: skip
    store = tmp_path / f"{namespace}.db"  # written by the send: taskctl is in its command
    wait_until(store.exists, 10, what="the task to be sent")
    waiting.send_signal(signal.SIGINT)
    _out, err = waiting.communicate(timeout=10)
    assert waiting.returncode == 130
    assert "interrupted" in err


def test_versions(tmp_path: Path) -> None:
    for command in ("taskd", "taskctl"):
        done = run_cli(tmp_path, command, "--version")
        assert done.returncode == 0
        assert re.search(r"\d+\.\d+\.\d+", done.stdout)


def test_zero_config_daemon_and_taskctl_meet(tmp_path: Path, daemon: Callable[..., Any]) -> None:
    daemon(None, "--concurrency", "1").wait_ready(1)
    done = run_cli(tmp_path, "taskctl", "send", "sum", "--arg", "[]int64:[1,2,3]", "--wait", "30")
    assert (done.returncode, done.stdout) == (0, "6\n"), done.stderr
    assert (tmp_path / "state" / "taskd.db").exists()  # under $TASKD_STATE_DIR


def test_check_config_redacts_secrets(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"broker": "redis://:hunter2@127.0.0.1:6379/0"})
    done = run_cli(tmp_path, "taskd", "check-config", "-c", str(config))
    assert done.returncode == 0
    assert "hunter2" not in done.stdout
    assert "broker: redis://:***@127.0.0.1:6379/0" in done.stdout


def test_config_after_the_command_and_arguments_from_files(tmp_path: Path, namespace: str) -> None:
    config = write_config(tmp_path, config_data("sqlite", namespace, tmp_path))
    numbers, big = tmp_path / "numbers.json", tmp_path / "big.txt"
    numbers.write_text("[1, 2, 3]\n")
    big.write_text("x" * 10_000_000)  # 10 MB
    done = run_cli(
        tmp_path, "taskctl", "send", "concat", "-c", str(config), "--json",
        "--arg", f"[]int64:@{numbers}", "--arg", f"string:@{big}", "--arg", "string:@@home",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    args = json.loads(done.stdout)["Args"]
    assert args[0] == {"Name": "", "Type": "[]int64", "Value": [1, 2, 3]}
    assert args[1]["Value"] == "x" * 10_000_000
    assert args[2]["Value"] == "@home"  # @@ for a value that starts with @
    missing = run_cli(tmp_path, "taskctl", "send", "sum", "--arg", "[]int64:@nope", "-c", "x")
    assert missing.returncode == 2 and "cannot read nope" in missing.stderr


def test_queue_output_for_people(tmp_path: Path, namespace: str) -> None:
    from taskd.brokers import open_broker
    from taskd.config import load_config

    config = write_config(tmp_path, config_data("sqlite", namespace, tmp_path))
    empty = taskctl(tmp_path, config, "queue", "dead")
    assert (empty.returncode, empty.stdout) == (0, "")
    assert f"no dead letters in {namespace}" in empty.stderr
    broker = open_broker(load_config(config, env={}))
    broker.publish(namespace, b"\xff\xfe not utf-8")
    broker.close()
    peeked = taskctl(tmp_path, config, "queue", "peek")
    assert peeked.stdout == "\\xff\\xfe not utf-8\n"  # escaped, not replacement marks


def test_chord_prints_the_error_callbacks_id(tmp_path: Path, namespace: str) -> None:
    config = write_config(tmp_path, config_data("sqlite", namespace, tmp_path))
    document = tmp_path / "chord.yml"
    document.write_text("group: [add int64:1, add int64:2]\ncallback: sum\nerror_callback: noop\n")
    done = taskctl(tmp_path, config, "chord", str(document))
    assert done.returncode == 0, done.stderr
    group_id, *members, callback_id, error_id = done.stdout.split()
    assert group_id.startswith("group_") and len(members) == 2
    assert callback_id.startswith("chord_") and error_id.startswith("task_")
    stored = taskctl(tmp_path, config, "queue", "peek", "--limit", "1")
    (member,) = (json.loads(line) for line in stored.stdout.splitlines())
    assert member["ChordCallback"]["OnError"][0]["UUID"] == error_id


def test_send_sets_time_limit_headers(tmp_path: Path, namespace: str) -> None:
    config = write_config(tmp_path, config_data("sqlite", namespace, tmp_path))
    sent = taskctl(
        tmp_path, config, "send", "sleep", "--arg", "float64:9", "--json",
        "--time-limit", "30", "--soft-time-limit", "2.5",
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    # Whole seconds as a number, others as text (pika cannot put a float in AMQP headers).
    assert json.loads(sent.stdout)["Headers"] == {"soft_time_limit": "2.5", "time_limit": 30}
    negative = taskctl(tmp_path, config, "send", "sleep", "--time-limit", "-1")
    assert negative.returncode == 2 and "--time-limit" in negative.stderr


def test_a_go_task_s_struct_result_is_shown_not_refused(tmp_path: Path, namespace: str) -> None:
    """A Go task returning a struct or map (any type: machinery records reflect's name and
    the JSON value): taskctl shows its JSON, and --json keeps the object as it is."""
    from taskd.backends import open_backend
    from taskd.config import load_config
    from taskd.wire import decode_state
    from tests.wire.test_state import GO_STRUCT_STATE

    config = write_config(tmp_path, config_data("sqlite", namespace, tmp_path))
    backend = open_backend(load_config(config, env={}))
    backend.set_states([decode_state(GO_STRUCT_STATE)])
    backend.close()
    shown = taskctl(tmp_path, config, "result", "task_p")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == '[{"X":1,"Y":[2.5,"z"]}, {"a":1,"b":2}, [{"X":3}]]'
    raw = taskctl(tmp_path, config, "result", "task_p", "--json")
    assert raw.returncode == 0, raw.stderr
    assert json.loads(raw.stdout)["Results"][0] == {
        "Type": "main.Point",
        "Value": {"X": 1, "Y": [2.5, "z"]},
    }
