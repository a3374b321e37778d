"""The Redis result backend: machinery's layout, ``SET <task id> <TaskState> EX <expiry>``.

Group metadata lives under the group id. A chord is claimed by flipping ``ChordTriggered``
inside the stored GroupMeta in one script: atomic per group, with no global mutex (machinery
serialises every chord of every group behind one ``TriggerChordMutex``).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any, Self

import orjson

from taskd import logs, redis_checks, redisdb
from taskd.backends import board_json
from taskd.backends.base import SPENT_CLAIM, Awaited, Entry, Progress, ResultBackend, is_final
from taskd.config import Config
from taskd.confirms import Confirm, confirmed
from taskd.errors import BackendError, BackendUnavailable
from taskd.redis_scripts import Script
from taskd.wire import GroupMeta, State, TaskState

log = logs.get_logger("taskd.redis")
SET_STATES = Script.packaged("set_states.lua", call="return set_states(#KEYS, KEYS, ARGV)")
CLAIM_CHORD = Script.packaged("claim_chord.lua")
# set_states.lua's code for each state: replace (PENDING), merge, or merge and wake waiters
_MERGE = {
    state: "2" if state.is_completed else "0" if state is State.PENDING else "1" for state in State
}
WAITER_TTL_S = 60  # a waiter's registration (and list) outlives this client by this much
WAKE_FIRST_CHECK_S = 0.05  # with nothing pushed, the states are read again after this...
WAKE_GROWTH = 1.5
WAKE_CHECK_S = 1.0  # ...growing to this
POPPED_MAX = 500  # states taken off a waiter's list at once, behind the BLPOP for the first
MIN_WAIT_S = 0.001  # a shorter block is not worth a round trip (and 0 would block for ever)
POST = Script.packaged("post.lua")
REGISTER = Script.packaged("register.lua")
TAKE = Script.packaged("take.lua")


def unconfirmed(states: Sequence[TaskState], answers: Sequence[Any]) -> None:
    """Log the PENDING writes whose reply was an error, or lost: not raised, because the
    messages went out, and their workers' states are stored whether or not it was."""
    failed = [answer for answer in answers if isinstance(answer, Exception)]
    if failed:
        log.warning("pending_state_unconfirmed", task_id=states[0].task_uuid, error=str(failed[0]))


class RedisBackend(ResultBackend):
    driver = "redis"

    def __init__(self, url: str, config: Config) -> None:
        self._redis = redisdb.connect(url, config, "result_backend", longest_block_s=WAKE_CHECK_S)
        self._expire_s = config.results_expire_in_s
        self._prefix = config.redis.key_prefix
        self._pending = redisdb.Pipe(self._redis)  # begin_pending's writes, replies read later
        self._source = config.source

    def check(self, *, writes: bool = True, serves: bool = False) -> None:
        with self._translated():
            redis_checks.refuse_unusable(
                self._redis, "result_backend", self._source, redis_checks.SCRIPTING, writes=writes
            )
            redis_checks.warn_of_eviction(self._redis, "result_backend")
            if serves:
                redis_checks.warn_of_no_persistence(self._redis, "result_backend")

    @classmethod
    def from_config(cls, url: str, config: Config) -> Self:
        return cls(url, config)

    @property
    def redis(self) -> Any:
        """The redis-py client (``taskd.pairs`` packs PENDING writes with a publish)."""
        return self._redis

    def _translated(self, task_id: str | None = None) -> Any:
        return redisdb.translated(BackendUnavailable, BackendError, self.driver, task_id=task_id)

    def set_states(self, states: Sequence[TaskState]) -> None:
        if not states:
            return
        keys, args = self.state_arguments(states)
        with self._translated(keys[0]):
            if len(states) == 1 and states[0].state is State.PENDING:  # nothing to merge
                self._redis.execute_command("SET", keys[0], args[0], "EX", self._expire_s)
            else:
                SET_STATES(self._redis, keys, args)

    def state_arguments(self, states: Sequence[TaskState]) -> tuple[list[str], list[Any]]:
        """The keys and arguments of ``set_states(#keys, keys, args)`` (set_states.lua) for
        these states: ``taskd.pairs`` runs it in the script that acks their messages."""
        merge = "".join(_MERGE[state.state] for state in states)
        values = [state.encode() for state in states]
        keys = [state.task_uuid for state in states]
        return keys, [*values, self._prefix, WAITER_TTL_S, merge, self._expire_s]

    def begin_pending(self, states: Sequence[TaskState], *, fresh: bool) -> Confirm:
        """SETs (``NX`` for fresh ids) sent without waiting, on a connection that senders'
        PENDING writes share; the replies are read when the sender completes the write
        (``unconfirmed``), which may be many sends later (``taskd.confirms``)."""
        if not states:
            return confirmed
        with self._translated(states[0].task_uuid):
            replies = self._pending.write(self.pending_commands(states, fresh=fresh))

        def complete() -> None:
            try:
                answers = replies()
            except Exception as exc:  # the messages went out: say so, do not fail the send
                answers = [exc]
            unconfirmed(states, answers)

        return complete

    def pending_commands(self, states: Sequence[TaskState], *, fresh: bool) -> list[tuple]:
        """The SETs storing senders' PENDING states (``NX`` for fresh ids: see
        ``begin_pending``), for a sender that packs them with its messages
        (``taskd.pairs``)."""
        only_new = ("NX",) if fresh else ()
        return [("SET", s.task_uuid, s.encode(), "EX", self._expire_s, *only_new) for s in states]

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

    def chord_fired(self, group_id: str) -> None:
        with self._translated(group_id):
            self._redis.set(f"{self._prefix}chord:{group_id}", SPENT_CLAIM, xx=True, keepttl=True)

    def count_chord_member(self, group_id: str, task_id: str) -> int:
        """A set of the members counted (``<key_prefix>chord_members:<group id>``), which
        a member delivered again joins only once."""
        key = f"{self._prefix}chord_members:{group_id}"
        commands = [("SADD", key, task_id), ("EXPIRE", key, self._expire_s), ("SCARD", key)]
        with self._translated(group_id):
            return int(redisdb.execute(self._redis, [("MULTI",), *commands, ("EXEC",)])[-1][-1])

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
        """The unexpired entries, by Redis's clock; read commands only (no script), so a
        monitoring user (``+@read +@fast -@write``) may read the workers board too."""
        key = f"{self._prefix}board:{board}"
        with self._translated():
            (seconds, micros), stored = redisdb.execute(self._redis, [("TIME",), ("HGETALL", key)])
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        if isinstance(stored, list):  # RESP2's flat reply
            stored = dict(zip(stored[::2], stored[1::2], strict=True))
        pairs = (
            (field.decode(), entry)
            for field, value in stored.items()
            for expiry, _, entry in [value.partition(b" ")]
            if expiry.isdigit() and int(expiry) > now_ms
        )
        return board_json.entries(pairs, driver=self.driver, board=board)

    def wait_states(
        self,
        task_ids: Sequence[str],
        timeout_s: float | None = None,
        progress: Progress | None = None,
    ) -> list[TaskState]:
        """Woken, not polled: the waiter names a list of its own in each task's set of
        waiters (``<key_prefix>waiting:<task id>``), reads the states, then blocks on the
        list, to which a worker pushes each final state as it stores it (set_states.lua).
        A read follows every WAKE_CHECK_S without a push (a Go worker pushes nothing; a
        waiter registered for longer than WAITER_TTL_S is registered again), so polling
        remains the fallback."""
        waiter = f"{self._prefix}waiter:{secrets.token_hex(8)}"
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        awaited = Awaited(task_ids)
        check_s = WAKE_FIRST_CHECK_S
        while True:
            waiting = awaited.unfinished()
            wait_s = check_s if deadline is None else min(check_s, deadline - time.monotonic())
            heard_at = time.monotonic()  # the read: its block counts towards check_s
            states, pushed = self._register(waiter, waiting, max(wait_s, MIN_WAIT_S))
            awaited.saw(zip(waiting, states, strict=True))
            while True:
                if pushed:
                    awaited.saw((state.task_uuid, state) for state in pushed)
                    heard_at = time.monotonic()
                if awaited.all_final(deadline, timeout_s, progress):
                    # Nothing to clean up: Redis deletes a list once popped empty, and what is
                    # pushed later expires with the registrations (WAITER_TTL_S).
                    return awaited.states()
                wait_s = check_s - (time.monotonic() - heard_at)
                if deadline is not None:
                    wait_s = min(wait_s, deadline - time.monotonic())
                if wait_s < MIN_WAIT_S:
                    break  # nothing pushed for check_s: read again
                pushed = self._pushed(waiter, wait_s, several=len(waiting) > 1)
            check_s = min(check_s * WAKE_GROWTH, WAKE_CHECK_S)

    def _register(
        self, waiter: str, task_ids: Sequence[str], wait_s: float
    ) -> tuple[list[TaskState | None], list[TaskState]]:
        """Add ``waiter`` to each task's waiters, read the tasks' states and block up to
        ``wait_s`` for a push, in one write (register.lua): a state stored after the read is
        pushed to the waiter, and where every state read is final already the script ends
        the block at once. The states, and what was pushed."""
        import redis

        args = (waiter, WAITER_TTL_S, self._prefix)
        commands = [
            ("EVALSHA", REGISTER.sha, len(task_ids), *task_ids, *args),
            *_popping(waiter, wait_s, several=len(task_ids) > 1),
        ]
        with self._translated(task_ids[0]):
            replies = redisdb.send_packed(self._redis, commands)
            (registered,) = replies(1)
            if isinstance(registered, redis.exceptions.NoScriptError):  # Redis restarted
                try:  # loads it; registers, and ends the block where all are final
                    registered = REGISTER.load_and_run(self._redis, task_ids, args)
                except redis.RedisError as exc:
                    registered = exc
            if isinstance(registered, Exception):
                replies()
                raise registered
            raws, ended = registered
            states = [
                None if raw is None else self._load_state(raw, task_id)
                for task_id, raw in zip(task_ids, raws, strict=True)
            ]
            if not ended and all(is_final(state) for state in states):  # a record it misread
                release = self._redis.pipeline(transaction=False)
                release.rpush(waiter, b"").expire(waiter, WAITER_TTL_S)  # the block ends
                release.execute()
            popped = replies()
        return states, self._popped(*popped, waiter=waiter)

    def _pushed(self, waiter: str, wait_s: float, *, several: bool) -> list[TaskState]:
        """The final states pushed to ``waiter``, waiting up to ``wait_s`` for the first."""
        with self._translated():
            replies = redisdb.send_packed(self._redis, _popping(waiter, wait_s, several))()
        return self._popped(*replies, waiter=waiter)

    def _popped(self, popped: Any, *taken: Any, waiter: str) -> list[TaskState]:
        """The states in the replies to ``_popping``'s commands."""
        import redis

        if taken and isinstance(taken[0], redis.exceptions.NoScriptError):  # Redis restarted
            taken = (TAKE.load_and_run(self._redis, [waiter], [POPPED_MAX]),)  # takes them now
        for reply in (popped, *taken):
            if isinstance(reply, Exception):
                raise reply
        more = taken[0] if taken else []
        raws = ([] if popped is None else [popped[1]]) + more
        # An empty one ends a block on states that were final already (register.lua)
        return [self._load_state(raw, waiter) for raw in raws if raw]

    def purge(self, task_id: str) -> None:
        with self._translated(task_id):
            self._redis.delete(task_id)

    def close(self) -> None:
        self._redis.close()


def _popping(waiter: str, wait_s: float, several: bool) -> list[tuple]:
    """Block up to ``wait_s`` for a state pushed to ``waiter``; waiting on ``several``, take
    those pushed behind it in the same write (take.lua): a group's members finish faster than
    one round trip each. Not LPOP with a count: Redis results work on Redis older than 6.2."""
    blocking = ("BLPOP", waiter, wait_s)
    if not several:
        return [blocking]
    return [blocking, ("EVALSHA", TAKE.sha, 1, waiter, POPPED_MAX)]
