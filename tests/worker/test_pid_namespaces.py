"""Daemons in containers of one host: a pid namespace each, one hostname (host networking).

Before, each daemon posted itself on the workers board as ``host:pid``: two such daemons,
both pid 1, shared one entry, and ``taskctl workers`` showed one of them (the other's running
tasks hidden from its peers too; a stop of one removed the other's entry until its next beat).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import Daemon, client_for, wait_until


def own_pid_namespace() -> list[str]:
    """A command that runs the one after it as pid 1 of a new pid namespace; skips where
    none can be made (unshare missing, or no right to)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare (util-linux) is not installed")
    command = [unshare, "--pid", "--fork", "--mount-proc"]
    probe = subprocess.run([*command, "true"], check=False, capture_output=True, timeout=10)
    if probe.returncode != 0:
        pytest.skip(f"no pid namespace can be made here: {probe.stderr.decode().strip()}")
    return command


@pytest.mark.timeout(60)
def test_two_daemons_each_pid_1_of_its_namespace_are_both_listed(
    redis_namespace: str, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    wrapper = own_pid_namespace()
    config, client = client_for("redis", redis_namespace, tmp_path)
    first = daemon(config, "--concurrency", "1", wrapper=wrapper)
    second = daemon(config, "--concurrency", "1", wrapper=wrapper)
    for process in (first, second):
        process.wait_ready(1)
        (started,) = process.events("taskd_started")
        assert started["pid"] == 1  # the same pid, on the same host

    def both_listed() -> list[dict[str, Any]] | None:
        entries = client.workers()
        return entries if len(entries) == 2 else None

    listed = wait_until(both_listed, 15, what="both daemons on the workers board")
    assert [entry["pid"] for entry in listed] == [1, 1]
    assert len({entry["machine"] for entry in listed}) == 2
