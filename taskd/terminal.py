"""What taskctl prints and taskd logs to a terminal is shown, never obeyed.

Message bodies, results, errors and board entries come from producers and tasks; a control
character among them (an escape sequence: colours, a cleared screen, a window title, the
clipboard on some terminals; a carriage return that writes over a line) would act on the
operator's terminal. On a terminal each is written as its escape (``\\x1b``): taskctl's
streams (``shown_on_terminals``) and the daemon's readable log lines (``taskd.logs``). In a
pipe or a file the text goes as it is (JSON escapes what it must itself).
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

# C0 but tab and newline, DEL, and C1 (8-bit CSI, OSC... where a terminal takes them).
_ESCAPED = {
    code: f"\\x{code:02x}"
    for code in (*range(0x20), 0x7F, *range(0x80, 0xA0))
    if code not in (0x09, 0x0A)
}


def shown(text: str) -> str:
    """``text`` with its control characters written as escapes (``\\x1b``)."""
    return text.translate(_ESCAPED)


class Shown:
    """A text stream that writes control characters as escapes."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(shown(text))

    def __getattr__(self, name: str) -> Any:  # flush, isatty, encoding...
        return getattr(self._stream, name)


def unshown(stream: TextIO) -> TextIO:
    """The stream under a ``Shown`` one: for what taskctl draws itself (a progress bar)."""
    return stream._stream if isinstance(stream, Shown) else stream


def shown_on_terminals() -> None:
    """Wrap stdout and stderr where they are terminals."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, Shown) and stream.isatty():
            setattr(sys, name, Shown(stream))
