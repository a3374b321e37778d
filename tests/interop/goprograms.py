"""The Go programs of the interop tests: each is one ``machinery_<store>.go`` built
with ``machinery_records.go``, in GOPATH mode (no module download: the only library, the
AMQP client, is Debian's). Skipped where Go or the library is missing; ``.ci/run`` installs
golang-go and golang-github-rabbitmq-amqp091-go-dev."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import taskctl

HERE = Path(__file__).parent
DEBIAN_GOPATH = Path("/usr/share/gocode")  # where Debian's golang-*-dev packages put sources
AMQP_LIBRARY = DEBIAN_GOPATH / "src/github.com/rabbitmq/amqp091-go"

GoProgram = Callable[..., str]


def build_go(folder: Path, store: str, gopath: Path) -> GoProgram:
    """``machinery_<store>.go`` built into ``folder``: a function running it with arguments
    and returning what it printed (it must exit 0)."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("Go is not installed (.ci/run installs golang-go)")
    program = folder / f"machinery_{store}"
    env = {
        **os.environ,
        "CGO_ENABLED": "0",  # no C compiler needed
        "GO111MODULE": "off",
        "GOCACHE": str(folder / "cache"),
        "GOPATH": str(gopath),
        "GOFLAGS": "",
    }
    sources = [str(HERE / "machinery_records.go"), str(HERE / f"machinery_{store}.go")]
    built = subprocess.run(
        [go, "build", "-o", str(program), *sources],
        capture_output=True,
        text=True,
        env=env,
        cwd=folder,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr

    def run(*args: str) -> str:
        done = subprocess.run(
            [str(program), *args], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    return run


def json_lines(output: str) -> list[dict[str, Any]]:
    """What a Go program printed: one JSON object per line."""
    return [json.loads(line) for line in output.splitlines()]


def send_now_and_later(tmp_path: Path, config: Path) -> tuple[str, str]:
    """``taskctl send`` add(2, 3), then add(4, 5) with ``--countdown 2``: their ids."""
    now = taskctl(tmp_path, config, "send", "add", "--arg", "int64:2", "--arg", "int64:3")
    later = taskctl(
        tmp_path, config, "send", "add", "--arg", "int64:4", "--arg", "int64:5", "--countdown", "2"
    )
    assert now.returncode == later.returncode == 0, now.stderr + later.stderr
    return now.stdout.strip(), later.stdout.strip()
