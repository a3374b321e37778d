"""A chord's members do not each read every member's state.

Before, each member that succeeded read the states of all the group's members to see whether
it was the last: a chord of n members read n² states (2,000 members took 32 s on Redis, 26 s
on SQLite; 300 took 20 s on RabbitMQ). Now each counts itself (``count_chord_member``) and
only the last counted reads them. Counted here as MGETs on a Redis of the test's own.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from taskd import chord
from taskd.client import Client, signature
from taskd.config import load_config
from tests.support.harness import PrivateRedis, write_config

MEMBERS = 300


def mget_calls(server: redis.Redis) -> int:
    return int(server.info("commandstats").get("cmdstat_mget", {}).get("calls", 0))


@pytest.mark.timeout(120)
def test_only_the_last_members_read_the_groups_states(
    private_redis: PrivateRedis, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    data = {"broker": private_redis.url, "result_backend": private_redis.url, "imports": []}
    config = write_config(tmp_path, data)
    daemon(config, "--concurrency", "2").wait_ready(2)
    server = redis.Redis.from_url(private_redis.url)
    members = [signature("add", 1, i) for i in range(MEMBERS)]
    with Client(load_config(str(config))) as client:
        before = mget_calls(server)
        sent = client.send_chord(chord(members, signature("add")))
        assert sent.get(60) == sum(1 + i for i in range(MEMBERS))
    # The last member counted reads the states (two, where the last two count at once);
    # before, every member did: 300 reads.
    assert mget_calls(server) - before <= 4
