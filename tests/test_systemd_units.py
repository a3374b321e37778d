"""``systemd/taskd.service`` and ``systemd/taskd@.service``: valid for systemd, and in step with
the code they run (exit statuses, state directory, shutdown timeout)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from taskd.config import STATE_DIR_ENV, WorkerConfig
from taskd.exitcodes import EXIT_USAGE
from taskd.worker.liveness import BUSY_BEAT_S
from taskd.worker.supervisor import FAST_STOP_S
from tests.support.harness import REPO

UNITS = ("systemd/taskd.service", "systemd/taskd@.service")


def settings(unit: str) -> dict[str, list[str]]:
    """The unit's [Service] and [Unit] assignments, each key with every value it is given."""
    found: dict[str, list[str]] = {}
    for raw in (REPO / unit).read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verify_passes_on_both_units() -> None:
    done = subprocess.run(
        ["systemd-analyze", "verify", *UNITS],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stderr.splitlines() if "taskd" in line] == []


@pytest.mark.parametrize("unit", UNITS)
def test_the_units_fit_the_daemon(unit: str) -> None:
    found = settings(unit)
    one = {key: values[-1] for key, values in found.items()}
    config = "/etc/taskd/%i.yml" if "@" in unit else "/etc/taskd/taskd.yml"
    assert one["Type"] == "notify"
    assert one["ExecStart"] == f"/usr/bin/env taskd start -c {config}"
    assert found["ExecReload"][-1] == "/bin/kill -HUP $MAINPID"
    assert config in found["ExecReload"][0]  # a configuration that does not load fails it
    assert one["KillMode"] == "mixed"
    assert one["Restart"] == "on-failure"
    assert str(EXIT_USAGE) in one["RestartPreventExitStatus"].split()
    shutdown_s = WorkerConfig().shutdown_timeout
    assert float(one["TimeoutStopSec"]) > shutdown_s + FAST_STOP_S
    assert float(one["WatchdogSec"]) > 2 * WorkerConfig().poll_interval + BUSY_BEAT_S
    assert one["StateDirectory"] == "taskd"
    assert f"{STATE_DIR_ENV}=%S/taskd" in found["Environment"]
    assert one["User"] == "taskd"
    assert one["ProtectSystem"] == "strict"
    for hardened in ("ProtectHome", "PrivateTmp", "NoNewPrivileges", "PrivateDevices"):
        assert one[hardened] == "yes", hardened
    assert "AF_UNIX" in one["RestrictAddressFamilies"]  # the notify socket and the journal


def test_the_two_units_differ_only_in_the_instance() -> None:
    single, template = settings(UNITS[0]), settings(UNITS[1])
    assert set(single) == set(template)
    differ = {key for key in single if single[key] != template[key]}
    assert differ == {"Description", "ExecStart", "ExecReload", "SyslogIdentifier"}


def test_every_path_the_units_run_exists() -> None:
    for unit in UNITS:
        for key in ("ExecStart", "ExecReload"):
            for command in settings(unit)[key]:
                assert Path(command.split()[0]).exists(), command
