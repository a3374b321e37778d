"""taskctl's workflow commands and send options, run as a user runs them."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.support.harness import (
    BIN,
    config_data,
    process_env,
    taskctl,
    wait_until,
    write_config,
)
from tests.support.tasks import runs


def test_chain_file_prints_ids_then_the_result(tmp_path: Path, served: Path) -> None:
    document = tmp_path / "chain.yml"
    document.write_text('- add int64:1 int64:2\n- {name: multiply, args: ["int64:3"]}\n')
    done = taskctl(tmp_path, served, "chain", str(document), "--wait", "30")
    assert done.returncode == 0, done.stderr
    *ids, result = done.stdout.splitlines()
    assert result == "9"
    assert len(ids) == 2 and all(re.fullmatch(r"task_[0-9a-f-]{36}", i) for i in ids)


def test_chord_file_prints_the_callbacks_result_last(tmp_path: Path, served: Path) -> None:
    document = tmp_path / "wf.yml"
    document.write_text(
        "group:\n"
        "  - add int64:1 int64:1\n"
        "  - {name: add, args: [int64:2, int64:2]}\n"
        '  - {"Name": "add", "Args": [{"Type": "int64", "Value": 5},'
        ' {"Type": "int64", "Value": 6}]}\n'
        "callback: multiply\n"
    )
    done = taskctl(tmp_path, served, "chord", str(document), "--wait", "30")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "88"  # (1+1) * (2+2) * (5+6)
    assert lines[0].startswith("group_") and lines[-2].startswith("chord_")


def test_a_failed_chord_member_exits_1_with_its_error(tmp_path: Path, served: Path) -> None:
    document = tmp_path / "wf.json"
    document.write_text(json.dumps({
        "group": ["add int64:1", {"name": "fail", "args": ["string:member broke"]}],
        "callback": "multiply",
    }))  # fmt: skip
    done = taskctl(tmp_path, served, "chord", str(document), "--wait", "30")
    assert done.returncode == 1
    assert "member broke" in done.stderr


def test_group_from_stdin_and_result_of_the_group_id(tmp_path: Path, served: Path) -> None:
    document = "- \"sum '[]int64:[1,2]'\"\n- \"sum '[]int64:[3,4]'\"\n- fail string:nope\n"
    done = subprocess.run(
        [str(BIN / "taskctl"), "-c", str(served), "group", "-"],
        input=document,
        capture_output=True,
        text=True,
        env=process_env(tmp_path),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    group_id, *members = done.stdout.splitlines()
    assert group_id.startswith("group_") and len(members) == 3
    listed = taskctl(tmp_path, served, "result", group_id, "--wait", "30")
    assert listed.returncode == 1  # one member failed
    assert listed.stdout.splitlines() == [
        f"{members[0]} SUCCESS 3",
        f"{members[1]} SUCCESS 7",
        f"{members[2]} FAILURE",
    ]
    assert f"{members[2]} failed: nope" in listed.stderr


def test_send_countdown_retry_and_callbacks(tmp_path: Path, served: Path) -> None:
    trace, collected = tmp_path / "stamps", tmp_path / "collected"
    sent_at = time.time()
    done = taskctl(
        tmp_path,
        served,
        "send",
        "stamp",
        "--arg",
        f"string:{trace}",
        "--countdown",
        "2",
        "--wait",
        "30",
    )
    assert done.returncode == 0, done.stderr
    assert float(runs(trace)[0]) >= sent_at + 2

    attempts = tmp_path / "attempts"
    callback = f"collect 'string:{collected}' string:after"
    done = taskctl(
        tmp_path, served, "send", "flaky_traced", "--arg", f"string:{attempts}", "--arg", "int64:1",
        "--retry-count", "2", "--on-success", callback, "--wait", "30",
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (0, "2\n"), done.stderr
    assert len(runs(attempts)) == 2

    def collected_lines() -> list[Any]:
        return (
            [json.loads(line) for line in collected.read_text().splitlines()]
            if collected.exists()
            else []
        )

    wait_until(collected_lines, 15, what="the --on-success task")
    assert collected_lines() == [["after", 2]]


def test_eta_in_the_past_runs_now_and_bad_eta_is_a_usage_error(
    tmp_path: Path, served: Path
) -> None:
    done = taskctl(
        tmp_path,
        served,
        "send",
        "sum",
        "--arg",
        "[]int64:[2]",
        "--eta",
        "2020-01-01T00:00:00Z",
        "--wait",
        "30",
    )
    assert (done.returncode, done.stdout) == (0, "2\n")
    bad = taskctl(tmp_path, served, "send", "sum", "--eta", "tomorrow")
    assert bad.returncode == 2 and "is not an ISO 8601 time" in bad.stderr
    naive = taskctl(tmp_path, served, "send", "sum", "--eta", "2030-01-01T00:00:00")
    assert naive.returncode == 2 and "needs a timezone" in naive.stderr


def test_bad_workflow_documents_are_usage_errors(tmp_path: Path, namespace: str) -> None:
    config = write_config(tmp_path, config_data("sqlite", namespace, tmp_path))
    cases = {
        "not: [a list": "not valid YAML",
        "[]": "expected a non-empty list",
        "- {name: sum, args: ['int64:1.5']}": "1.5 is not int64",
        "- {name: sum, retry_count: many}": "retry_count",
        '- {"Name": "sum", "Priority": 300}': "Priority 300 is out of range",
        "- {name: sum, priority: 300}": "priority: must be from 0 to 255",
        "- {name: sum, retry_count: -1}": "retry_count: must be at least 0",
        "- {name: sum, eta: 2026-01-01}": "needs a timezone",
        "- {name: sum, eta: 12345}": "is not an ISO 8601 time",
        '- "add \'int64:1"': "No closing quotation",
        # Misspelt keys, in the short form and in machinery's (any case, as Go matches):
        '- {name: add, argz: ["int64:1"]}': "[0]: unknown key 'argz' (did you mean 'args'?)",
        "- add int64:1\n- {Name: add, Agrs: [{Type: int64, Value: 5}]}": (
            "[1]: unknown key 'Agrs' (did you mean 'Args'?)"
        ),
        "- {NAME: add, ARGS: [{TYPE: int64, VALU: 5}]}": "[0].Args[0]: unknown key 'VALU'",
        "- {Name: add, OnSuccess: [{Name: add, Retrycont: 1}]}": "[0].OnSuccess[0]: unknown",
        "- {Name: add, countdown: 1}": "'countdown' is a key of the short form",
        "- &x {Name: add, OnSuccess: [*x]}": "[0]: nested too deeply, or nested in itself",
    }
    for text, message in cases.items():
        document = tmp_path / "bad.yml"
        document.write_text(text)
        done = taskctl(tmp_path, config, "group", str(document))
        assert done.returncode == 2, (text, done.stderr)
        assert message in done.stderr, (text, done.stderr)
        assert "Traceback" not in done.stderr
    stats = taskctl(tmp_path, config, "queue", "stats", "--json")
    assert json.loads(stats.stdout)["ready"] == 0  # nothing was sent


def test_waiting_on_a_chord_shows_progress_on_a_terminal_only(tmp_path: Path, served: Path) -> None:
    import os
    import pty

    document = tmp_path / "wf.yml"
    document.write_text("group: ['sleep float64:0.3', 'sleep float64:0.3']\ncallback: count\n")
    command = [str(BIN / "taskctl"), "-c", str(served), "chord", str(document), "--wait", "30"]
    controller, terminal = pty.openpty()
    done = subprocess.run(
        command,
        stdout=subprocess.PIPE,
        stderr=terminal,
        env=process_env(tmp_path),
        timeout=60,
        check=False,
    )
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the terminal's other end is closed
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    assert done.returncode == 0, shown
    assert done.stdout.decode().splitlines()[-1] == "2"  # the callback got both results
    assert b"finished" in shown
    assert b"100%" in shown
    assert b"\r" in shown and b"\\x" not in shown  # drawn, not shown as escaped text
    piped = taskctl(tmp_path, served, "chord", str(document), "--wait", "30")
    assert piped.returncode == 0
    assert "finished" not in piped.stderr  # plain output when piped
