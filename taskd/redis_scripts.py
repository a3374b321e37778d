"""Lua scripts of the Redis drivers: shipped as package data (``taskd/lua/``), each run with one
EVALSHA, and able to run on a full Redis, where the drivers' other writes are refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any

from taskd import redisdb

# A full Redis (maxmemory under noeviction) refuses a script whose first write may take memory,
# but never stops one midway: after any write, the rest runs. taskd's scripts are how a queue
# drains (a fetch moves messages, a settle stores states and acks, consumers beat): were they
# refused, a Redis filled by a backlog would stay full for good, its workers unable to take
# anything. So each begins with a write that takes none. Sends stay refused (plain commands).
# Its key has a task id's form: a user whose ACL keeps it to redis.key_prefix must be allowed
# the task ids anyway (states live under them), and any other fixed name would be refused.
NEVER_WRITTEN = "task_taskd-never-written"  # never a task's id (task_<uuid4>)
RUNS_WHEN_FULL = f"redis.call('DEL', '{NEVER_WRITTEN}')\n"


class Script:
    """A Lua script run with one EVALSHA, loading it on NOSCRIPT (after a Redis restart); it
    runs on a full Redis too (RUNS_WHEN_FULL).

    Cheaper per call than redis-py's pipelines: a batch of N writes in one script costs the
    client one command instead of N packed ones.
    """

    def __init__(self, source: str) -> None:
        self.source = RUNS_WHEN_FULL + source
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()  # Redis names them by SHA-1

    @classmethod
    def packaged(cls, *names: str, call: str = "") -> Script:
        """The script made of these files of ``taskd/lua/``, in order (a shared prelude
        first), shipped as package data, then ``call``: Lua that runs the functions the
        files define (``set_states.lua`` and ``ack.lua`` are functions, so one script can
        run both)."""
        folder = resources.files("taskd") / "lua"
        parts = [(folder / name).read_text(encoding="utf-8") for name in names]
        return cls("\n".join([*parts, call] if call else parts))

    def __call__(self, client: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        import redis

        try:
            return redisdb.command(client, ("EVALSHA", self.sha, len(keys), *keys, *args))
        except redis.exceptions.NoScriptError:
            return self.load_and_run(client, keys, args)

    def load_and_run(self, client: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """EVAL with the source, for a caller that had NOSCRIPT already: loads and runs it."""
        return redisdb.command(client, ("EVAL", self.source, len(keys), *keys, *args))


RUN = Script.packaged("run.lua")
RUN_WORDS_MAX = 7000  # Lua in Redis unpacks at most about 8000 values into one call


def run_when_full(client: Any, commands: Sequence[Sequence[Any]]) -> list[Any]:
    """``commands`` run by one script, which a full Redis runs too (RUNS_WHEN_FULL), and
    their replies, each error in its command's place: for writes that take the place of
    what they follow (the daemon's own sends). A command too long for the script is
    written as it is, and a full Redis refuses it."""
    if max(len(each) for each in commands) > RUN_WORDS_MAX:
        return redisdb.send_packed(client, commands)()
    return RUN(client, [], [word for each in commands for word in (len(each), *each)])
