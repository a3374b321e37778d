"""Sends whose broker confirms are still to come: a client's window of pipelined sends.

A send writes its message (and PENDING state) at once; where the drivers can split a write
from its confirmation (a Redis reply, a RabbitMQ publisher confirm), waiting for the confirm
is left to later, so a producer sending many tasks pays one round trip per window instead of
one per task. Nothing is given up silently: a send that finds the window full first takes
in the oldest confirms, ``flush`` takes in all, and a refused or unconfirmed send is raised
as ``SendError`` naming its tasks. Reading a state flushes first, as does closing the
client, and a wait for results takes the confirms in once it has waited a little, unless
its tasks finished by then, which shows their sends were delivered (``Client.wait_states``);
at interpreter exit the windows still open are flushed and any failure logged. A send whose
confirm says nothing of it took effect (``unsent``: a Redis that became a replica refused it)
is made again as its confirm is taken in, patiently (``client.send_patience``).
"""

from __future__ import annotations

import atexit
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from taskd import forking, logs
from taskd.errors import DriverError, SendError
from taskd.patience import unsent
from taskd.wire import Signature

log = logs.get_logger("taskd.client")

Confirm = Callable[[], None]  # returns once the send is confirmed, raises if it was not
Write = Callable[[], tuple[Confirm, Sequence[Signature]]]  # sends; its confirm, what it sent


def confirmed() -> None:
    """The completion of a write that was complete already (a send that waited for its own
    confirm, a backend write that could not be split)."""


class Window:
    """At most ``limit`` sends awaiting their confirms, oldest first; 0: none (every send
    is confirmed before it returns). A send that finds the window full first takes in its
    older half. ``patiently(call)`` makes ``call`` again while it raises an error that says
    nothing was sent, for as long as the sender's patience lasts (by default, it does not).
    Safe to share between threads."""

    def __init__(
        self, limit: int, patiently: Callable[[Callable[[], Any]], Any] = lambda call: call()
    ) -> None:
        self.limit = limit
        self._patiently = patiently
        self._waiting: deque[tuple[Confirm, Sequence[Signature], Write]] = deque()
        self._lock = threading.Lock()
        forking.forget_in_children(self)

    def send(self, write: Write) -> None:
        """Call ``write`` (which sends and returns its confirm and what it sent), once the
        window has room; SendError, and nothing written, when an earlier send failed."""
        with self._lock:
            if len(self._waiting) >= max(self.limit, 1):
                # The older half at once: their replies are in by now, and a send that took
                # in one confirm each time would pay a read before every write.
                self._take_in(len(self._waiting) - self.limit // 2)
            confirm, signatures = write()
            if self.limit == 0:
                confirm()
            else:
                self._waiting.append((confirm, signatures, write))
                _awaiting.add(self)

    def flush(self) -> None:
        """Wait for every confirm; SendError naming each task not confirmed."""
        with self._lock:
            self._take_in(len(self._waiting))

    def __len__(self) -> int:
        return len(self._waiting)

    def _take_in(self, count: int) -> None:
        """Confirm the ``count`` oldest sends, all of them even after a failure (their
        replies come in order), then raise for the ones that failed. A send refused before
        any of it took effect is made again, in its turn, within the patience; once that
        has run out, the rest fail at once. After a failure the rest of the window is taken
        in too: a lost connection loses them all, and one SendError names every send to
        make again, not one per later call."""
        failed: list[Signature] = []
        first_error: Exception | None = None
        patient = True
        while self._waiting and (count > 0 or first_error is not None):
            count -= 1
            confirm, signatures, write = self._waiting.popleft()
            if not self._waiting:
                _awaiting.discard(self)
            try:
                try:
                    confirm()
                except DriverError as exc:
                    if not (patient and unsent(exc)):
                        raise
                    try:
                        self._patiently(lambda write=write: _confirmed(write))
                    except Exception:
                        patient = False  # the patience ran out: the rest fail at once
                        raise
            except Exception as exc:
                failed.extend(signatures)
                first_error = first_error or exc
        if first_error is not None:
            raise SendError(failed, first_error) from first_error

    def forget_parents(self) -> None:
        """In a forked child, the parent's sends are the parent's to confirm."""
        self._lock = threading.Lock()
        self._waiting.clear()
        _awaiting.discard(self)


def _confirmed(write: Write) -> None:
    confirm, _ = write()
    confirm()


# Windows with sends awaiting confirms, held here so that a client dropped without closing
# is still flushed at exit.
_awaiting: set[Window] = set()


@atexit.register
def _flush_at_exit() -> None:
    """A program that ends without closing its client still has its sends confirmed, or
    hears which were not."""
    for window in list(_awaiting):
        if not len(window):
            continue
        try:
            window.flush()
        except SendError as exc:
            log.error("sends_unconfirmed_at_exit", task_ids=exc.task_ids, error=str(exc.cause))
        except Exception as exc:  # the drivers may be half torn down by now
            log.error("sends_unconfirmed_at_exit", error=f"{type(exc).__name__}: {exc}")
