"""taskctl as a user runs it: real processes against a real daemon."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import config_data, run_cli, taskctl, write_config

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
    assert json.loads(stats.stdout) == {"delayed": 0, "queue": namespace, "ready": 0}


def test_unknown_id_and_bad_config(tmp_path: Path, namespace: str) -> None:
    config = write_config(tmp_path, config_data("sqlite", namespace, tmp_path))
    unknown = taskctl(tmp_path, config, "result", "task_00000000-0000-4000-8000-000000000000")
    assert unknown.returncode == 1
    assert "no state is stored" in unknown.stderr
    bad = write_config(tmp_path, {"broker": 5}, "bad.yml")
    done = taskctl(tmp_path, bad, "send", "sum")
    assert done.returncode == 2
    assert f"{bad}: broker: must be a string" in done.stderr
    nowhere = write_config(tmp_path, {"broker": "kafka://127.0.0.1"}, "nowhere.yml")
    done = taskctl(tmp_path, nowhere, "send", "sum")
    assert done.returncode == 2
    assert "broker: no driver for 'kafka'" in done.stderr


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
