"""When a sender identity may act: weekly windows in its own timezone, minus holidays.

Pure logic, no I/O. The schedule is read as a wall clock: a window ``09:00-17:00`` is open while
the identity's local clock reads from 09:00 up to (not including) 17:00. Two rules make that
exact on days the clock jumps:

- a wall time that does not exist (skipped by a spring-forward change) means the first instant
  after the jump, so ``02:30-04:00`` on such a night opens at 03:00;
- a wall time that happens twice (the hour repeated by a fall-back change) means its first
  occurrence, so every window is one interval of real time and never reopens.

A holiday closes the windows that *start* on that local date: a Thursday ``22:00-02:00`` window
still runs into a holiday Friday until 02:00, and a holiday Friday's ``22:00-02:00`` window never
opens, not even its Saturday part.

Instants are computed and returned in UTC: Python compares and subtracts two datetimes that
share a ``ZoneInfo`` by their wall clocks, which is wrong inside a repeated hour.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays as holiday_calendars

from parley.errors import ConfigurationError

DAY_KEYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
"""Keys of the ``weekly`` mapping, Monday first (``date.weekday()`` order)."""

MAX_WAIT: Final = timedelta(days=6)
"""The longest wait ever returned: a schedule with nothing open sooner is treated as broken."""

LOOKAHEAD: Final = timedelta(days=7)
"""How far ahead a window must start for the schedule to count as configured."""

DEFAULT_WEEKLY: Final[Mapping[str, tuple[str, ...]]] = {
    day: ("09:00-18:00",) for day in DAY_KEYS[:5]
}
"""Office hours as outreach tools assume them: Monday to Friday, 09:00 to 18:00."""

CONFIG_KEYS: Final = frozenset({"timezone", "weekly", "holidays", "country", "subdivision"})

_WINDOW = re.compile(r"^\s*(\d{2}):(\d{2})\s*-\s*(\d{2}):(\d{2})\s*$")


@dataclass(frozen=True, slots=True)
class Window:
    """One daily opening, in minutes after local midnight. ``end <= start`` means the window
    runs into the next day; ``end == 1440`` is ``24:00``."""

    start: int
    end: int

    @property
    def crosses_midnight(self) -> bool:
        return self.end <= self.start

    def __str__(self) -> str:
        return f"{_clock(self.start)}-{_clock(self.end)}"


@dataclass(frozen=True, slots=True)
class WorkingHours:
    """An identity's weekly schedule. Build it with ``from_config`` so mistakes are reported."""

    timezone: ZoneInfo
    weekly: tuple[tuple[Window, ...], ...]  # seven entries, Monday first
    holidays: frozenset[date] = frozenset()
    country: str | None = None
    subdivision: str | None = None

    def __post_init__(self) -> None:
        if len(self.weekly) != len(DAY_KEYS):
            raise ValueError(f"weekly needs {len(DAY_KEYS)} days, Monday first; got {self.weekly}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> WorkingHours:
        """Read the identity's ``working_hours`` mapping; raise ``ConfigurationError`` naming
        the first key or value that cannot be used."""
        if not isinstance(config, Mapping):
            raise ConfigurationError(f"working_hours: expected a mapping, got {config!r}")
        unknown = sorted(str(key) for key in set(config) - CONFIG_KEYS)
        if unknown:
            allowed = ", ".join(sorted(CONFIG_KEYS))
            raise ConfigurationError(f"working_hours: unknown key(s) {unknown}; allowed: {allowed}")
        for required in ("timezone", "weekly"):
            if required not in config:
                raise ConfigurationError(f"working_hours: {required!r} is required")
        country, subdivision = _parse_country(config.get("country"), config.get("subdivision"))
        return cls(
            timezone=_parse_timezone(config["timezone"]),
            weekly=_parse_weekly(config["weekly"]),
            holidays=_parse_holidays(config.get("holidays", ())),
            country=country,
            subdivision=subdivision,
        )

    def is_holiday(self, day: date) -> bool:
        if day in self.holidays:
            return True
        return self.country is not None and day in _country_holidays(
            self.country, self.subdivision, day.year
        )

    def is_open(self, at: datetime) -> bool:
        instant = _utc(at)
        return self.opening(instant) == instant

    def next_open(self, at: datetime) -> datetime:
        """``at`` when open; else the start of the next window (UTC); ``at`` + 6 days when no
        window starts within 7 days, which ``is_misconfigured`` reports."""
        instant = _utc(at)
        opening = self.opening(instant)
        if opening is None:
            return instant + MAX_WAIT
        return at if opening == instant else opening

    def wait(self, at: datetime) -> timedelta:
        """How long until ``next_open``: zero when open, never more than 6 days."""
        instant = _utc(at)
        return min(_utc(self.next_open(at)) - instant, MAX_WAIT)

    def is_misconfigured(self, at: datetime) -> bool:
        """True when the identity is closed at ``at`` and no window opens in the next 7 days:
        an empty schedule or one covered by holidays. The identity should be flagged."""
        return self.opening(at) is None

    def opening(self, at: datetime) -> datetime | None:
        """The first open instant from ``at`` on (UTC), or None when nothing opens within 7
        days: ``next_open`` without the 6-day stand-in, for callers that must tell them apart."""
        instant = _utc(at)
        horizon = instant + LOOKAHEAD
        upcoming: list[datetime] = []
        for start, end in self._intervals(instant):
            if start <= instant < end:
                return instant
            if instant < start <= horizon:
                upcoming.append(start)
        return min(upcoming, default=None)

    def local(self, at: datetime) -> datetime:
        return _utc(at).astimezone(self.timezone)

    def local_date(self, at: datetime) -> date:
        return self.local(at).date()

    def start_of_day(self, day: date) -> datetime:
        """The first instant (UTC) of ``day`` on the identity's clock."""
        return wall_time_instant(datetime(day.year, day.month, day.day), self.timezone)

    def describe(self, at: datetime) -> str:
        return describe_instant(at, self.timezone)

    def _intervals(self, instant: datetime) -> Iterator[tuple[datetime, datetime]]:
        """Every window that starts from the local day before ``instant`` (it may still be
        running) to 8 days after, as UTC ``[start, end)``."""
        today = instant.astimezone(self.timezone).date()
        for offset in range(-1, 9):
            yield from _day_intervals(self, today + timedelta(days=offset))


@lru_cache(maxsize=4096)
def _day_intervals(hours: WorkingHours, day: date) -> tuple[tuple[datetime, datetime], ...]:
    """The non-empty windows starting on ``day``; cached because a decision asks for the same
    days many times."""
    if hours.is_holiday(day):
        return ()
    intervals = (_interval(day, window, hours.timezone) for window in hours.weekly[day.weekday()])
    return tuple((start, end) for start, end in intervals if start < end)


def _interval(day: date, window: Window, timezone: ZoneInfo) -> tuple[datetime, datetime]:
    midnight = datetime(day.year, day.month, day.day)
    end_day = midnight + timedelta(days=1) if window.crosses_midnight else midnight
    start = wall_time_instant(midnight + timedelta(minutes=window.start), timezone)
    end = wall_time_instant(end_day + timedelta(minutes=window.end), timezone)
    return start, end


def default_working_hours(timezone: str) -> WorkingHours:
    """Monday to Friday, 09:00 to 18:00 in ``timezone``: what an identity gets until its owner
    says otherwise. There is no zone-less default on purpose: UTC office hours are nobody's."""
    return WorkingHours.from_config({"timezone": timezone, "weekly": dict(DEFAULT_WEEKLY)})


def describe_instant(at: datetime, timezone: ZoneInfo) -> str:
    """An instant as an operator reads it: ``Mon 2026-12-07 09:00 Europe/Madrid``."""
    return f"{_utc(at).astimezone(timezone):%a %Y-%m-%d %H:%M} {timezone.key}"


def wall_time_instant(wall: datetime, timezone: ZoneInfo) -> datetime:
    """The UTC instant a naive local wall time stands for: its first occurrence when the clock
    shows it twice, the end of the jump when the clock skips it."""
    first = wall.replace(tzinfo=timezone, fold=0).astimezone(UTC)
    if first.astimezone(timezone).replace(tzinfo=None) == wall:
        return first
    # In a gap, fold=0 and fold=1 use the offsets either side of the jump: the two instants
    # bracket it, and the jump is the first one carrying the later offset.
    second = wall.replace(tzinfo=timezone, fold=1).astimezone(UTC)
    return _offset_change(min(first, second), max(first, second), timezone)


def _offset_change(before: datetime, after: datetime, timezone: ZoneInfo) -> datetime:
    """The first whole second in ``(before, after]`` whose UTC offset differs from
    ``before``'s; zone transitions fall on whole seconds."""
    offset = before.astimezone(timezone).utcoffset()
    low, high = 0, int((after - before).total_seconds())
    while high - low > 1:
        middle = (low + high) // 2
        if (before + timedelta(seconds=middle)).astimezone(timezone).utcoffset() == offset:
            low = middle
        else:
            high = middle
    return before + timedelta(seconds=high)


def _utc(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"{at.isoformat()} is naive; working hours need a timezone-aware time")
    return at.astimezone(UTC)


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


@lru_cache(maxsize=256)
def _country_holidays(country: str, subdivision: str | None, year: int) -> frozenset[date]:
    return frozenset(holiday_calendars.country_holidays(country, subdiv=subdivision, years=year))


# --- reading the configuration ------------------------------------------------------------------


def _parse_timezone(name: object) -> ZoneInfo:
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"working_hours.timezone: {name!r} is not an IANA timezone name")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(
            f"working_hours.timezone: unknown timezone {name!r} (expected e.g. 'Europe/Madrid')"
        ) from None


def _parse_weekly(weekly: object) -> tuple[tuple[Window, ...], ...]:
    if not isinstance(weekly, Mapping):
        raise ConfigurationError(
            f"working_hours.weekly: expected a mapping of {', '.join(DAY_KEYS)}, got {weekly!r}"
        )
    unknown = sorted(str(key) for key in weekly if key not in DAY_KEYS)
    if unknown:
        raise ConfigurationError(
            f"working_hours.weekly: unknown day key(s) {unknown}; use {', '.join(DAY_KEYS)}"
        )
    return tuple(_parse_day(day, weekly.get(day, ())) for day in DAY_KEYS)


def _parse_day(day: str, windows: object) -> tuple[Window, ...]:
    if isinstance(windows, str) or not isinstance(windows, Sequence):
        raise ConfigurationError(
            f"working_hours.weekly.{day}: expected a list of 'HH:MM-HH:MM', got {windows!r}"
        )
    return tuple(parse_window(window, where=f"working_hours.weekly.{day}") for window in windows)


def parse_window(text: object, *, where: str = "window") -> Window:
    """``"09:00-17:00"``, ``"22:00-02:00"`` (into the next day) or ``"18:00-24:00"``."""
    match = _WINDOW.match(text) if isinstance(text, str) else None
    if match is None:
        raise ConfigurationError(f"{where}: {text!r} is not a window 'HH:MM-HH:MM'")
    start_h, start_m, end_h, end_m = (int(part) for part in match.groups())
    if start_h > 23 or start_m > 59 or end_m > 59 or end_h > 24 or (end_h == 24 and end_m):
        raise ConfigurationError(f"{where}: {text!r} has a time outside 00:00-24:00")
    window = Window(start=start_h * 60 + start_m, end=end_h * 60 + end_m)
    if window.start == window.end:
        raise ConfigurationError(
            f"{where}: {text!r} starts where it ends; write '00:00-24:00' for a whole day"
        )
    return window


def _parse_holidays(days: object) -> frozenset[date]:
    if not isinstance(days, list | tuple | set | frozenset):
        raise ConfigurationError(f"working_hours.holidays: expected a list of dates, got {days!r}")
    return frozenset(_parse_holiday(day) for day in days)


def _parse_holiday(day: object) -> date:
    # YAML reads an unquoted 2026-12-25 as a date already; a datetime is not a whole day.
    if isinstance(day, date) and not isinstance(day, datetime):
        return day
    if isinstance(day, str):
        try:
            return date.fromisoformat(day)
        except ValueError:
            pass
    raise ConfigurationError(
        f"working_hours.holidays: {day!r} is not an ISO date (expected e.g. '2026-12-25')"
    )


def _parse_country(country: object, subdivision: object) -> tuple[str | None, str | None]:
    if country is None:
        if subdivision is not None:
            raise ConfigurationError("working_hours.subdivision: needs a 'country' as well")
        return None, None
    if not isinstance(country, str) or (
        subdivision is not None and not isinstance(subdivision, str)
    ):
        raise ConfigurationError(
            f"working_hours.country: {country!r} / subdivision {subdivision!r} must be codes"
        )
    try:
        holiday_calendars.country_holidays(country, subdiv=subdivision)
    except NotImplementedError as error:
        raise ConfigurationError(
            f"working_hours.country: no holiday calendar for country {country!r}"
            f"{f' subdivision {subdivision!r}' if subdivision else ''} ({error})"
        ) from None
    return country, subdivision
