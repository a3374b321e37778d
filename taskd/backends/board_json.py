"""Boards' entries as JSON, read so that none that is not taskd's stops a reader: a worker
reads the revoked board for its tasks and the workers board for its peers, and a value there
from another program or version (not JSON, or no object) is left out and logged once
(``board_entry_unreadable``), never raised.

``entries`` reads the drivers that keep an entry per key (Redis, SQLite, MongoDB); ``live``
and ``pinned`` those that keep a board whole as one JSON value (Memcache, AMQP):
``{key: [expiry, entry]}``, the expiry in seconds since the epoch by the clock of the host that
posted it (hosts whose clocks disagree disagree on what is live by as much). A whole board that
cannot be read is read as empty, and the next post writes it anew.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from taskd import logs
from taskd.backends.base import Entry

log = logs.get_logger("taskd.backends")

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
    """The stored board ``raw`` decoded, what is not ``[expiry, entry]`` left out."""
    if raw is None:
        return {}
    stored = _json(raw)
    if not isinstance(stored, dict):
        _unreadable(driver, board, "(the whole board)")
        return {}
    kept: Stored = {}
    for key, item in stored.items():
        if (
            isinstance(item, list)
            and len(item) == 2
            and isinstance(item[0], int | float)
            and isinstance(item[1], dict)
        ):
            kept[key] = item
        else:
            _unreadable(driver, board, key)
    return kept


def entries(stored: Iterable[tuple[str, Any]], *, driver: str, board: str) -> dict[str, Entry]:
    """The entries stored one per key (``(key, JSON)``), those that are no JSON object left
    out."""
    kept: dict[str, Entry] = {}
    for key, raw in stored:
        entry = _json(raw)
        if isinstance(entry, dict):
            kept[key] = entry
        else:
            _unreadable(driver, board, key)
    return kept


def _json(raw: Any) -> Any:
    try:
        return orjson.loads(raw)
    except (orjson.JSONDecodeError, TypeError):
        return None


_TOLD: set[tuple[str, str]] = set()  # (board, key) said to be unreadable by this process


def _unreadable(driver: str, board: str, key: str) -> None:
    if (board, key) not in _TOLD:
        _TOLD.add((board, key))
        log.warning("board_entry_unreadable", driver=driver, board=board, key=key)
