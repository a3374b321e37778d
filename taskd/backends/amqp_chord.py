"""Chords on the AMQP result backend: one token per group, taken by the member that fires it.

``init_group`` puts one token in ``<exchange>.chord.<group id>``; a claimant takes it unacked,
records itself in ``<exchange>.chord.<group id>.claimant``, flips ChordTriggered and then
acks. A claimant that dies before the ack gives the token back (RabbitMQ requeues it), and
whoever takes it next finds any claim already recorded, so one claimant wins. Once the chord
fired, the claimant record says so (``SPENT_CLAIM``), and no claim succeeds any more.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from taskd.backends.amqp_records import Held, RecordSession, Seen, Write, get_unacked
from taskd.backends.base import SPENT_CLAIM, claim_covers
from taskd.errors import BackendError, BackendUnavailable, DriverError

if TYPE_CHECKING:
    from taskd.backends.amqp import AMQPBackend

TOKEN = b"chord"  # the body of a chord's token; only its presence matters
# A claimant holding the token writes its claim within a few round trips.
CLAIM_PAUSES_S = (0.01, 0.03, 0.1, 0.3, 0.6)


def token_queue(backend: AMQPBackend, group_id: str) -> str:
    return backend._name("chord", group_id)


def claim_queue(backend: AMQPBackend, group_id: str) -> str:
    return token_queue(backend, group_id) + ".claimant"


def gathered_queue(backend: AMQPBackend, group_id: str) -> str:
    """Who claimed a chord gathered machinery's way, and what it gathered (amqp_machinery)."""
    return token_queue(backend, group_id) + ".gathered"


def members_queue(backend: AMQPBackend, group_id: str) -> str:
    """A message for each member counted, which nobody reads: its length is the count."""
    return token_queue(backend, group_id) + ".members"


def count_member(backend: AMQPBackend, group_id: str, task_id: str) -> int | None:
    """``ResultBackend.count_chord_member``: the length of the group's members queue once
    this member's message is confirmed in it (a member delivered again counts again). None
    without that queue: a group ``init_group`` did not store (a machinery producer's, whose
    members gather instead, ``amqp_machinery``), or one past its lifetime."""
    import pika.exceptions

    queue = members_queue(backend, group_id)

    def count(session: RecordSession) -> int | None:
        channel = session.writing()
        try:
            channel.basic_publish("", queue, task_id.encode(), backend._properties, mandatory=True)
        except pika.exceptions.UnroutableError:
            return None
        return int(channel.queue_declare(queue, passive=True).method.message_count)

    return backend._call(count, group_id)


def place_token(backend: AMQPBackend, session: RecordSession, group_id: str) -> None:
    """The group's one token (a group sent again still has one), and its members queue."""
    backend._declare(session, members_queue(backend, group_id), backend._expiring_arguments)
    queue = token_queue(backend, group_id)
    backend._declare(session, queue, backend._token_arguments)
    session.writing().queue_purge(queue)
    backend._put(session, Write(queue, TOKEN, backend._token_arguments, True))


def claim(backend: AMQPBackend, group_id: str, claimant: str) -> bool:
    """``ResultBackend.claim_chord``."""
    owner = _owner(backend, group_id)
    if owner is not None and not claim_covers(owner, claimant):
        return False
    # Unclaimed, or claimed by this claimant (or a run it covers): if that died before its
    # ack, the token is back, and taking it finishes that claim (ChordTriggered, the ack).
    queue = token_queue(backend, group_id)
    held = backend._call(lambda session: _take(session, queue), group_id)
    if isinstance(held, Held):
        try:
            return _claim_holding(backend, held, group_id, claimant)
        finally:
            _give_back(backend, held, group_id)
    if owner is not None:
        return True
    # No token: another claimant holds it (and is writing its claim) or has spent it.
    owner = _owner(backend, group_id, CLAIM_PAUSES_S)
    if owner is not None:
        return claim_covers(owner, claimant)
    group = backend.get_group(group_id)
    if group is None:
        raise BackendError(backend.driver, "group metadata is missing or expired", group_id)
    if held is Seen.NOTHING and not group.chord_triggered:
        raise BackendError(backend.driver, "the chord's token is missing or expired", group_id)
    # Still held: its holder records its claim, or dies and the token goes back for a
    # later claim (the dead claimant's task is delivered again and claims again).
    return False


def spend(backend: AMQPBackend, group_id: str) -> None:
    """``ResultBackend.chord_fired``."""
    spent = Write(
        claim_queue(backend, group_id), SPENT_CLAIM.encode(), backend._record_arguments, True
    )
    backend._call(lambda session: backend._put(session, spent), group_id)


def _owner(
    backend: AMQPBackend, group_id: str, pauses_s: Sequence[float] = (), *, sure: bool = False
) -> str | None:
    """The recorded claimant of a group's chord, looking again after each pause while
    there is none (a claimant holding the token may be about to record itself). With
    ``sure``, a record that exists but could not be seen is BackendUnavailable, not
    "no claim": a token holder must never overwrite an earlier claim."""
    queue = claim_queue(backend, group_id)
    for pause_s in (*pauses_s, None):
        raw = backend._read([queue], group_id)[queue]
        if isinstance(raw, bytes):
            return raw.decode()
        if sure and raw is Seen.HIDDEN:
            raise BackendUnavailable(backend.driver, "the chord's claim cannot be read", group_id)
        if pause_s is not None:
            time.sleep(pause_s)
    return None


def _take(session: RecordSession, queue: str) -> Held | Seen:
    channel = session.connection.channel()
    got = get_unacked(channel, queue)
    if got is Seen.HIDDEN:
        channel.close()
    if isinstance(got, Seen):
        return got
    return Held(session, channel, got[0])


def _claim_holding(backend: AMQPBackend, held: Held, group_id: str, claimant: str) -> bool:
    """With the token: keep a claim recorded by an earlier holder that died before its
    ack, else record this one; flip ChordTriggered; then spend the token."""
    owner = _owner(backend, group_id, sure=True)
    group = backend.get_group(group_id)
    if group is None:
        raise BackendError(backend.driver, "group metadata is missing or expired", group_id)
    arguments = backend._record_arguments
    writes: list[Write] = []
    if owner is None:
        owner = claimant
        writes.append(Write(claim_queue(backend, group_id), claimant.encode(), arguments, True))
    if not group.chord_triggered:  # the group was just read: its queue is there
        flipped = replace(group, chord_triggered=True).encode()
        writes.append(Write(backend._name("group", group_id), flipped, arguments, False))

    def spend_token(session: RecordSession) -> None:
        if session is not held.session:  # reconnected: RabbitMQ took the token back
            raise BackendUnavailable(backend.driver, "connection lost holding the token", group_id)
        backend._put_all(session, writes)  # confirmed before the token is spent
        held.channel.basic_ack(held.tag)

    backend._call(spend_token, group_id)
    return claim_covers(owner, claimant)


def _give_back(backend: AMQPBackend, held: Held, group_id: str) -> None:
    """Close the token's channel: after an ack, its close-ok says RabbitMQ has the ack;
    without one, the token goes back to its queue."""

    def close(_session: RecordSession) -> None:
        if held.channel.is_open:
            held.channel.close()

    with contextlib.suppress(DriverError):  # the connection is gone: so is the hold
        backend._call(close, group_id)
