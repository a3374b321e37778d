"""Go's ``time.Time`` on the wire: RFC 3339 with up to nine fractional digits.

Python's ``datetime`` stops at microseconds, and a TaskState's ``CreatedAt`` must survive a
round trip through taskd byte for byte, so times are kept as Unix nanoseconds plus the zone
offset they were written with.
"""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

from taskd.errors import DecodeError
from taskd.wire.records import builder

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NS_PER_S = 1_000_000_000
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:(Z)|([+-])([01]\d|2[0-3]):([0-5]\d))"
)


@dataclass(frozen=True, slots=True, order=True)
class GoTime:
    """An instant with nanosecond precision and the UTC offset it is shown in."""

    unix_ns: int
    offset_s: int = 0

    @classmethod
    def now(cls) -> GoTime:
        return cls(time.time_ns())

    @classmethod
    def after(cls, countdown_s: float) -> GoTime:
        """``countdown_s`` seconds from now; ValueError for anything but a number of seconds
        from 0 to the latest ETA (a countdown given to ``send`` or to ``Retry``)."""
        if isinstance(countdown_s, bool) or not isinstance(countdown_s, int | float):
            raise ValueError(
                f"countdown must be a number of seconds, got {type(countdown_s).__name__}"
            )
        now_ns = time.time_ns()
        if not 0 <= countdown_s <= (LATEST_ETA.unix_ns - now_ns) / _NS_PER_S:
            raise ValueError(
                f"countdown {float(countdown_s):g} s is out of range"
                f" (0 to the latest ETA, {LATEST_ETA})"
            )
        return cls(now_ns + round(countdown_s * _NS_PER_S))

    @classmethod
    def from_unix(cls, seconds: float) -> GoTime:
        return cls(round(seconds * _NS_PER_S))

    @classmethod
    def from_datetime(cls, moment: datetime) -> GoTime:
        if moment.tzinfo is None:
            raise ValueError("a naive datetime is ambiguous; give it a timezone")
        offset = moment.utcoffset() or timedelta(0)
        delta = moment - _EPOCH
        unix_ns = (delta.days * 86_400 + delta.seconds) * _NS_PER_S + delta.microseconds * 1000
        return cls(unix_ns, int(offset.total_seconds()))

    @classmethod
    def parse(cls, text: str) -> GoTime:
        match = _RFC3339.fullmatch(text)
        if match is None:
            raise DecodeError(f"time {text!r} is not RFC 3339")
        fraction, zulu, sign, off_h, off_m = match.group(7, 8, 9, 10, 11)
        offset_s = 0 if zulu else (int(off_h) * 3600 + int(off_m) * 60) * (1 if sign == "+" else -1)
        try:
            seconds = _local_seconds(text[:19]) - offset_s
        except ValueError as exc:
            raise DecodeError(f"time {text!r} is not a valid date: {exc}") from None
        nanos = int((fraction or "")[:9].ljust(9, "0"))  # Go keeps nanoseconds, drops the rest
        return _new_time(seconds * _NS_PER_S + nanos, offset_s)

    def format(self) -> str:
        """RFC 3339 as Go's ``time.RFC3339Nano`` (trailing zero digits trimmed)."""
        return _format(self.unix_ns, self.offset_s)

    def to_datetime(self) -> datetime:
        """An aware datetime (sub-microsecond digits dropped)."""
        zone = UTC if self.offset_s == 0 else timezone(timedelta(seconds=self.offset_s))
        return (_EPOCH + timedelta(microseconds=self.unix_ns // 1000)).astimezone(zone)

    def to_unix(self) -> float:
        return self.unix_ns / _NS_PER_S

    @property
    def is_zero(self) -> bool:
        return self == ZERO_TIME

    def __str__(self) -> str:
        return self.format()


def _format(unix_ns: int, offset_s: int) -> str:
    seconds, nanos = divmod(unix_ns + offset_s * _NS_PER_S, _NS_PER_S)
    text = _date_and_time(seconds)
    if nanos:
        text += "." + f"{nanos:09d}".rstrip("0")
    return text + _zone(offset_s)


# Times read close together share their date and time of day (the states of one second, a
# client waiting for them): only the fraction and the zone are read each time.
@functools.lru_cache(maxsize=256)
def _local_seconds(date_and_time: str) -> int:
    """Seconds from the Unix epoch to ``YYYY-MM-DDTHH:MM:SS`` read as UTC; ValueError for a
    date that does not exist."""
    t = date_and_time
    local = datetime(
        int(t[:4]), int(t[5:7]), int(t[8:10]), int(t[11:13]), int(t[14:16]), int(t[17:])
    )
    delta = local - _EPOCH.replace(tzinfo=None)
    return delta.days * 86_400 + delta.seconds


# Every send and every batch a worker takes is stamped with the time: the times of one second
# share their date and time of day, so only the fraction is formatted each time (0.6 µs, not 4).
@functools.lru_cache(maxsize=256)
def _date_and_time(local_seconds: int) -> str:
    local = _EPOCH.replace(tzinfo=None) + timedelta(seconds=local_seconds)
    return (
        f"{local.year:04d}-{local.month:02d}-{local.day:02d}"
        f"T{local.hour:02d}:{local.minute:02d}:{local.second:02d}"
    )


@functools.lru_cache(maxsize=64)
def _zone(offset_s: int) -> str:
    if offset_s == 0:
        return "Z"
    sign = "+" if offset_s > 0 else "-"
    hours, minutes = divmod(abs(offset_s) // 60, 60)
    return f"{sign}{hours:02d}:{minutes:02d}"


_new_time = builder(GoTime)  # (unix_ns, offset_s)

# Go's zero time.Time, written for a CreatedAt nobody set.
ZERO_TIME = GoTime.from_datetime(datetime(1, 1, 1, tzinfo=UTC))


# The latest instant Go's UnixNano can hold, and so the latest ETA: machinery's Redis scores and
# every broker's delay are int64 nanoseconds (2262-04-11T23:47:16.854775807Z).
LATEST_ETA = GoTime(2**63 - 1)
