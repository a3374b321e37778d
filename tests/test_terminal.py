"""What producers and tasks wrote is shown on an operator's terminal, never obeyed: control
characters in message bodies, results, errors and log values are written as escapes there,
and as they are in pipes and files."""

from __future__ import annotations

import io
import os
import pty
import subprocess
from pathlib import Path

from taskd.terminal import Shown
from tests.support.harness import BIN, client_for, process_env

HOSTILE = "x\x1b]0;title\x07\x1b[2J\rover\x9bC\x7f\tend"
SHOWN = "x\\x1b]0;title\\x07\\x1b[2J\\x0dover\\x9bC\\x7f\tend"


def test_control_characters_are_written_as_escapes_tab_and_newline_as_they_are() -> None:
    stream = io.StringIO()
    Shown(stream).write(HOSTILE + "\n")  # type: ignore[arg-type]
    assert stream.getvalue() == SHOWN + "\n"


def _read_all(controller: int) -> bytes:
    shown = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the terminal's other end is closed
            return shown
        if not chunk:
            return shown
        shown += chunk


def test_taskctl_shows_a_hostile_message_on_a_terminal_and_passes_it_through_a_pipe(
    namespace: str, tmp_path: Path
) -> None:
    config, client = client_for("sqlite", namespace, tmp_path)
    client.broker.publish(namespace, HOSTILE.encode())
    command = [str(BIN / "taskctl"), "-c", str(config), "queue", "peek"]
    controller, terminal = pty.openpty()
    done = subprocess.run(
        command, stdout=terminal, env=process_env(tmp_path), timeout=60, check=False
    )
    os.close(terminal)
    on_terminal = _read_all(controller)
    os.close(controller)
    assert done.returncode == 0
    assert SHOWN.encode() in on_terminal
    assert b"\x1b" not in on_terminal
    piped = subprocess.run(
        command, capture_output=True, env=process_env(tmp_path), timeout=60, check=False
    )
    assert piped.stdout.decode() == HOSTILE + "\n"
    client.close()


def test_the_daemons_readable_log_lines_show_what_a_task_wrote() -> None:
    pid, controller = pty.fork()
    if pid == 0:  # the child: its stderr is the terminal
        try:
            import structlog

            from taskd.logs import configure

            configure("info")
            # (a value with a tab or a carriage return is shown quoted, escaped anyway)
            error = HOSTILE.replace("\r", "").replace("\t", "")
            structlog.get_logger("t").error("task_failed", error=error)
        finally:
            os._exit(0)
    line = _read_all(controller)
    os.waitpid(pid, 0)
    assert b"title" in line and b"over" in line  # shown...
    for obeyed in (b"\x1b]0", b"\x07", b"\x1b[2J", "\x9b".encode(), b"\x7f"):
        assert obeyed not in line  # ...not obeyed
