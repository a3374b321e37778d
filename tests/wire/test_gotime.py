"""GoTime: RFC 3339 with nanoseconds, read and written the way Go's time.Time does."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone

import pytest

from taskd.errors import DecodeError
from taskd.wire.gotime import ZERO_TIME, GoTime

# 2025-06-01T12:00:05Z
_BASE_S = 1748779205


@pytest.mark.parametrize(
    ("text", "nanos"),
    [
        ("2025-06-01T12:00:05Z", 0),
        ("2025-06-01T12:00:05.1Z", 100_000_000),
        ("2025-06-01T12:00:05.12Z", 120_000_000),
        ("2025-06-01T12:00:05.123Z", 123_000_000),
        ("2025-06-01T12:00:05.1234Z", 123_400_000),
        ("2025-06-01T12:00:05.12345Z", 123_450_000),
        ("2025-06-01T12:00:05.123456Z", 123_456_000),
        ("2025-06-01T12:00:05.1234567Z", 123_456_700),
        ("2025-06-01T12:00:05.12345678Z", 123_456_780),
        ("2025-06-01T12:00:05.123456789Z", 123_456_789),
        ("2025-06-01T12:00:05.000000001Z", 1),
        ("2025-06-01T12:00:05.05Z", 50_000_000),
    ],
)
def test_parse_and_format_utc_with_0_to_9_fraction_digits(text: str, nanos: int) -> None:
    moment = GoTime.parse(text)
    assert moment.unix_ns == _BASE_S * 1_000_000_000 + nanos
    assert moment.offset_s == 0
    assert moment.format() == text
    assert str(moment) == text


@pytest.mark.parametrize(
    ("text", "offset_s"),
    [
        ("2025-06-01T14:00:05+02:00", 7200),
        ("2025-06-01T14:00:05.5+02:00", 7200),
        ("2025-06-01T04:30:05.123456789-07:30", -(7 * 3600 + 30 * 60)),
        ("2025-06-01T17:45:05.000001+05:45", 5 * 3600 + 45 * 60),
        ("2025-06-02T01:00:05+13:00", 13 * 3600),
        ("2025-06-01T00:00:05-12:00", -12 * 3600),
    ],
)
def test_offsets_are_kept_and_written_back(text: str, offset_s: int) -> None:
    moment = GoTime.parse(text)
    assert moment.offset_s == offset_s
    # Every one of these is the same instant (plus its fraction) as 12:00:05 UTC.
    assert moment.unix_ns // 1_000_000_000 == _BASE_S
    assert moment.format() == text


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("2025-06-01T12:00:05.120000000Z", "2025-06-01T12:00:05.12Z"),
        ("2025-06-01T12:00:05.000000000Z", "2025-06-01T12:00:05Z"),
        ("2025-06-01T12:00:05.0Z", "2025-06-01T12:00:05Z"),
        ("2025-06-01T12:00:05.100+02:00", "2025-06-01T12:00:05.1+02:00"),
        ("2025-06-01T12:00:05+00:00", "2025-06-01T12:00:05Z"),  # Go writes Z for offset 0
        ("2025-06-01T12:00:05-00:00", "2025-06-01T12:00:05Z"),
    ],
)
def test_format_is_go_rfc3339nano(text: str, canonical: str) -> None:
    assert GoTime.parse(text).format() == canonical


def test_same_instant_in_different_zones_compares_by_offset_too() -> None:
    utc = GoTime.parse("2025-06-01T12:00:05Z")
    paris = GoTime.parse("2025-06-01T14:00:05+02:00")
    assert utc.unix_ns == paris.unix_ns
    assert utc != paris  # the zone is part of the value: it is written back as it came
    assert utc.format() != paris.format()


def test_before_the_epoch() -> None:
    moment = GoTime.parse("1969-12-31T23:59:59.5Z")
    assert moment.unix_ns == -500_000_000
    assert moment.format() == "1969-12-31T23:59:59.5Z"
    assert GoTime(-1).format() == "1969-12-31T23:59:59.999999999Z"


def test_epoch_and_unix() -> None:
    assert GoTime(0).format() == "1970-01-01T00:00:00Z"
    assert GoTime.parse("1970-01-01T02:00:00+02:00") == GoTime(0, 7200)
    assert GoTime.parse("1970-01-01T00:00:01.000000001Z").unix_ns == 1_000_000_001
    assert GoTime.from_unix(1.5) == GoTime(1_500_000_000)
    assert GoTime(2_250_000_000).to_unix() == 2.25


def test_leap_day_and_year_boundaries() -> None:
    assert GoTime.parse("2024-02-29T23:59:59.999999999Z").format() == (
        "2024-02-29T23:59:59.999999999Z"
    )
    new_year = GoTime.parse("2025-01-01T00:30:00+01:00")
    assert GoTime(new_year.unix_ns).format() == "2024-12-31T23:30:00Z"


def test_zero_time() -> None:
    assert ZERO_TIME.format() == "0001-01-01T00:00:00Z"
    assert ZERO_TIME.is_zero
    assert GoTime.parse("0001-01-01T00:00:00Z") == ZERO_TIME
    assert not GoTime(0).is_zero
    assert ZERO_TIME.unix_ns == -62135596800 * 1_000_000_000


def test_ordering_follows_the_instant() -> None:
    earlier = GoTime.parse("2025-06-01T12:00:05.1Z")
    later = GoTime.parse("2025-06-01T12:00:05.100000001Z")
    assert earlier < later
    assert max(later, earlier) is later


def test_now_is_the_current_time_in_utc() -> None:
    before = time.time_ns()
    now = GoTime.now()
    after = time.time_ns()
    assert before <= now.unix_ns <= after
    assert now.offset_s == 0
    assert now.format().endswith("Z")


def test_from_datetime_utc_with_microseconds() -> None:
    moment = GoTime.from_datetime(datetime(2025, 6, 1, 12, 0, 5, 123456, tzinfo=UTC))
    assert moment == GoTime(_BASE_S * 1_000_000_000 + 123_456_000, 0)
    assert moment.format() == "2025-06-01T12:00:05.123456Z"


def test_from_datetime_keeps_the_offset() -> None:
    zone = timezone(timedelta(hours=-3, minutes=-30))
    moment = GoTime.from_datetime(datetime(2025, 6, 1, 8, 30, 5, tzinfo=zone))
    assert moment.offset_s == -(3 * 3600 + 30 * 60)
    assert moment.unix_ns == _BASE_S * 1_000_000_000
    assert moment.format() == "2025-06-01T08:30:05-03:30"


def test_from_datetime_rejects_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="naive"):
        GoTime.from_datetime(datetime(2025, 6, 1, 12, 0, 5))


def test_to_datetime_drops_sub_microsecond_digits_and_keeps_the_zone() -> None:
    moment = GoTime.parse("2025-06-01T14:00:05.123456789+02:00")
    converted = moment.to_datetime()
    assert converted == datetime(2025, 6, 1, 12, 0, 5, 123456, tzinfo=UTC)
    assert converted.utcoffset() == timedelta(hours=2)
    assert (converted.hour, converted.microsecond) == (14, 123456)
    assert GoTime.parse("2025-06-01T12:00:05Z").to_datetime().tzinfo is UTC


def test_to_datetime_truncates_towards_the_past_before_the_epoch() -> None:
    assert GoTime(-1).to_datetime() == datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


@pytest.mark.parametrize(
    "text",
    [
        "2025-06-01T12:00:05.123456Z",
        "2025-06-01T14:00:05.5+02:00",
        "1999-12-31T23:59:59-08:00",
        "0001-01-01T00:00:00Z",
    ],
)
def test_datetime_round_trip_at_microsecond_precision(text: str) -> None:
    moment = GoTime.parse(text)
    assert GoTime.from_datetime(moment.to_datetime()) == moment


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2025-06-01",
        "2025-06-01T12:00:05",  # no zone
        "2025-06-01 12:00:05Z",  # space instead of T
        "2025-06-01T12:00Z",
        "2025-6-01T12:00:05Z",
        "2025-06-01T12:00:05.Z",  # separator without digits
        "2025-06-01T12:00:05,5Z",  # comma fraction
        "2025-06-01T12:00:05+0200",
        "2025-06-01T12:00:05+02",
        "2025-02-30T00:00:00Z",
        "2025-13-01T00:00:00Z",
        "2025-06-01T24:00:00Z",
        "2025-06-01T12:60:00Z",
        "2025-06-01T12:00:60Z",  # Go rejects leap seconds
        " 2025-06-01T12:00:05Z",
        "2025-06-01T12:00:05Z ",
        "1748779205",
    ],
)
def test_parse_rejects_what_go_rejects(text: str) -> None:
    with pytest.raises(DecodeError, match="time"):
        GoTime.parse(text)


@pytest.mark.parametrize(
    "text",
    [
        "2025-06-01t12:00:05Z",
        "2025-06-01T12:00:05z",
        "2025-06-01T12:00:05+24:00",
        "2025-06-01T12:00:05+05:60",
    ],
)
def test_parse_rejects_what_go_rejects_strict_cases(text: str) -> None:
    with pytest.raises(DecodeError):
        GoTime.parse(text)


def test_parse_truncates_more_than_nine_fraction_digits_like_go() -> None:
    moment = GoTime.parse("2025-06-01T12:00:05.1234567899Z")
    assert moment.format() == "2025-06-01T12:00:05.123456789Z"
