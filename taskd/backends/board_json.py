"""A board kept whole as one JSON value, by the drivers that store it so (Memcache, AMQP).

The value is ``{key: [expiry, entry]}``, the expiry in seconds since the epoch by the clock of
the host that posted it (hosts whose clocks disagree disagree on what is live by as much).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from taskd.backends.base import Entry
from taskd.errors import BackendError

Stored = dict[str, list[Any]]  # key -> [expiry_s, entry]


def pinned(
    raw: bytes | None,
    entries: Mapping[str, Entry | None],
    ttl_s: float,
    now_s: float,
    *,
    driver: str,
    board: str,
) -> tuple[bytes, float]:
    """The stored board ``raw`` (None: none yet) with ``entries`` pinned for ``ttl_s`` and
    what has expired pruned, so the value holds only what is live; and the seconds its
    longest-lived entry has left (0 when it is empty)."""
    kept = {key: item for key, item in loaded(raw, driver, board).items() if item[0] > now_s}
    for key, entry in entries.items():
        if entry is None:
            kept.pop(key, None)
        else:
            kept[key] = [now_s + ttl_s, entry]
    longest_s = max((item[0] - now_s for item in kept.values()), default=0.0)
    return orjson.dumps(kept), max(longest_s, 0.0)


def live(raw: bytes | None, now_s: float, *, driver: str, board: str) -> dict[str, Entry]:
    """The entries of the stored board ``raw`` that have not expired by ``now_s``."""
    return {key: item[1] for key, item in loaded(raw, driver, board).items() if item[0] > now_s}


def loaded(raw: bytes | None, driver: str, board: str) -> Stored:
    """The stored board ``raw`` decoded; BackendError if it is not one."""
    if raw is None:
        return {}
    try:
        stored = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BackendError(driver, f"stored board is not JSON: {exc}", f"board {board}") from exc
    if not isinstance(stored, dict) or not all(
        isinstance(item, list)
        and len(item) == 2
        and isinstance(item[0], int | float)
        and isinstance(item[1], dict)
        for item in stored.values()
    ):
        raise BackendError(driver, "stored board is not {key: [expiry, entry]}", f"board {board}")
    return stored
