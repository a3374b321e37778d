"""The Redis result backend: machinery's layout, ``SET <task id> <TaskState> EX <expiry>``.

Group metadata lives under the group id. A chord is claimed by flipping ``ChordTriggered``
inside the stored GroupMeta in one script: atomic per group, with no global mutex (machinery
serialises every chord of every group behind one ``TriggerChordMutex``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Self

import orjson
import structlog

from taskd import redisdb
from taskd.backends.base import Entry, ResultBackend
from taskd.config import Config
from taskd.errors import BackendError, BackendUnavailable
from taskd.wire import GroupMeta, State, TaskState

log = structlog.get_logger("taskd.redis")
SET_STATES = redisdb.Script.packaged("set_states.lua")
CLAIM_CHORD = redisdb.Script.packaged("claim_chord.lua")
POST = redisdb.Script.packaged("post.lua")
READ_BOARD = redisdb.Script.packaged("read_board.lua")


class RedisBackend(ResultBackend):
    driver = "redis"

    def __init__(self, url: str, config: Config) -> None:
        self._redis = redisdb.connect(url, config, "result_backend")
        self._expire_s = config.results_expire_in_s
        self._prefix = config.redis.key_prefix

    @classmethod
    def from_config(cls, url: str, config: Config) -> Self:
        return cls(url, config)

    def _translated(self, task_id: str | None = None) -> Any:
        return redisdb.translated(BackendUnavailable, BackendError, self.driver, task_id=task_id)

    def set_states(self, states: Sequence[TaskState]) -> None:
        if not states:
            return
        keys = [state.task_uuid for state in states]
        values = [state.encode() for state in states]
        merge = "".join("0" if state.state is State.PENDING else "1" for state in states)
        with self._translated(keys[0]):
            if merge == "0":
                self._redis.execute_command("SET", keys[0], values[0], "EX", self._expire_s)
            else:
                SET_STATES(self._redis, keys, [*values, merge, self._expire_s])

    def begin_pending(self, states: Sequence[TaskState], *, fresh: bool) -> Callable[[], None]:
        """SETs (``NX`` for fresh ids) sent on a connection of their own without waiting;
        the replies are read when the sender completes the write. A reply that cannot be
        read then is logged, not raised: the messages are out, and their workers' states
        are stored whether or not the PENDING was."""
        if not states:
            return lambda: None
        pool = self._redis.connection_pool
        only_new = ("NX",) if fresh else ()
        commands = [
            ("SET", s.task_uuid, s.encode(), "EX", self._expire_s, *only_new) for s in states
        ]
        with self._translated(states[0].task_uuid):
            connection = pool.get_connection()
            try:
                connection.send_packed_command(connection.pack_commands(commands))
            except BaseException:
                connection.disconnect()
                pool.release(connection)
                raise

        def complete() -> None:
            try:
                for _ in commands:
                    connection.read_response()
            except Exception as exc:  # the messages went out: say so, do not fail the send
                connection.disconnect()
                log.warning(
                    "pending_state_unconfirmed", task_id=states[0].task_uuid, error=str(exc)
                )
            finally:
                pool.release(connection)

        return complete

    def get_states(self, task_ids: Sequence[str]) -> list[TaskState | None]:
        if not task_ids:
            return []
        with self._translated(task_ids[0]):
            raws = self._redis.execute_command("MGET", *task_ids)
        return [
            None if raw is None else self._load_state(raw, task_id)
            for task_id, raw in zip(task_ids, raws, strict=True)
        ]

    def init_group(self, group: GroupMeta) -> None:
        with self._translated(group.group_uuid):
            self._redis.set(group.group_uuid, group.encode(), ex=self._expire_s)

    def get_group(self, group_id: str) -> GroupMeta | None:
        with self._translated(group_id):
            raw = self._redis.get(group_id)
        return None if raw is None else self._load_group(raw, group_id)

    def claim_chord(self, group_id: str, claimant: str) -> bool:
        claim_key = f"{self._prefix}chord:{group_id}"
        with self._translated(group_id):
            claimed = CLAIM_CHORD(self._redis, [group_id, claim_key], [claimant, self._expire_s])
        if claimed == -1:
            raise BackendError(self.driver, "group metadata is missing or expired", group_id)
        return claimed == 1

    def post(self, board: str, entries: Mapping[str, Entry | None], ttl_s: float) -> None:
        """A hash per board (``<key_prefix>board:<name>``); expiry by Redis's clock, so
        hosts whose clocks disagree still agree on what is live."""
        pairs = [
            part
            for key, entry in entries.items()
            for part in (key, b"" if entry is None else orjson.dumps(entry))
        ]
        with self._translated():
            POST(self._redis, [f"{self._prefix}board:{board}"], [round(ttl_s * 1000), *pairs])

    def read_board(self, board: str) -> dict[str, Entry]:
        with self._translated():
            flat = READ_BOARD(self._redis, [f"{self._prefix}board:{board}"], [])
        return {flat[i].decode(): orjson.loads(flat[i + 1]) for i in range(0, len(flat), 2)}

    def purge(self, task_id: str) -> None:
        with self._translated(task_id):
            self._redis.delete(task_id)

    def close(self) -> None:
        self._redis.close()
