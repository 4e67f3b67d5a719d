"""Lengths of time and wall-clock times as campaign authors write them: ``2d``, ``1d12h``,
``{weekday: tue, time: "10:00"}``.

A duration is elapsed time, not calendar time: ``1d`` is 24 hours even on the night the clocks
change. Authors who mean "at 10:00 local time" write ``until:`` instead, which is read on the
contact's wall clock by ``next_local_time``.

Instants are computed and returned in UTC: Python compares and subtracts two datetimes that share
a ``ZoneInfo`` by their wall clocks, which is wrong inside a repeated hour.
"""

from __future__ import annotations

import datetime as dt
import re
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BeforeValidator

UNITS: Final = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
MAX_DURATION: Final = timedelta(days=3650)
"""About ten years: longer is a typo, and adding it to a date must never overflow."""

WEEKDAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
"""Weekday keys, Monday first (``date.weekday()`` order), as in working hours."""

_FULL_WEEKDAYS: Final = (
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
)
_PART = re.compile(r"\s*(\d{1,12})\s*([a-zA-Z]+)")
_CLOCK = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")
_EXAMPLE: Final = "e.g. '90s', '15m', '48h', '2d', '1w' or '1d12h'"


def parse_duration(text: object) -> timedelta:
    """``"1d12h"`` -> 36 hours. Units s, m, h, d, w, each at most once; the total is positive.

    Raises ``ValueError`` with a message fit for an author (validation adds the node id).
    """
    if isinstance(text, timedelta):
        return _checked(text, str(text))
    if isinstance(text, bool) or not isinstance(text, str):
        raise ValueError(f"{text!r} is not a duration: write a number with a unit, {_EXAMPLE}")
    seconds, seen, position = 0, set[str](), 0
    for match in _PART.finditer(text):
        if match.start() != position:
            break
        amount, unit = int(match.group(1)), match.group(2).lower()
        if unit not in UNITS:
            raise ValueError(f"{text!r}: unknown unit {unit!r}; use s, m, h, d or w ({_EXAMPLE})")
        if unit in seen:
            raise ValueError(f"{text!r} names the unit {unit!r} twice; write each unit once")
        seen.add(unit)
        seconds += amount * UNITS[unit]
        position = match.end()
    if not seen or text[position:].strip():
        raise ValueError(f"{text!r} is not a duration: {_EXAMPLE}")
    return _checked(timedelta(seconds=min(seconds, MAX_DURATION.total_seconds() + 1)), text)


def _checked(duration: timedelta, written: str) -> timedelta:
    if duration <= timedelta(0):
        raise ValueError(f"{written!r} is not a positive duration: {_EXAMPLE}")
    if duration > MAX_DURATION:
        raise ValueError(f"{written!r} is longer than {MAX_DURATION.days} days")
    return duration


def format_duration(duration: timedelta) -> str:
    """The shortest text ``parse_duration`` reads back as ``duration``: 36 hours -> ``"1d12h"``."""
    remaining = int(duration.total_seconds())
    parts = []
    for unit, size in UNITS.items():
        if unit != "w" and remaining >= size:
            parts.append(f"{remaining // size}{unit}")
            remaining %= size
    return "".join(parts) or "0s"


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
"""A model field written as ``2d``; programmatic callers may pass a ``timedelta``."""


def parse_weekday(value: object) -> str:
    """``"Tue"``, ``"tuesday"`` -> ``"tue"``."""
    text = value.strip().lower() if isinstance(value, str) else None
    if text in WEEKDAYS:
        return text
    if text in _FULL_WEEKDAYS:
        return WEEKDAYS[_FULL_WEEKDAYS.index(text)]
    raise ValueError(f"{value!r} is not a weekday: use one of {', '.join(WEEKDAYS)}")


def parse_clock(value: object) -> dt.time:
    """``"10:00"`` -> 10:00. An unquoted ``10:00`` reaches us as the number 600 (YAML 1.1 reads
    it in base 60), so numbers get a hint to quote the time rather than a silent guess."""
    if isinstance(value, dt.time):
        return value.replace(second=0, microsecond=0, tzinfo=None)
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(
            f'time {value!r} is a number: write the time in quotes, e.g. time: "10:00" '
            "(YAML reads an unquoted 10:00 as the number 600)"
        )
    match = _CLOCK.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f'{value!r} is not a time of day: write HH:MM, e.g. "09:30"')
    return dt.time(int(match.group(1)), int(match.group(2)))


def parse_zone(name: object) -> ZoneInfo:
    """An IANA timezone such as ``Europe/Madrid``; ``ValueError`` otherwise."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{name!r} is not a timezone: use an IANA name, e.g. 'Europe/Madrid'")
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"unknown timezone {name!r}: use an IANA name, e.g. 'Europe/Madrid' or 'UTC'"
        ) from None


def next_local_time(
    after: datetime, weekday: str | None, time: str | dt.time, tz: ZoneInfo
) -> datetime:
    """The first instant strictly after ``after`` whose wall clock in ``tz`` reads ``time`` on
    ``weekday`` (any day when ``None``), in UTC.

    Clock changes, the same rules as working hours: a wall time the clock skips (spring forward)
    means the first instant after the jump, so 02:30 on such a night is 03:00; a wall time the
    clock shows twice (fall back) counts once, at its first occurrence, so a weekly wait never
    fires twice in one night.
    """
    if after.tzinfo is None or after.utcoffset() is None:
        raise ValueError("next_local_time needs an aware datetime, not a naive one")
    wall = parse_clock(time)
    day_index = None if weekday is None else WEEKDAYS.index(parse_weekday(weekday))
    after_utc = after.astimezone(UTC)
    first_day = after_utc.astimezone(tz).date() - timedelta(days=1)
    for offset in range(10):
        day = first_day + timedelta(days=offset)
        if day_index is not None and day.weekday() != day_index:
            continue
        candidate = wall_time_instant(_combine(day, wall), tz)
        if candidate > after_utc:
            return candidate
    raise AssertionError("unreachable: every weekday recurs within ten days")


def _combine(day: date, wall: dt.time) -> datetime:
    return datetime(day.year, day.month, day.day, wall.hour, wall.minute)


def wall_time_instant(wall: datetime, tz: ZoneInfo) -> datetime:
    """The UTC instant a naive local wall time stands for: its first occurrence when the clock
    shows it twice, the end of the jump when the clock skips it."""
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if first.astimezone(tz).replace(tzinfo=None) == wall:
        return first
    # In a gap, fold=0 and fold=1 use the offsets either side of the jump: the two instants
    # bracket it, and the jump is the first one carrying the later offset.
    second = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    return _offset_change(min(first, second), max(first, second), tz)


def _offset_change(before: datetime, after: datetime, tz: ZoneInfo) -> datetime:
    """The first whole second in ``(before, after]`` whose UTC offset differs from ``before``'s;
    zone transitions fall on whole seconds."""
    offset = before.astimezone(tz).utcoffset()
    low, high = 0, int((after - before).total_seconds())
    while high - low > 1:
        middle = (low + high) // 2
        if (before + timedelta(seconds=middle)).astimezone(tz).utcoffset() == offset:
            low = middle
        else:
            high = middle
    return before + timedelta(seconds=high)
