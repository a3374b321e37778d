"""The Memcache result backend: machinery's keys and JSON, with its races closed.

URL ``memcache://host1:11211,host2:11211`` (machinery's form), or ``memcaches://`` for TLS with
the options of ``taskd.tls`` in its query; keys are spread over the servers by rendezvous
hashing (``taskd.backends.memcache_servers``: a server joining or leaving moves only its share
of the keys; one that does not answer is an outage, never a missing key). As in machinery, a
task's state is stored under its id and a group's metadata under the group id, as the same JSON
as the Redis backend, with an absolute expiry of ``now + results_expire_in`` (Memcache reads
values past 30 days as a timestamp).

Unlike machinery:
- a later state keeps the stored TaskName and CreatedAt (machinery's merge rule, which its own
  Memcache backend skips), applied with gets/cas so that concurrent writers cannot lose one;
- a chord is claimed with ``add`` of ``taskd:chord:<group id>`` (true for one claimant
  only; the same claimant again is told yes), not machinery's unlocked get-and-set, whose
  races fired chord callbacks twice; members count themselves with ``incr`` of
  ``taskd:chord_count:<group id>`` (``count_chord_member``).

Boards (taskd's own): ``taskd:board:<name>`` holds the whole board as JSON
(``taskd.backends.board_json``), posted by gets/cas like a state, and kept by Memcache as
long as its longest-lived entry.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any, Self
from urllib.parse import parse_qsl

from taskd import drivers
from taskd.backends import board_json
from taskd.backends.base import SPENT_CLAIM, Entry, ResultBackend, claim_covers
from taskd.backends.memcache_servers import Servers
from taskd.config import Config, redact_url
from taskd.errors import BackendError, BackendUnavailable, ConfigError
from taskd.tls import TLS_OPTIONS, TLSOptions, split_query
from taskd.wire import GroupMeta, State, TaskState
from taskd.wire.state import merged

DEFAULT_PORT = 11211
CAS_ATTEMPTS = 50  # concurrent writers of one key retry this often before giving up
CONNECT_TIMEOUT_S = 5.0
TIMEOUT_S = 15.0  # longest wait for a reply
CLAIMS_PREFIX = "taskd:chord:"  # + group id: the claimant of a group's chord
COUNTS_PREFIX = "taskd:chord_count:"  # + group id: its members counted (count_chord_member)
# + board name: the whole board. One item, so at most memcached's item size (-I, 1 MB by
# default; a post past it fails with "object too large"): a few thousand entries.
BOARDS_PREFIX = "taskd:board:"


def servers_of(url: str, key: str, source: str | None = None) -> list[tuple[str, int]]:
    """The (host, port) list of ``memcache://h1:11211,h2:11211``."""
    return parse_url(url, key, source)[0]


def parse_url(
    url: str, key: str, source: str | None = None
) -> tuple[list[tuple[str, int]], TLSOptions | None]:
    """The (host, port) list of ``memcache://h1:11211,h2:11211`` (or ``memcaches://``), and
    the TLS options of its query (None for ``memcache://``); ConfigError naming ``key``."""
    scheme, _, rest = url.partition("://")
    hosts, _, query = rest.partition("?")
    servers = []
    for item in filter(None, hosts.strip("/").split(",")):
        host, _, port = item.rpartition(":") if ":" in item else (item, "", str(DEFAULT_PORT))
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(key, f"{redact_url(url)!r}: {item!r} is not host:port", source)
        servers.append((host, int(port)))
    if not servers:
        raise ConfigError(key, f"{redact_url(url)!r} names no server", source)
    tls, unknown = split_query(url, query, scheme == "memcaches", key, source)
    if unknown:
        names = ", ".join(dict.fromkeys(name for name, _ in parse_qsl(unknown)))
        raise ConfigError(
            key,
            f"{redact_url(url)!r} has an unknown option {names}; a Memcache URL takes only"
            f" the TLS options {', '.join(TLS_OPTIONS)} (with memcaches://)",
            source,
        )
    return servers, tls


class MemcacheBackend(ResultBackend):
    driver = "memcache"

    def __init__(self, url: str, config: Config) -> None:
        servers, tls = parse_url(url, "result_backend", config.source)
        try:
            import pymemcache  # noqa: F401
        except ImportError as exc:
            raise ConfigError(
                "result_backend",
                f"the Memcache driver needs pymemcache (a dependency of taskd): {exc}",
                config.source,
            ) from None
        self._client = Servers(
            servers,
            connect_timeout=CONNECT_TIMEOUT_S,
            timeout=TIMEOUT_S,
            default_noreply=False,  # a write has returned once the server has it
            tls_context=None if tls is None else tls.context(),
        )
        self._expire_s = config.results_expire_in_s

    @classmethod
    def from_config(cls, url: str, config: Config) -> Self:
        return cls(url, config)

    def _translated(self, about: str | None) -> AbstractContextManager[None]:
        from pymemcache.exceptions import MemcacheError, MemcacheUnexpectedCloseError

        return drivers.translated(
            (OSError, MemcacheUnexpectedCloseError),
            (MemcacheError, ValueError),
            BackendUnavailable,
            BackendError,
            self.driver,
            task_id=about,
        )

    def _expiry(self) -> int:
        # Rounded up: memcached counts whole seconds, and int() could take most of the
        # first one away (a state kept for 1 s vanished at once, now and then).
        return math.ceil(time.time()) + self._expire_s

    # -- states -----------------------------------------------------------------------------

    def set_states(self, states: Sequence[TaskState]) -> None:
        for state in states:
            with self._translated(state.task_uuid):
                if state.state is State.PENDING:
                    self._client.set(state.task_uuid, state.encode(), expire=self._expiry())
                else:
                    self._merge(state)

    def _merge(self, state: TaskState) -> None:
        """Store ``state`` merged with the stored record, by compare-and-swap."""
        key = state.task_uuid
        for _ in range(CAS_ATTEMPTS):
            raw, token = self._client.gets(key)
            stored = None if raw is None else self._load_state(raw, key)
            value = merged(state, stored).encode()
            if raw is None:
                if self._client.add(key, value, expire=self._expiry(), noreply=False):
                    return
            elif self._client.cas(key, value, token, expire=self._expiry()):
                return
        raise BackendUnavailable(self.driver, "too many concurrent writes", key)

    def get_states(self, task_ids: Sequence[str]) -> list[TaskState | None]:
        if not task_ids:
            return []
        with self._translated(task_ids[0]):
            found: dict[Any, Any] = self._client.get_many(list(task_ids))
        return [
            self._load_state(found[task_id], task_id) if task_id in found else None
            for task_id in task_ids
        ]

    def purge(self, task_id: str) -> None:
        with self._translated(task_id):
            self._client.delete(task_id, noreply=False)

    # -- groups and chords -------------------------------------------------------------------

    def init_group(self, group: GroupMeta) -> None:
        with self._translated(group.group_uuid):
            self._client.set(group.group_uuid, group.encode(), expire=self._expiry())
            self._client.set(COUNTS_PREFIX + group.group_uuid, b"0", expire=self._expiry())

    def count_chord_member(self, group_id: str, task_id: str) -> int | None:
        """``incr`` of a count ``init_group`` set to 0, which a member delivered again counts
        again. None once Memcache evicted it (never made anew: it would count from 0)."""
        with self._translated(group_id):
            return self._client.incr(COUNTS_PREFIX + group_id, 1, noreply=False)

    def get_group(self, group_id: str) -> GroupMeta | None:
        with self._translated(group_id):
            raw = self._client.get(group_id)
        return None if raw is None else self._load_group(raw, group_id)

    def claim_chord(self, group_id: str, claimant: str) -> bool:
        with self._translated(group_id):
            if self.get_group(group_id) is None:
                raise BackendError(self.driver, "group metadata is missing or expired", group_id)
            key = CLAIMS_PREFIX + group_id
            if not self._client.add(key, claimant.encode(), expire=self._expiry(), noreply=False):
                owner = self._client.get(key)
                return owner is not None and claim_covers(owner.decode(), claimant)
            self._mark_triggered(group_id)
            return True

    def chord_fired(self, group_id: str) -> None:
        with self._translated(group_id):
            key, spent = CLAIMS_PREFIX + group_id, SPENT_CLAIM.encode()
            self._client.replace(key, spent, expire=self._expiry(), noreply=False)

    def _mark_triggered(self, group_id: str) -> None:
        """Flip ChordTriggered in the stored GroupMeta, as machinery's readers expect."""
        for _ in range(CAS_ATTEMPTS):
            raw, token = self._client.gets(group_id)
            if raw is None:
                return
            group = self._load_group(raw, group_id)
            if group.chord_triggered:
                return
            value = replace(group, chord_triggered=True).encode()
            if self._client.cas(group_id, value, token, expire=self._expiry()):
                return

    # -- boards -----------------------------------------------------------------------------

    def post(self, board: str, entries: Mapping[str, Entry | None], ttl_s: float) -> None:
        key = BOARDS_PREFIX + board
        with self._translated(f"board {board}"):
            for _ in range(CAS_ATTEMPTS):
                raw, token = self._client.gets(key)
                now_s = time.time()
                value, longest_s = board_json.pinned(
                    raw, entries, ttl_s, now_s, driver=self.driver, board=board
                )
                # An absolute time (as _expiry), rounded up: Memcache counts whole seconds.
                expire = int(now_s + longest_s) + 1
                if raw is None:
                    if self._client.add(key, value, expire=expire, noreply=False):
                        return
                elif self._client.cas(key, value, token, expire=expire):
                    return
        raise BackendUnavailable(self.driver, "too many concurrent writes", f"board {board}")

    def read_board(self, board: str) -> dict[str, Entry]:
        with self._translated(f"board {board}"):
            raw = self._client.get(BOARDS_PREFIX + board)
        return board_json.live(raw, time.time(), driver=self.driver, board=board)

    def close(self) -> None:
        self._client.close()
