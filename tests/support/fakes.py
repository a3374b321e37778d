"""In-memory drivers for running ``Child`` and ``Supervisor`` in-process.

They keep every promise of the Broker and ResultBackend interfaces that a single process can
keep, record each call in order (``calls``), and can be made to fail: ``fail`` names a
method and how many calls of it raise the driver's Unavailable error first.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Self

from taskd.backends.base import SPENT_CLAIM, Entry, ResultBackend, claim_covers
from taskd.brokers.base import Broker, DeadLetter, Delivery, Message
from taskd.config import Config
from taskd.errors import BackendError, BackendUnavailable, BrokerUnavailable
from taskd.wire import GoTime, GroupMeta, State, TaskState
from taskd.wire.state import merged


class Recorder:
    def __init__(self, journal: list[tuple[str, Any]] | None = None) -> None:
        # A journal shared by a broker and a backend orders their calls against each other.
        self.calls: list[tuple[str, Any]] = [] if journal is None else journal
        self.failures: dict[str, int] = {}
        self.unsent: dict[str, bool] = {}

    def fail(self, method: str, times: int, *, unsent: bool = False) -> None:
        """The next ``times`` calls of ``method`` raise Unavailable (``unsent``: saying
        nothing was sent, as when no connection could be made)."""
        self.failures[method] = times
        self.unsent[method] = unsent

    def _call(self, method: str, detail: Any, unavailable: type[Exception], driver: str) -> None:
        if self.failures.get(method, 0) > 0:
            self.failures[method] -= 1
            unsent = self.unsent.get(method, False)
            raise unavailable(driver, f"{method} failed on purpose", unsent=unsent)  # type: ignore[call-arg]
        self.calls.append((method, detail))

    def called(self, method: str) -> list[Any]:
        return [detail for name, detail in self.calls if name == method]


class MemoryBroker(Recorder, Broker):
    driver = "memory"
    counts_releases = False

    def __init__(
        self,
        journal: list[tuple[str, Any]] | None = None,
        on_idle: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(journal)
        self.queues: dict[str, deque[tuple[bytes, int]]] = {}  # (body, deliveries before)
        self.dead: list[DeadLetter] = []
        self.closed = False
        self.on_idle = on_idle  # called when a fetch finds nothing (tests stop the child here)
        self._next_handle = 0

    @classmethod
    def from_config(cls, url: str, config: Config) -> Self:
        return cls()

    def _record(self, method: str, detail: Any) -> None:
        self._call(method, detail, BrokerUnavailable, self.driver)

    def publish_many(self, messages: Sequence[Message]) -> None:
        self._record("publish_many", [m.body for m in messages])
        self.check_priorities(messages)
        for message in messages:
            self.queues.setdefault(message.queue, deque()).append((message.body, 0))

    def fetch(self, queue: str, *, max_messages: int, wait_s: float) -> list[Delivery]:
        self._record("fetch", max_messages)
        waiting = self.queues.setdefault(queue, deque())
        taken = []
        while waiting and len(taken) < max_messages:
            body, before = waiting.popleft()
            self._next_handle += 1
            taken.append(Delivery(queue, body, before + 1, self._next_handle))
        if not taken:
            self.on_idle()
            time.sleep(min(wait_s, 0.001))
        return taken

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        self._record("ack_many", [d.body for d in deliveries])

    def release_many(self, deliveries: Sequence[Delivery]) -> None:
        self._record("release_many", [d.body for d in deliveries])
        grows = 1 if self.counts_releases else 0
        for delivery in reversed(deliveries):
            self.queues[delivery.queue].appendleft((delivery.body, delivery.deliveries - 1 + grows))

    def reject(self, delivery: Delivery, reason: str) -> None:
        self._record("reject", delivery.body)
        letter_id = str(len(self.dead) + 1)
        self.dead.append(DeadLetter(delivery.queue, delivery.body, reason, GoTime.now(), letter_id))

    def close(self) -> None:
        self.closed = True


class CountingMemoryBroker(MemoryBroker):
    """A broker that cannot tell a hand-back from a failed delivery (as SQS, AMQP)."""

    counts_releases = True


class MemoryBackend(Recorder, ResultBackend):
    driver = "memory"

    def __init__(self, journal: list[tuple[str, Any]] | None = None) -> None:
        super().__init__(journal)
        self.states: dict[str, TaskState] = {}
        self.groups: dict[str, GroupMeta] = {}
        self.claims: dict[str, str] = {}
        self.boards: dict[str, dict[str, tuple[float, Entry]]] = {}  # key: (expiry, entry)
        self.closed = False

    @classmethod
    def from_config(cls, url: str, config: Config) -> Self:
        return cls()

    def _record(self, method: str, detail: Any) -> None:
        self._call(method, detail, BackendUnavailable, self.driver)

    def set_states(self, states: Sequence[TaskState]) -> None:
        self._record("set_states", [(s.task_uuid, s.state) for s in states])
        for state in states:
            self.states[state.task_uuid] = merged(state, self.states.get(state.task_uuid))

    def get_states(self, task_ids: Sequence[str]) -> list[TaskState | None]:
        self._record("get_states", list(task_ids))
        return [self.states.get(task_id) for task_id in task_ids]

    def init_group(self, group: GroupMeta) -> None:
        self._record("init_group", group.group_uuid)
        self.groups[group.group_uuid] = group

    def get_group(self, group_id: str) -> GroupMeta | None:
        return self.groups.get(group_id)

    def claim_chord(self, group_id: str, claimant: str) -> bool:
        if group_id not in self.groups:
            raise BackendError(self.driver, "no such group", group_id)
        return claim_covers(self.claims.setdefault(group_id, claimant), claimant)

    def chord_fired(self, group_id: str) -> None:
        self.claims[group_id] = SPENT_CLAIM

    def post(self, board: str, entries: Mapping[str, Entry | None], ttl_s: float) -> None:
        self._record("post", (board, dict(entries)))
        now, pinned = time.monotonic(), self.boards.setdefault(board, {})
        for key, entry in entries.items():
            if entry is None:
                pinned.pop(key, None)
            else:
                pinned[key] = (now + ttl_s, entry)

    def read_board(self, board: str) -> dict[str, Entry]:
        self._record("read_board", board)
        now = time.monotonic()
        return {
            k: entry for k, (expiry, entry) in self.boards.get(board, {}).items() if expiry > now
        }

    def close(self) -> None:
        self.closed = True

    def state_of(self, task_id: str) -> State | None:
        found = self.states.get(task_id)
        return None if found is None else found.state
