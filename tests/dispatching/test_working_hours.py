from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from parley.errors import ConfigurationError
from parley.outreach.working_hours import (
    DAY_KEYS,
    MAX_WAIT,
    WorkingHours,
    default_working_hours,
    wall_time_instant,
)

MADRID = ZoneInfo("Europe/Madrid")
KOLKATA = ZoneInfo("Asia/Kolkata")
ADELAIDE = ZoneInfo("Australia/Adelaide")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri")


def hours(
    weekly: dict[str, list[str]], timezone: str = "Europe/Madrid", **extra: Any
) -> WorkingHours:
    return WorkingHours.from_config({"timezone": timezone, "weekly": weekly, **extra})


def office(timezone: str = "Europe/Madrid", **extra: Any) -> WorkingHours:
    return hours({day: ["09:00-17:00"] for day in WEEKDAYS}, timezone, **extra)


def madrid(*parts: int, fold: int = 0) -> datetime:
    return datetime(*parts, tzinfo=MADRID, fold=fold)


# --- docs/outreach.md's scenario and the basics ---------------------------------------------


def test_friday_17_01_waits_until_monday_09_00() -> None:
    friday = madrid(2026, 12, 4, 17, 1)

    assert office().next_open(friday) == madrid(2026, 12, 7, 9, 0)
    assert office().wait(friday) == timedelta(hours=63, minutes=59)
    assert not office().is_misconfigured(friday)


def test_inside_a_window_next_open_is_the_instant_itself_and_wait_is_zero() -> None:
    at = madrid(2026, 12, 4, 16, 59, 59)

    assert office().next_open(at) is at
    assert office().wait(at) == timedelta(0)


def test_window_start_is_inclusive_and_end_exclusive() -> None:
    assert office().is_open(madrid(2026, 12, 7, 9, 0))
    assert not office().is_open(madrid(2026, 12, 7, 17, 0))
    assert office().next_open(madrid(2026, 12, 7, 17, 0)) == madrid(2026, 12, 8, 9, 0)


def test_several_windows_a_day_the_gap_waits_for_the_afternoon() -> None:
    split = hours({"mon": ["09:00-13:00", "15:00-18:00"]})

    assert split.next_open(madrid(2026, 12, 7, 13, 30)) == madrid(2026, 12, 7, 15, 0)
    assert split.is_open(madrid(2026, 12, 7, 17, 59))


def test_next_open_is_returned_in_utc_and_compares_with_any_zone() -> None:
    opening = office().next_open(madrid(2026, 12, 4, 17, 1))

    assert opening.tzinfo is UTC
    assert opening == datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
    assert office().describe(opening) == "Mon 2026-12-07 09:00 Europe/Madrid"


def test_24_00_closes_at_midnight() -> None:
    evening = hours({"mon": ["18:00-24:00"]})

    assert evening.is_open(madrid(2026, 12, 7, 23, 59))
    assert not evening.is_open(madrid(2026, 12, 8, 0, 0))


def test_00_00_to_24_00_is_open_all_day() -> None:
    whole = hours({"sat": ["00:00-24:00"]})

    assert whole.is_open(madrid(2026, 12, 5, 0, 0))
    assert whole.is_open(madrid(2026, 12, 5, 23, 59, 59))
    assert not whole.is_open(madrid(2026, 12, 6, 0, 0))


def test_default_hours_are_monday_to_friday_09_00_to_18_00() -> None:
    default = default_working_hours("Europe/Madrid")

    assert default.is_open(madrid(2026, 12, 4, 17, 59))
    assert not default.is_open(madrid(2026, 12, 5, 12, 0))
    assert default.next_open(madrid(2026, 12, 4, 18, 0)) == madrid(2026, 12, 7, 9, 0)


@pytest.mark.parametrize("method", ["next_open", "wait", "is_open", "is_misconfigured"])
def test_a_naive_datetime_is_refused(method: str) -> None:
    with pytest.raises(ValueError, match="naive"):
        getattr(office(), method)(datetime(2026, 12, 4, 17, 1))


# --- windows crossing midnight ----------------------------------------------------------------


def test_a_friday_window_crossing_midnight_runs_into_saturday() -> None:
    late = hours({"fri": ["22:00-02:00"]})

    assert late.is_open(madrid(2026, 12, 4, 23, 30))
    assert late.is_open(madrid(2026, 12, 5, 1, 59))
    assert not late.is_open(madrid(2026, 12, 5, 2, 0))
    assert late.next_open(madrid(2026, 12, 5, 2, 0)) == madrid(2026, 12, 11, 22, 0)


def test_a_wait_is_capped_at_six_days_but_a_weekly_window_is_not_a_misconfiguration() -> None:
    late = hours({"fri": ["22:00-02:00"]})
    saturday = madrid(2026, 12, 5, 2, 0)

    assert late.wait(saturday) == MAX_WAIT
    assert not late.is_misconfigured(saturday)


# --- daylight-saving changes and unusual offsets ------------------------------------------------


def test_spring_forward_a_window_starting_at_a_skipped_time_opens_when_the_clock_jumps() -> None:
    # Europe/Madrid, 2026-03-29: 02:00 CET becomes 03:00 CEST.
    night = hours({"sun": ["02:30-04:00"]})

    opening = night.next_open(madrid(2026, 3, 29, 1, 0))

    assert opening == madrid(2026, 3, 29, 3, 0)
    assert opening - madrid(2026, 3, 29, 1, 0) == timedelta(hours=1)
    assert night.is_open(madrid(2026, 3, 29, 3, 59))


def test_spring_forward_a_window_entirely_inside_the_skipped_hour_never_opens_that_day() -> None:
    skipped = hours({"sun": ["02:10-02:50"]})

    assert skipped.next_open(madrid(2026, 3, 29, 1, 30)) == madrid(2026, 4, 5, 2, 10)


def test_spring_forward_waits_count_real_hours_not_clock_hours() -> None:
    saturday_noon = madrid(2026, 3, 28, 12, 0)

    # 45 clock hours to Monday 09:00, one of which never happens.
    assert office().wait(saturday_noon) == timedelta(hours=44)


def test_fall_back_a_window_ending_in_the_repeated_hour_ends_at_its_first_occurrence() -> None:
    # Europe/Madrid, 2026-10-25: 03:00 CEST becomes 02:00 CET, 02:00-03:00 happens twice.
    night = hours({"sun": ["01:00-02:30"]})

    assert night.is_open(madrid(2026, 10, 25, 2, 15, fold=0))
    assert not night.is_open(madrid(2026, 10, 25, 2, 15, fold=1))


def test_fall_back_a_window_spanning_the_repeated_hour_lasts_one_hour_longer() -> None:
    night = hours({"sun": ["00:00-06:00"]})

    # 00:00 CEST is 22:00 UTC the day before; 06:00 CET is 05:00 UTC: seven real hours.
    assert not night.is_open(datetime(2026, 10, 24, 21, 59, tzinfo=UTC))
    assert night.is_open(datetime(2026, 10, 24, 22, 0, tzinfo=UTC))
    assert night.is_open(madrid(2026, 10, 25, 2, 30, fold=1))
    assert night.is_open(datetime(2026, 10, 25, 4, 59, tzinfo=UTC))
    assert not night.is_open(datetime(2026, 10, 25, 5, 0, tzinfo=UTC))


def test_fall_back_waits_count_real_hours() -> None:
    saturday = madrid(2026, 10, 24, 17, 0)

    assert office().wait(saturday) == timedelta(hours=41)


def test_half_hour_offset_kolkata() -> None:
    india = office("Asia/Kolkata")
    monday_utc = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)

    assert india.next_open(monday_utc) == datetime(2026, 12, 7, 3, 30, tzinfo=UTC)
    assert india.wait(monday_utc) == timedelta(minutes=30)


def test_half_hour_offset_adelaide_across_its_daylight_saving_start() -> None:
    # Adelaide goes from +09:30 to +10:30 on Sunday 2026-10-04.
    adelaide = office("Australia/Adelaide")
    friday = datetime(2026, 10, 2, 17, 0, tzinfo=ADELAIDE)

    opening = adelaide.next_open(friday)

    assert opening == datetime(2026, 10, 4, 22, 30, tzinfo=UTC)
    assert adelaide.wait(friday) == timedelta(hours=63)


def test_a_wall_time_skipped_by_the_clock_means_the_instant_of_the_jump() -> None:
    assert wall_time_instant(datetime(2026, 3, 29, 2, 30), MADRID) == datetime(
        2026, 3, 29, 1, 0, tzinfo=UTC
    )


# --- holidays ---------------------------------------------------------------------------------


def test_an_explicit_holiday_closes_the_whole_local_day() -> None:
    closed_friday = office(holidays=["2026-12-04"])

    assert closed_friday.next_open(madrid(2026, 12, 3, 17, 30)) == madrid(2026, 12, 7, 9, 0)


def test_a_holiday_does_not_cut_a_window_that_started_the_day_before() -> None:
    nights = hours({"thu": ["22:00-02:00"]}, holidays=["2026-12-04"])

    assert nights.is_open(madrid(2026, 12, 4, 1, 0))


def test_a_holiday_closes_its_own_window_even_the_part_after_midnight() -> None:
    nights = hours({"fri": ["22:00-02:00"]}, holidays=["2026-12-04"])

    assert not nights.is_open(madrid(2026, 12, 4, 23, 0))
    assert not nights.is_open(madrid(2026, 12, 5, 1, 0))


def test_country_calendar_closes_christmas_in_spain() -> None:
    spain = office(country="ES")

    assert spain.is_holiday(date(2026, 12, 25))
    assert spain.next_open(madrid(2026, 12, 24, 17, 0)) == madrid(2026, 12, 28, 9, 0)


def test_country_subdivision_adds_regional_holidays() -> None:
    # Madrid moves Constitution Day to Monday 7th; the 8th is a national holiday.
    region = office(country="ES", subdivision="MD")

    assert region.next_open(madrid(2026, 12, 4, 17, 1)) == madrid(2026, 12, 9, 9, 0)
    assert office(country="ES").next_open(madrid(2026, 12, 4, 17, 1)) == madrid(2026, 12, 7, 9)


def test_holidays_read_from_yaml_as_dates_are_accepted() -> None:
    config = yaml.safe_load(
        """
        timezone: Europe/Madrid
        weekly: {mon: ["09:00-17:00"], fri: ["09:00-13:00", "22:00-02:00"]}
        holidays: [2026-12-07]
        """
    )

    loaded = WorkingHours.from_config(config)

    assert loaded.holidays == frozenset({date(2026, 12, 7)})
    assert loaded.is_open(madrid(2026, 12, 5, 1, 0))


# --- misconfiguration -------------------------------------------------------------------------


def test_an_empty_week_waits_six_days_and_is_flagged() -> None:
    never = hours({})
    at = madrid(2026, 12, 4, 17, 1)

    assert never.next_open(at) == at + MAX_WAIT
    assert never.wait(at) == MAX_WAIT
    assert never.is_misconfigured(at)


def test_a_week_covered_by_holidays_is_flagged() -> None:
    mondays = hours({"mon": ["09:00-17:00"]}, holidays=["2026-12-07"])
    sunday = madrid(2026, 12, 6, 12, 0)

    assert mondays.is_misconfigured(sunday)
    assert mondays.wait(sunday) == MAX_WAIT
    assert not mondays.is_misconfigured(madrid(2026, 12, 8, 12, 0))


# --- bad configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"weekly": {"monday": ["09:00-17:00"]}}, r"unknown day key\(s\) \['monday'\]"),
        ({"weekly": {"mon": ["9-17"]}}, r"weekly.mon: '9-17' is not a window"),
        ({"weekly": {"mon": ["25:00-26:00"]}}, r"weekly.mon: '25:00-26:00' has a time outside"),
        ({"weekly": {"mon": ["09:00-24:30"]}}, r"'09:00-24:30' has a time outside"),
        ({"weekly": {"mon": ["09:00-09:00"]}}, r"'09:00-09:00' starts where it ends"),
        ({"weekly": {"mon": "09:00-17:00"}}, r"weekly.mon: expected a list"),
        ({"weekly": ["09:00-17:00"]}, r"weekly: expected a mapping"),
        ({"timezone": "Europe/Atlantis"}, r"unknown timezone 'Europe/Atlantis'"),
        ({"timezone": "../etc/passwd"}, r"unknown timezone"),
        ({"timezone": 1}, r"timezone: 1 is not an IANA timezone name"),
        ({"country": "XX"}, r"no holiday calendar for country 'XX'"),
        ({"country": "ES", "subdivision": "ZZ"}, r"country 'ES' subdivision 'ZZ'"),
        ({"subdivision": "MD"}, r"subdivision: needs a 'country'"),
        ({"holidays": ["25/12/2026"]}, r"holidays: '25/12/2026' is not an ISO date"),
        ({"holidays": "2026-12-25"}, r"holidays: expected a list"),
        ({"holiday": []}, r"unknown key\(s\) \['holiday'\]"),
    ],
)
def test_bad_configuration_names_the_offending_key_or_value(
    change: dict[str, Any], message: str
) -> None:
    config = {"timezone": "Europe/Madrid", "weekly": {"mon": ["09:00-17:00"]}, **change}

    with pytest.raises(ConfigurationError, match=message):
        WorkingHours.from_config(config)


def test_a_config_that_is_not_a_mapping_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="working_hours: expected a mapping, got None"):
        WorkingHours.from_config(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("missing", ["timezone", "weekly"])
def test_timezone_and_weekly_are_required(missing: str) -> None:
    config = {"timezone": "Europe/Madrid", "weekly": {}}
    del config[missing]

    with pytest.raises(ConfigurationError, match=f"'{missing}' is required"):
        WorkingHours.from_config(config)


# --- properties -------------------------------------------------------------------------------

ZONES = ["UTC", "Europe/Madrid", "Asia/Kolkata", "Australia/Adelaide", "America/Santiago"]
# Weeks with clock changes in at least one of ZONES, to be sampled more often than by chance.
CLOCK_CHANGES = [datetime(2026, 3, 29), datetime(2026, 4, 5), datetime(2026, 9, 6)]
CLOCK_CHANGES += [datetime(2026, 10, 4), datetime(2026, 10, 25)]


@st.composite
def windows(draw: st.DrawFn) -> str:
    start = draw(st.integers(0, 95)) * 15
    length = draw(st.integers(1, 95)) * 15
    end = (start + length) % 1440 or 1440
    return f"{start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}"


@st.composite
def schedules(draw: st.DrawFn) -> WorkingHours:
    days = draw(st.lists(st.sampled_from(DAY_KEYS), unique=True, max_size=7))
    weekly = {day: draw(st.lists(windows(), max_size=2)) for day in days}
    return hours(weekly, draw(st.sampled_from(ZONES)))


@st.composite
def instants(draw: st.DrawFn) -> datetime:
    around = draw(st.sampled_from([*CLOCK_CHANGES, datetime(2026, 6, 15)]))
    offset = timedelta(minutes=draw(st.integers(-4 * 1440, 4 * 1440)))
    return (around + offset).replace(tzinfo=UTC)


@settings(max_examples=200, deadline=None)
@given(schedule=schedules(), at=instants(), fractions=st.lists(st.floats(0, 1), max_size=4))
def test_next_open_is_open_and_nothing_before_it_is(
    schedule: WorkingHours, at: datetime, fractions: list[float]
) -> None:
    opening = schedule.next_open(at)
    if schedule.is_misconfigured(at):
        assert opening == at + MAX_WAIT
        return
    assert schedule.is_open(opening)
    assert timedelta(0) <= schedule.wait(at) <= MAX_WAIT
    closed_until = opening - timedelta(microseconds=1)
    for instant in [closed_until, *(at + (closed_until - at) * f for f in fractions)]:
        if at <= instant < opening:
            assert not schedule.is_open(instant)
