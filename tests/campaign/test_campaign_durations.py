"""Durations as authors write them, and wall-clock times across clock changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from parley.campaign.durations import format_duration, next_local_time, parse_duration

MADRID = ZoneInfo("Europe/Madrid")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("90m", timedelta(minutes=90)),
        ("48h", timedelta(hours=48)),
        ("2d", timedelta(days=2)),
        ("1w", timedelta(weeks=1)),
        ("1d12h", timedelta(days=1, hours=12)),
        ("1w2d3h4m5s", timedelta(weeks=1, days=2, hours=3, minutes=4, seconds=5)),
        (" 1d 12h ", timedelta(days=1, hours=12)),
        ("2D", timedelta(days=2)),
    ],
)
def test_durations_combine_units(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "is not a duration"),
        ("2", "is not a duration"),
        (90, "write a number with a unit"),
        (True, "write a number with a unit"),
        (None, "write a number with a unit"),
        ("2x", "unknown unit 'x'"),
        ("1d1d", "names the unit 'd' twice"),
        ("0s", "not a positive duration"),
        ("-1d", "is not a duration"),
        ("1d!", "is not a duration"),
        ("99999w", "longer than 3650 days"),
        ("9" * 40 + "d", "is not a duration"),
    ],
)
def test_bad_durations_say_how_to_write_one(value: object, fragment: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration(value)
    assert fragment in str(caught.value)


def test_durations_format_back_to_what_parses() -> None:
    for text in ("90s", "1d12h", "2d", "3h4m5s"):
        assert parse_duration(format_duration(parse_duration(text))) == parse_duration(text)
    assert format_duration(timedelta(days=1, hours=12)) == "1d12h"


def _madrid(*args: int) -> datetime:
    return datetime(*args, tzinfo=MADRID)


def test_next_weekday_time_is_strictly_after_and_in_utc() -> None:
    tuesday_10 = _madrid(2025, 6, 3, 10, 0)  # a Tuesday, CEST (+02:00)
    assert next_local_time(_madrid(2025, 6, 2, 9, 0), "tue", "10:00", MADRID) == tuesday_10
    # exactly at the time is not "after": the next one is a week later
    following = next_local_time(tuesday_10, "tue", "10:00", MADRID)
    assert following == _madrid(2025, 6, 10, 10, 0)
    assert following.tzinfo is UTC
    assert following == datetime(2025, 6, 10, 8, 0, tzinfo=UTC)


def test_without_a_weekday_it_is_today_or_tomorrow() -> None:
    assert next_local_time(_madrid(2025, 6, 2, 9, 0), None, "10:00", MADRID) == _madrid(
        2025, 6, 2, 10, 0
    )
    assert next_local_time(_madrid(2025, 6, 2, 11, 0), None, "10:00", MADRID) == _madrid(
        2025, 6, 3, 10, 0
    )


def test_the_weekday_is_the_local_one_not_utcs() -> None:
    # 23:30 UTC on Monday is already Tuesday 01:30 in Madrid: Tuesday 10:00 is the same day.
    after = datetime(2025, 6, 2, 23, 30, tzinfo=UTC)
    assert next_local_time(after, "tue", "10:00", MADRID) == _madrid(2025, 6, 3, 10, 0)


def test_a_skipped_local_time_moves_to_the_end_of_the_jump() -> None:
    # 2025-03-30: Madrid's clocks jump from 02:00 to 03:00; 02:30 does not exist.
    at = next_local_time(_madrid(2025, 3, 29, 12, 0), "sun", "02:30", MADRID)
    assert at == datetime(2025, 3, 30, 1, 0, tzinfo=UTC)  # 03:00 CEST, the first valid instant


def test_a_repeated_local_time_counts_once_at_its_first_occurrence() -> None:
    # 2025-10-26: Madrid's clocks go back from 03:00 to 02:00; 02:30 happens twice.
    first = next_local_time(_madrid(2025, 10, 25, 12, 0), None, "02:30", MADRID)
    assert first == datetime(2025, 10, 26, 0, 30, tzinfo=UTC)  # 02:30 CEST
    # after the first occurrence, the second one (02:30 CET) is skipped: the next is a day later
    again = next_local_time(first, None, "02:30", MADRID)
    assert again == datetime(2025, 10, 27, 1, 30, tzinfo=UTC)


def test_a_naive_after_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        next_local_time(datetime(2025, 1, 1), None, "10:00", MADRID)
