"""The AMQP backend's boards: one record per board, posted to by one writer at a time.

A board is a record like the others (``<exchange>.board.<name>``, a queue holding its newest
message: see ``taskd.backends.amqp``) whose message is the whole board as JSON
(``taskd.backends.board_json``), so a read is one basic.get and nack. A post reads the board,
pins its entries, prunes what has expired and writes it back; two writers doing that at once
would lose one's entries, so writers take turns:

- ``<record>.lock`` is an exclusive queue: RabbitMQ lets one connection at a time declare it
  (others get RESOURCE_LOCKED and try again after a short random pause) and deletes it when
  that connection closes, so a writer that dies releases it. A writer that lost its
  connection while holding it writes nothing: another may have written since.
- Writers merge from ``<record>.copy``, the same JSON in a record only lock holders read, so
  they never wait for (or overwrite) a message a reader holds. Where there is no copy (it
  expired, or a writer died between declaring and writing it), they read the board itself.

Board records have no ``x-message-ttl`` (each entry has its own expiry); ``x-expires``
removes a board nobody posted to or read for ``results_expire_in``, as any record (an entry
pinned for longer goes with it). Expiry is by the writer's clock.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from taskd.amqplink import RESOURCE_LOCKED
from taskd.backends import board_json
from taskd.backends.amqp_records import RecordSession, Seen, Write
from taskd.backends.base import Entry
from taskd.errors import BackendUnavailable, DriverError

if TYPE_CHECKING:
    from taskd.backends.amqp import AMQPBackend

LOCK_WAIT_S = 10.0  # longest wait for the lock before a post gives up
LOCK_PAUSES_S = (0.002, 0.02)  # a random pause between tries: a writer holds it ~3 ms


def post(
    backend: AMQPBackend, board: str, entries: Mapping[str, Entry | None], ttl_s: float
) -> None:
    """``ResultBackend.post``: lock, merge from the copy, write copy and board, unlock."""
    record, about = backend._name("board", board), f"board {board}"
    with locked(backend, record + ".lock", about) as session:
        _merge(backend, session, record, entries, ttl_s, board)


@contextlib.contextmanager
def locked(backend: AMQPBackend, lock: str, about: str) -> Iterator[RecordSession]:
    """Hold the exclusive queue ``lock``: one connection, and one thread of this process, at
    a time. Yields the session holding it; a write after a reconnect must not trust it."""
    with backend._posting:  # the lock belongs to the connection, which this process shares
        session = _lock(backend, lock, about)
        try:
            yield session
        finally:
            _unlock(backend, session, lock, about)


def read(backend: AMQPBackend, board: str) -> dict[str, Entry]:
    """``ResultBackend.read_board``: the board's message ({} if there is none, or a reader
    held it past HELD_WAIT_S), its expired entries left out."""
    record = backend._name("board", board)
    raw = backend._read([record], f"board {board}")[record]
    found = raw if isinstance(raw, bytes) else None
    return board_json.live(found, time.time(), driver=backend.driver, board=board)


def _lock(backend: AMQPBackend, lock: str, about: str) -> RecordSession:
    """Declare the exclusive ``lock``, waiting for whoever holds it; the session holding it."""
    import pika.exceptions

    def declare(session: RecordSession) -> RecordSession | None:
        try:
            session.writing().queue_declare(lock, exclusive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != RESOURCE_LOCKED:
                raise
            return None
        return session

    deadline = time.monotonic() + LOCK_WAIT_S
    while (session := backend._call(declare, about)) is None:
        if time.monotonic() > deadline:
            raise BackendUnavailable(backend.driver, "another writer holds the lock", about)
        time.sleep(random.uniform(*LOCK_PAUSES_S))
    return session


def _merge(
    backend: AMQPBackend,
    session: RecordSession,
    record: str,
    entries: Mapping[str, Entry | None],
    ttl_s: float,
    board: str,
) -> None:
    about, copy = f"board {board}", record + ".copy"
    raw = backend._read([copy], about)[copy]
    copied = isinstance(raw, bytes)
    if not copied:
        raw = backend._read([record], about)[record]
        if raw is Seen.HIDDEN:  # held by a reader for long: writing now could lose entries
            raise BackendUnavailable(backend.driver, "the board cannot be read", about)
    stored = raw if isinstance(raw, bytes) else None
    body, _longest_s = board_json.pinned(
        stored, entries, ttl_s, time.time(), driver=backend.driver, board=board
    )
    arguments = backend._board_arguments
    # The copy first: a writer dying in between leaves the board a post behind the copy,
    # which the next post rewrites. The board is declared each time to renew its x-expires.
    writes = [Write(copy, body, arguments, not copied), Write(record, body, arguments, True)]

    def write(current: RecordSession) -> None:
        if current is not session:  # reconnected: the lock went with the old connection
            raise BackendUnavailable(backend.driver, "connection lost holding the lock", about)
        backend._put_all(current, writes)

    backend._call(write, about)


def _unlock(backend: AMQPBackend, session: RecordSession, lock: str, about: str) -> None:
    def delete(current: RecordSession) -> None:
        if current is session:  # else it went with the lost connection
            current.writing().queue_delete(lock)

    with contextlib.suppress(DriverError):  # the connection is gone: so is the lock
        backend._call(delete, about)
