"""Log lines in the journal: ``<priority>event key=value``, when stderr is the stream systemd
names in ``$JOURNAL_STREAM``; JSON lines anywhere else."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from taskd.logs import is_journal
from tests.support.harness import BIN, client_for, process_env, wait_until


def journal_env(tmp_path: Path, stream: Path) -> dict[str, str]:
    """The environment systemd gives a service whose stderr is ``stream``."""
    stat = stream.stat()
    return process_env(tmp_path, JOURNAL_STREAM=f"{stat.st_dev}:{stat.st_ino}")


def test_the_daemon_writes_priorities_for_the_journal(namespace: str, tmp_path: Path) -> None:
    config, client = client_for("sqlite", namespace, tmp_path)
    stream = tmp_path / "journal"
    stream.touch()
    with stream.open("wb") as stderr:
        process = subprocess.Popen(
            [str(BIN / "taskd"), "start", "-c", str(config), "--concurrency", "1"],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=journal_env(tmp_path, stream),
            start_new_session=True,
        )
        try:
            wait_until(lambda: "child_ready" in stream.read_text(), 20, what="child_ready")
            assert client.send("fail", "boom").state() is not None
            wait_until(lambda: "task_failed" in stream.read_text(), 20, what="task_failed")
            process.send_signal(signal.SIGTERM)
            assert process.wait(20) == 0
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
    lines = stream.read_text().splitlines()
    assert lines and all(line.startswith("<") for line in lines), lines
    by_event = {line.split()[0]: line for line in lines}
    assert "<6>taskd_started" in by_event
    assert "<6>child_ready" in by_event
    failed = by_event["<3>task_failed"]
    assert "error=boom" in failed and "timestamp" not in failed  # the journal keeps the time
    assert "task=fail" in failed
    assert "<6>taskd_stopped" in by_event
    client.close()


def test_a_critical_error_at_start_has_its_priority(tmp_path: Path) -> None:
    config = tmp_path / "taskd.yml"
    config.write_text("imports: [no_such_module_anywhere]\n")
    stream = tmp_path / "journal"
    stream.touch()
    with stream.open("wb") as stderr:
        done = subprocess.run(
            [str(BIN / "taskd"), "start", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=journal_env(tmp_path, stream),
            timeout=60,
            check=False,
        )
    assert done.returncode == 1
    (line,) = [line for line in stream.read_text().splitlines() if "plugin_failed" in line]
    assert line.startswith("<2>plugin_failed ")
    error, _end = json.JSONDecoder().raw_decode(line.split(" error=", 1)[1])
    assert "no_such_module_anywhere" in error  # a value with spaces is a quoted JSON string


def test_a_stream_elsewhere_is_not_the_journal(tmp_path: Path) -> None:
    stream = tmp_path / "journal"
    stream.touch()
    stat = stream.stat()
    with stream.open("wb") as file:
        assert is_journal(file.fileno(), {"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"})
        assert not is_journal(file.fileno(), {"JOURNAL_STREAM": f"{stat.st_dev}:1"})
        assert not is_journal(file.fileno(), {})
        assert not is_journal(file.fileno(), {"JOURNAL_STREAM": "garbage"})


STDLIB_LOGGING = """
import logging, warnings, structlog
from taskd import logs
logs.configure("info")
structlog.contextvars.bind_contextvars(task_id="task_1")
log = logging.getLogger("mytasks")
log.warning("disk almost full: %d%%", 93)
log.info("an info line")
log.debug("not at info")
logging.getLogger("pika.adapters").info("a library's chatter")
logging.getLogger("pika.adapters.base_connection").error("connection_lost: EOF")
try:
    1 / 0
except ZeroDivisionError:
    log.exception("it broke")
warnings.warn("old api", DeprecationWarning, stacklevel=1)
"""


def test_the_standard_librarys_logging_comes_out_as_taskds_own(tmp_path: Path) -> None:
    """A task's own logging.getLogger(...), a library's, and Python's warnings: each a line
    of the same form as taskd's events, at its level, with the running task's id; JSON here
    (stderr is a file), the journal's form under systemd."""
    stream = tmp_path / "stderr"
    script = ["-W", "always", "-c", STDLIB_LOGGING]
    with stream.open("wb") as stderr:
        done = subprocess.run([str(BIN / "python"), *script], stderr=stderr, check=False)
    assert done.returncode == 0, stream.read_text()
    events = [json.loads(line) for line in stream.read_text().splitlines()]  # every line
    by_event = {event["event"]: event for event in events}
    warning = by_event["disk almost full: 93%"]
    assert (warning["level"], warning["logger"], warning["task_id"]) == (
        "warning",
        "mytasks",
        "task_1",
    )
    assert by_event["an info line"]["level"] == "info"
    assert "not at info" not in by_event and "a library's chatter" not in by_event
    assert "connection_lost: EOF" not in by_event  # taskd reports an outage once, itself
    assert "ZeroDivisionError" in json.dumps(by_event["it broke"]["exception"])
    (warned,) = [e for e in events if e["logger"] == "py.warnings"]
    assert "DeprecationWarning: old api" in warned["event"]

    with stream.open("wb") as stderr:  # the journal
        env = journal_env(tmp_path, stream)
        subprocess.run([str(BIN / "python"), *script], stderr=stderr, env=env, check=True)
    lines = stream.read_text().splitlines()
    assert '<4>"disk almost full: 93%" logger=mytasks task_id=task_1' in lines
    assert any(line.startswith('<3>"it broke"') and "ZeroDivisionError" in line for line in lines)


SURROGATES = """
import structlog
from taskd import logs
logs.configure("info")
structlog.get_logger("t").error("task_failed", error="no such file: b\\udcff.txt", at=["\\ud800"])
structlog.get_logger("t").info("after")
"""


def test_a_lone_surrogate_in_a_value_is_logged_as_go_writes_it(tmp_path: Path) -> None:
    """A task's error naming a file by its raw bytes (Python's surrogateescape) carries a lone
    surrogate, which orjson refuses: the log call raised, in a child after its task's outcome,
    so the child crashed with the outcome unwritten, at every delivery. Both the JSON and the
    journal's lines write it as its JSON escape, the byte it stands for still readable."""
    for env in ({}, {"JOURNAL_STREAM": "{dev}:{ino}"}):
        stream = tmp_path / "stderr"
        stream.touch()
        stat = stream.stat()
        journal = {k: v.format(dev=stat.st_dev, ino=stat.st_ino) for k, v in env.items()}
        with stream.open("wb") as stderr:
            done = subprocess.run(
                [str(BIN / "python"), "-c", SURROGATES],
                stderr=stderr,
                env=process_env(tmp_path, **journal),
                check=False,
            )
        text = stream.read_text()
        assert done.returncode == 0, text
        assert "no such file: b\\udcff.txt" in text and "after" in text
