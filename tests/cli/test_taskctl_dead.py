"""taskctl queue dead --requeue/--drop against real daemons on every broker: a task set aside
because it was not installed runs once it is, and --drop --all empties the list."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import kind_with_server
from tests.support.harness import TEST_TASKS, config_data, taskctl, wait_until, write_config


@pytest.fixture(params=["sqlite", "redis", "amqp", "sqs"])
def driver_kind(request: pytest.FixtureRequest) -> str:
    """Every broker (with results on its server, or in SQLite beside SQS)."""
    return kind_with_server(request)


def test_a_task_set_aside_as_unknown_is_requeued_once_installed_and_runs(
    driver_kind: str, namespace: str, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    bare = write_config(tmp_path, config_data(driver_kind, namespace, tmp_path), "bare.yml")
    installed = write_config(
        tmp_path,
        config_data(driver_kind, namespace, tmp_path, imports=[TEST_TASKS]),
        "installed.yml",
    )
    without = daemon(bare, "--concurrency", "1")
    without.wait_ready(1)
    sent = taskctl(tmp_path, bare, "send", "count", "--arg", "int64:1", "--arg", "int64:2")
    task_id = sent.stdout.strip()
    failed = taskctl(tmp_path, bare, "result", task_id, "--wait", "30")
    assert failed.returncode == 1
    assert f"{task_id} failed: task 'count' is not registered" in failed.stderr
    listed = taskctl(tmp_path, bare, "queue", "dead", "--json")
    (letter,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert letter["reason"] == "task 'count' is not registered"
    assert task_id in letter["body"] and letter["id"]
    assert letter["id"] in taskctl(tmp_path, bare, "queue", "dead").stdout
    without.signal(signal.SIGTERM)
    assert without.wait() == 0

    daemon(installed, "--concurrency", "1").wait_ready(1)
    typo = taskctl(tmp_path, installed, "queue", "dead", "--requeue", "no-such-id")
    assert typo.returncode == 2
    assert "no dead letter with id no-such-id" in typo.stderr
    assert "nothing was requeued" in typo.stderr
    requeued = taskctl(tmp_path, installed, "queue", "dead", "--requeue", letter["id"])
    assert (requeued.returncode, requeued.stdout) == (0, f"requeued 1 message(s) to {namespace}\n")
    # Sent again: PENDING (or already run), never its old FAILURE, which a redelivery of the
    # requeued message (an SQS long poll of the stopped daemon took it) would take as final.
    assert taskctl(tmp_path, installed, "result", task_id).returncode in (0, 3)

    def succeeded() -> Any:
        done = taskctl(tmp_path, installed, "result", task_id)
        return done if done.returncode == 0 else None

    assert wait_until(succeeded, 30, 0.2, "the requeued task to succeed").stdout == "2\n"
    empty = taskctl(tmp_path, installed, "queue", "dead")
    assert (empty.returncode, empty.stdout) == (0, "")
    assert f"no dead letters in {namespace}" in empty.stderr

    # --drop --all empties the list
    ids = [taskctl(tmp_path, installed, "send", "no_such_task").stdout.strip() for _ in range(2)]
    for unknown_id in ids:
        assert taskctl(tmp_path, installed, "result", unknown_id, "--wait", "30").returncode == 1
    listed = taskctl(tmp_path, installed, "queue", "dead")
    assert listed.stdout.count("task 'no_such_task' is not registered") == 2
    alone = taskctl(tmp_path, installed, "queue", "dead", "--all")
    assert alone.returncode == 2 and "--all goes with --requeue or --drop" in alone.stderr
    dropped = taskctl(tmp_path, installed, "queue", "dead", "--drop", "--all")
    assert (dropped.returncode, dropped.stdout) == (0, f"dropped 2 dead letter(s) of {namespace}\n")
    after = taskctl(tmp_path, installed, "queue", "dead", "--json")
    assert (after.returncode, after.stdout) == (0, "")
    again = taskctl(tmp_path, installed, "queue", "dead", "--drop", "--all", "--json")
    assert json.loads(again.stdout) == {"dropped": 0, "queue": namespace}
