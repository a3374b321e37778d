"""A client used before a fork, then in the parent and in the child (an application server's
workers forked after a send at start-up): each process sends on connections of its own.

Before, the child of an AMQP client published on the parent's socket: the parent's
confirms never came (a 60 s wait, then SendError for tasks that had run), and a SQLite
client's child used the parent's connection, which SQLite warns can corrupt the database.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import kind_with_server
from tests.support.harness import Daemon, client_for


@pytest.fixture(params=["sqlite", "redis", "amqp"])
def kind(request: pytest.FixtureRequest) -> str:
    return kind_with_server(request)


@pytest.mark.timeout(90)
def test_a_client_used_before_a_fork_sends_from_both_processes(
    kind: str, namespace: str, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    config, client = client_for(kind, namespace, tmp_path)
    process = daemon(config, "--concurrency", "2")
    process.wait_ready(2)
    assert client.send("sum", [1, 2]).get(timeout=20) == 3  # every driver open now
    pending = client.send("sum", [3, 4])  # and a send still in the window
    child = os.fork()
    if child == 0:  # the child: any failure is its exit status
        status = 1
        try:
            if client.send("sum", [5, 6]).get(timeout=20) == 11:
                client.flush()
                status = 0
        finally:
            os._exit(status)
    assert pending.get(timeout=20) == 7
    assert client.send("sum", [7, 8]).get(timeout=20) == 15
    client.flush()  # every send of the parent confirmed
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    client.close()
