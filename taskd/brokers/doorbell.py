"""A doorbell for the embedded broker: a FIFO beside the database file.

A publisher writes one byte to it after each commit; a consumer waiting in ``fetch`` sleeps in
``select`` on it, so it wakes as soon as a message is there instead of at its next look at the
file (every 5 ms, backing off to 50 ms while the queue stays empty). One byte wakes one
waiting consumer. Best effort only: with no consumer waiting, a full pipe, or a FIFO the
publisher may not write to, nothing is rung, and consumers still look at the file on their
own.
"""

from __future__ import annotations

import contextlib
import os
import select
import stat
from pathlib import Path


class Doorbell:
    def __init__(self, database: Path) -> None:
        self.path = Path(f"{database}.doorbell")
        self._reader: int | None = None  # the consumer's end, opened on its first wait
        self._writer: int | None = None  # the publisher's end, kept while a consumer has one

    def ring(self) -> None:
        """Wake one waiting consumer, if any."""
        for _ in range(2):  # a writer end left by consumers that all went is opened again
            if self._writer is None:
                try:
                    self._writer = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                except OSError:  # no FIFO yet, no consumer has it open (ENXIO), or not ours
                    return
            try:
                os.write(self._writer, b"\x01")
                return
            except BlockingIOError:  # full: consumers have plenty of rings to wake on
                return
            except OSError:  # EPIPE: every consumer's end is closed
                self._close_writer()

    def wait(self, timeout_s: float) -> None:
        """Sleep until rung or ``timeout_s`` passed."""
        reader = self._open_reader()
        if reader is None:
            select.select([], [], [], timeout_s)
            return
        ready, _, _ = select.select([reader], [], [], timeout_s)
        if ready:
            with contextlib.suppress(BlockingIOError):
                os.read(reader, 1)  # this ring is ours; others wake other consumers

    def close(self) -> None:
        self._close_writer()
        if self._reader is not None:
            os.close(self._reader)
            self._reader = None

    def _open_reader(self) -> int | None:
        if self._reader is None:
            with contextlib.suppress(FileExistsError, OSError):
                os.mkfifo(self.path, 0o666)  # umask applies, as to the database file
            try:
                if not stat.S_ISFIFO(os.stat(self.path).st_mode):
                    return None
                # Read and write: a FIFO with no writer would always look readable (EOF).
                self._reader = os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                return None
        return self._reader

    def _close_writer(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(OSError):
                os.close(self._writer)
            self._writer = None
