import itertools
import random
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from parley.errors import ConfigurationError
from parley.outreach.limits import (
    DEFAULT_LIMITS,
    DEFAULT_POLICY,
    ActionLimits,
    LimitPolicy,
    NotYet,
    Performed,
    Proceed,
    RollingCap,
    Usage,
    counts,
    decide,
    learn_retry_after,
)
from parley.outreach.working_hours import DAY_KEYS, MAX_WAIT, WorkingHours, default_working_hours
from parley.vocabulary import ACTION_TYPES, ActionType

MADRID = ZoneInfo("Europe/Madrid")
HOURS = default_working_hours("Europe/Madrid")  # Mon-Fri 09:00-18:00
ALWAYS = WorkingHours.from_config(
    {"timezone": "UTC", "weekly": {day: ["00:00-24:00"] for day in DAY_KEYS}}
)


def madrid(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=MADRID)


def policy(**actions: dict[str, Any]) -> LimitPolicy:
    return LimitPolicy.from_config({"actions": actions})


def performed(
    action_type: ActionType, start: datetime, n: int, every: timedelta
) -> list[Performed]:
    return [Performed(action_type, start + i * every) for i in range(n)]


def wait_for(decision: Proceed | NotYet) -> NotYet:
    assert isinstance(decision, NotYet), decision
    return decision


# --- docs/outreach.md's scenarios -------------------------------------------------------------


def test_friday_17_01_waits_until_monday_09_00() -> None:
    nine_to_five = WorkingHours.from_config(
        {"timezone": "Europe/Madrid", "weekly": {d: ["09:00-17:00"] for d in DAY_KEYS[:5]}}
    )
    friday = madrid(2026, 12, 4, 17, 1)

    decision = wait_for(decide(DEFAULT_POLICY, nine_to_five, [], "email", friday, random.Random(1)))

    assert decision.reason == "outside_working_hours"
    assert decision.until == madrid(2026, 12, 7, 9, 0)
    assert decision.delay == timedelta(hours=63, minutes=59)
    assert not decision.capped
    assert decision.explain().endswith("next: Mon 2026-12-07 09:00 Europe/Madrid")


def test_the_51st_connection_request_waits_for_the_next_working_day() -> None:
    fifty_a_day = policy(linkedin_connection={"daily": 50})
    tuesday = performed("linkedin_connection", madrid(2026, 12, 1, 9, 0), 50, timedelta(minutes=2))

    decision = wait_for(
        decide(
            fifty_a_day,
            HOURS,
            tuesday,
            "linkedin_connection",
            madrid(2026, 12, 1, 11, 0),
            random.Random(1),
        )
    )

    assert decision.reason == "daily_cap"
    assert decision.until == madrid(2026, 12, 2, 9, 0)  # not midnight: hours open at 09:00
    assert decision.explain() == (
        "daily cap 50 of linkedin_connection reached (50 today); "
        "next: Wed 2026-12-02 09:00 Europe/Madrid"
    )


def test_same_action_type_within_one_minute_is_delayed() -> None:
    last = madrid(2026, 12, 1, 10, 0, 0)
    history = [Performed("linkedin_message", last)]

    decision = wait_for(
        decide(
            DEFAULT_POLICY,
            HOURS,
            history,
            "linkedin_message",
            last + timedelta(seconds=20),
            random.Random(1),
        )
    )

    assert (decision.reason, decision.until) == ("spacing", last + timedelta(seconds=60))
    assert isinstance(
        decide(
            DEFAULT_POLICY, HOURS, history, "email", last + timedelta(seconds=20), random.Random(1)
        ),
        Proceed,
    )


# --- caps -------------------------------------------------------------------------------------


def test_a_daily_cap_reached_on_friday_waits_for_monday_opening() -> None:
    friday = performed("linkedin_inmail", madrid(2026, 12, 4, 9, 0), 20, timedelta(minutes=5))

    decision = wait_for(
        decide(
            DEFAULT_POLICY,
            HOURS,
            friday,
            "linkedin_inmail",
            madrid(2026, 12, 4, 12, 0),
            random.Random(1),
        )
    )

    assert (decision.reason, decision.until) == ("daily_cap", madrid(2026, 12, 7, 9, 0))


def test_the_weekly_cap_of_100_invitations_waits_for_next_week() -> None:
    generous_days = policy(linkedin_connection={"daily": 30})
    monday = madrid(2026, 11, 30, 9, 0)
    week = [  # Monday to Thursday, 25 a day
        action
        for day in range(4)
        for action in performed(
            "linkedin_connection", monday + timedelta(days=day), 25, timedelta(minutes=3)
        )
    ]

    decision = wait_for(
        decide(
            generous_days,
            HOURS,
            week,
            "linkedin_connection",
            madrid(2026, 12, 4, 10, 0),
            random.Random(1),
        )
    )

    assert decision.reason == "weekly_cap"
    assert decision.until == madrid(2026, 12, 7, 9, 0)
    assert decision.detail == "weekly cap 100 of linkedin_connection reached (100 this week)"


def test_outside_hours_is_the_reason_even_when_a_cap_is_also_reached() -> None:
    tuesday = performed("email", madrid(2026, 12, 1, 9, 0), 40, timedelta(minutes=5))

    decision = wait_for(
        decide(
            DEFAULT_POLICY, HOURS, tuesday, "email", madrid(2026, 12, 1, 20, 0), random.Random(1)
        )
    )

    assert (decision.reason, decision.until) == ("outside_working_hours", madrid(2026, 12, 2, 9))


def test_a_daily_cap_counts_the_identitys_local_day_not_utc() -> None:
    # 23:30 UTC on Monday is already Tuesday 00:30 in Madrid.
    late = [Performed("email", datetime(2026, 11, 30, 23, 30, tzinfo=UTC))]
    one_a_day = policy(email={"daily": 1, "spacing": 0})

    monday = decide(
        one_a_day,
        ALWAYS,
        late,
        "email",
        datetime(2026, 11, 30, 22, 0, tzinfo=UTC),
        random.Random(1),
    )
    on_madrid_clock = decide(
        one_a_day, HOURS, late, "email", madrid(2026, 12, 1, 10, 0), random.Random(1)
    )

    assert isinstance(monday, NotYet)  # UTC identity: same Monday
    assert wait_for(on_madrid_clock).reason == "daily_cap"


def test_rolling_window_five_connection_requests_per_thirty_minutes() -> None:
    five_per_half_hour = policy(
        linkedin_connection={"rolling": [{"count": 5, "per": "30m"}], "spacing": "0s"}
    )
    start = madrid(2026, 12, 1, 10, 0)
    four = performed("linkedin_connection", start, 4, timedelta(minutes=5))
    five = performed("linkedin_connection", start, 5, timedelta(minutes=5))

    def at(history: list[Performed], instant: datetime) -> Proceed | NotYet:
        return decide(
            five_per_half_hour, HOURS, history, "linkedin_connection", instant, random.Random(1)
        )

    assert isinstance(at(four, madrid(2026, 12, 1, 10, 21)), Proceed)
    refused = wait_for(at(five, madrid(2026, 12, 1, 10, 21)))
    assert (refused.reason, refused.until) == ("rolling_cap", madrid(2026, 12, 1, 10, 30))
    assert refused.detail == (
        "rolling cap 5 per 30m of linkedin_connection reached (5 in the last 30m)"
    )
    assert isinstance(at(five, madrid(2026, 12, 1, 10, 30)), Proceed)


def test_a_rolling_cap_freeing_after_hours_waits_for_the_next_opening() -> None:
    hourly = policy(email={"rolling": [{"count": 2, "per": "1h"}]})
    history = performed("email", madrid(2026, 12, 1, 17, 30), 2, timedelta(minutes=10))

    decision = wait_for(
        decide(hourly, HOURS, history, "email", madrid(2026, 12, 1, 17, 45), random.Random(1))
    )

    assert (decision.reason, decision.until) == ("rolling_cap", madrid(2026, 12, 2, 9, 0))


def test_a_cap_of_zero_never_frees_so_the_wait_is_capped_and_flagged() -> None:
    no_inmails = policy(linkedin_inmail={"daily": 0})
    at = madrid(2026, 12, 1, 10, 0)

    decision = wait_for(decide(no_inmails, HOURS, [], "linkedin_inmail", at, random.Random(1)))

    assert (decision.reason, decision.until, decision.capped) == ("daily_cap", at + MAX_WAIT, True)
    assert "nothing allows it within 6 days" in decision.explain()


# --- spacing and jitter -----------------------------------------------------------------------


def test_spacing_jitter_comes_from_the_injected_random() -> None:
    jittery = policy(linkedin_message={"spacing": "60s", "jitter": "30s"})
    last = madrid(2026, 12, 1, 10, 0)
    history = [Performed("linkedin_message", last)]
    at = last + timedelta(seconds=10)

    first = wait_for(decide(jittery, HOURS, history, "linkedin_message", at, random.Random(7)))
    again = wait_for(decide(jittery, HOURS, history, "linkedin_message", at, random.Random(7)))

    jitter = timedelta(seconds=30) * random.Random(7).random()
    assert first.until == again.until == last + timedelta(seconds=60) + jitter
    assert first.reason == "spacing"


def test_a_spacing_wait_that_ends_after_hours_waits_for_the_next_opening() -> None:
    last = madrid(2026, 12, 1, 17, 59, 30)

    decision = wait_for(
        decide(
            DEFAULT_POLICY,
            HOURS,
            [Performed("email", last)],
            "email",
            last + timedelta(seconds=15),
            random.Random(1),
        )
    )

    assert (decision.reason, decision.until) == ("spacing", madrid(2026, 12, 2, 9, 0))


# --- limits learned from the provider ---------------------------------------------------------


def test_a_provider_retry_after_is_honoured_for_that_action_type_only() -> None:
    at = madrid(2026, 12, 1, 10, 0)
    blocked = learn_retry_after({}, "linkedin_message", at, retry_after=120)

    def later(action: ActionType, seconds: int) -> Proceed | NotYet:
        return decide(
            DEFAULT_POLICY,
            HOURS,
            [],
            action,
            at + timedelta(seconds=seconds),
            random.Random(1),
            blocked_until=blocked,
        )

    refused = wait_for(later("linkedin_message", 60))
    assert (refused.reason, refused.until) == ("provider_limit", at + timedelta(seconds=120))
    assert isinstance(later("linkedin_message", 120), Proceed)
    assert isinstance(later("linkedin_connection", 60), Proceed)


def test_learned_blocks_only_grow_and_default_to_fifteen_minutes() -> None:
    at = madrid(2026, 12, 1, 10, 0)
    long_block = learn_retry_after({}, "email", at, retry_after=3600)

    shorter = learn_retry_after(long_block, "email", at, retry_after=10)
    unspecified = learn_retry_after({}, "email", at, retry_after=None)

    assert shorter[("email", "email")] == at + timedelta(hours=1)
    assert unspecified[("email", "email")] == at + timedelta(minutes=15)


# --- misconfiguration and bad input -----------------------------------------------------------


def test_misconfigured_hours_wait_six_days_and_are_flagged() -> None:
    never = WorkingHours.from_config({"timezone": "Europe/Madrid", "weekly": {}})
    at = madrid(2026, 12, 1, 10, 0)

    decision = wait_for(decide(DEFAULT_POLICY, never, [], "email", at, random.Random(1)))

    assert (decision.reason, decision.until, decision.capped) == (
        "misconfigured_hours",
        at + MAX_WAIT,
        True,
    )


def test_hours_open_now_but_closed_for_a_week_after_flag_a_capped_wait() -> None:
    one_day = WorkingHours.from_config(
        {
            "timezone": "Europe/Madrid",
            "weekly": {"tue": ["09:00-18:00"]},
            "holidays": ["2026-12-08"],
        }
    )
    tuesday = performed("email", madrid(2026, 12, 1, 9, 0), 40, timedelta(minutes=5))

    decision = wait_for(
        decide(
            DEFAULT_POLICY, one_day, tuesday, "email", madrid(2026, 12, 1, 15, 0), random.Random(1)
        )
    )

    assert (decision.reason, decision.capped) == ("daily_cap", True)


def test_a_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        decide(DEFAULT_POLICY, HOURS, [], "email", datetime(2026, 12, 1, 10), random.Random(1))


def test_an_unknown_action_type_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown action type 'fax'"):
        decide(DEFAULT_POLICY, HOURS, [], "fax", madrid(2026, 12, 1, 10), random.Random(1))  # type: ignore[arg-type]


# --- the policy -------------------------------------------------------------------------------


def test_defaults_are_the_outreach_tools_usual_limits() -> None:
    assert {
        kind: (DEFAULT_LIMITS[kind].daily, DEFAULT_LIMITS[kind].weekly) for kind in ACTION_TYPES
    } == {
        "linkedin_connection": (20, 100),
        "linkedin_message": (50, None),
        "linkedin_inmail": (20, None),
        "linkedin_profile_visit": (50, None),
        "linkedin_attachment": (30, None),
        "linkedin_voice": (20, None),
        "linkedin_like_post": (50, None),
        "email": (40, None),
        "whatsapp_template": (1000, None),
    }
    spacing = {kind: DEFAULT_LIMITS[kind].spacing for kind in ACTION_TYPES}
    assert spacing.pop("whatsapp_template") == timedelta(seconds=2)  # Meta paces per pair
    assert set(spacing.values()) == {timedelta(seconds=60)}


def test_a_policy_loads_from_yaml_and_overrides_only_the_fields_it_names() -> None:
    loaded = LimitPolicy.from_config(
        yaml.safe_load(
            """
            actions:
              linkedin_connection:
                daily: 50
                rolling: [{count: 5, per: 30m}]
                jitter: 1m30s
              email: {weekly: null, daily: null}
            """
        )
    )

    connection = loaded.limits_for("linkedin_connection")
    assert (connection.daily, connection.weekly) == (50, 100)
    assert connection.rolling == (RollingCap(count=5, per=timedelta(minutes=30)),)
    assert connection.jitter == timedelta(seconds=90)
    assert (loaded.limits_for("email").daily, loaded.limits_for("email").weekly) == (None, None)
    assert loaded.limits_for("linkedin_message") == DEFAULT_LIMITS["linkedin_message"]


def test_a_policy_without_defaults_limits_only_what_it_names() -> None:
    bare = LimitPolicy.from_config({"use_defaults": False, "actions": {"email": {"daily": 5}}})

    assert bare.limits_for("email").daily == 5
    assert bare.limits_for("linkedin_connection") == ActionLimits()


def test_a_policy_survives_a_json_round_trip() -> None:
    original = policy(linkedin_connection={"rolling": [{"count": 5, "per": "30m"}]})

    assert LimitPolicy.model_validate_json(original.model_dump_json()) == original


def test_a_policy_is_frozen() -> None:
    with pytest.raises(ValidationError):
        DEFAULT_POLICY.use_defaults = False  # type: ignore[misc]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"actions": {"linkedin_connection": {"daliy": 5}}}, r"linkedin_connection.daliy: Extra"),
        ({"actions": {"fax": {"daily": 5}}}, r"actions.fax"),
        ({"action": {}}, r"action: Extra"),
        ({"actions": {"email": {"daily": -1}}}, r"email.daily: Input should be greater"),
        ({"actions": {"email": {"spacing": "soon"}}}, r"email.spacing"),
        ({"actions": {"email": {"spacing": -5}}}, r"email.spacing: Value error, must not be"),
        (
            {"actions": {"email": {"rolling": [{"count": 0, "per": "30m"}]}}},
            r"email.rolling.0.count",
        ),
        (
            {"actions": {"email": {"rolling": [{"count": 5, "per": "0m"}]}}},
            r"email.rolling.0.per: Value error, must be longer than zero",
        ),
    ],
)
def test_a_bad_policy_raises_configuration_error_naming_the_key(
    config: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        LimitPolicy.from_config(config)


# --- counts for the operator view -------------------------------------------------------------


def test_counts_show_today_and_this_week_per_type_on_the_identitys_clock() -> None:
    history = [
        Performed("email", madrid(2026, 11, 30, 9, 0)),  # Monday
        Performed("email", madrid(2026, 12, 2, 9, 0)),  # Wednesday
        Performed("email", madrid(2026, 12, 2, 10, 0)),
        Performed("linkedin_message", madrid(2026, 11, 29, 23, 30)),  # last week, Sunday
        Performed("linkedin_message", datetime(2026, 12, 1, 23, 30, tzinfo=UTC)),  # Wed 00:30
    ]

    usage = counts(DEFAULT_POLICY, history, madrid(2026, 12, 2, 12, 0), MADRID)

    assert usage["email"] == Usage(today=2, this_week=3, daily_cap=40, weekly_cap=None)
    assert usage["linkedin_message"] == Usage(today=1, this_week=1, daily_cap=50, weekly_cap=None)
    assert usage["linkedin_connection"] == Usage(0, 0, 20, 100)
    assert set(usage) == set(ACTION_TYPES)


# --- properties -------------------------------------------------------------------------------

SCHEDULES = [
    HOURS,
    ALWAYS,
    WorkingHours.from_config(
        {"timezone": "Asia/Kolkata", "weekly": {"fri": ["22:00-02:00"], "mon": ["09:00-11:30"]}}
    ),
    WorkingHours.from_config(
        {
            "timezone": "Australia/Adelaide",
            "weekly": {d: ["08:00-12:00", "13:00-17:30"] for d in DAY_KEYS[:6]},
            "holidays": ["2026-10-05"],
        }
    ),
    WorkingHours.from_config(
        {"timezone": "America/Santiago", "weekly": {d: ["00:00-03:00"] for d in DAY_KEYS}}
    ),
    WorkingHours.from_config({"timezone": "Europe/Madrid", "weekly": {"sun": ["01:00-04:00"]}}),
]
KIND: ActionType = "linkedin_connection"
OTHER: ActionType = "linkedin_message"
# 2026 clock changes: Madrid 03-29 and 10-25, Adelaide 04-05 and 10-04, Santiago 04-05 and 09-06.
AROUND = [datetime(2026, m, d, tzinfo=UTC) for m, d in [(3, 29), (4, 5), (9, 6), (10, 25)]]
AROUND.append(datetime(2026, 6, 17, tzinfo=UTC))


def minutes(m: int) -> timedelta:
    return timedelta(minutes=m)


def seconds(n: int) -> timedelta:
    return timedelta(seconds=n)


ROLLING_CAPS = st.builds(RollingCap, count=st.integers(1, 4), per=st.integers(1, 180).map(minutes))
KIND_LIMITS = st.builds(
    ActionLimits,
    daily=st.none() | st.integers(0, 6),
    weekly=st.none() | st.integers(0, 15),
    rolling=st.lists(ROLLING_CAPS, max_size=2).map(tuple),
    spacing=st.integers(0, 900).map(seconds),
    jitter=st.integers(0, 120).map(seconds),
)
POLICIES = KIND_LIMITS.map(lambda kind: LimitPolicy(use_defaults=False, actions={KIND: kind}))
MOMENTS = st.tuples(st.sampled_from(AROUND), st.integers(-4 * 86400, 4 * 86400).map(seconds))
AGO = st.integers(0, 86400) | st.integers(0, 8 * 86400)  # often today, so daily caps bite
PAST = st.lists(st.tuples(st.sampled_from([KIND, OTHER]), AGO), max_size=25)
# One situation in four has a provider block; more would hide the other limits behind it.
RETRY_AFTER = st.tuples(st.integers(0, 3), st.integers(0, 4 * 3600)).map(
    lambda drawn: drawn[1] if drawn[0] == 0 else None
)


@st.composite
def situations(draw: st.DrawFn) -> dict[str, Any]:
    hours = draw(st.sampled_from(SCHEDULES))
    around, offset = draw(MOMENTS)
    at = around + offset
    if draw(st.booleans()):  # half the time inside a window, where the limits get their say
        at = hours.next_open(at).astimezone(UTC) + seconds(draw(st.integers(0, 600)))
    retry_after = draw(RETRY_AFTER)
    return {
        "policy": draw(POLICIES),
        "working_hours": hours,
        "history": [Performed(kind, at - seconds(ago)) for kind, ago in draw(PAST)],
        "at": at,
        "blocked_until": {}
        if retry_after is None
        else learn_retry_after({}, KIND, at, retry_after),
        "seed": draw(st.integers(0, 2**32)),
    }


def decide_in(
    situation: dict[str, Any], at: datetime, history: Sequence[Performed] | None = None
) -> Proceed | NotYet:
    return decide(
        situation["policy"],
        situation["working_hours"],
        situation["history"] if history is None else history,
        KIND,
        at,
        random.Random(situation["seed"]),
        blocked_until=situation["blocked_until"],
    )


def assert_within_limits(situation: dict[str, Any], history: Sequence[Performed]) -> None:
    """Every day, ISO week and rolling window of the identity's clock stays within its caps,
    and no two actions of the type are closer than the spacing."""
    kind = situation["policy"].limits_for(KIND)
    zone = situation["working_hours"].timezone
    times = sorted(a.at.astimezone(UTC) for a in history if a.action_type == KIND)
    local = [t.astimezone(zone) for t in times]
    if kind.daily is not None:
        assert max(Counter(t.date() for t in local).values(), default=0) <= kind.daily
    if kind.weekly is not None:
        assert max(Counter(t.isocalendar()[:2] for t in local).values(), default=0) <= kind.weekly
    for cap in kind.rolling:
        for end in times:
            assert sum(end - cap.per < t <= end for t in times) <= cap.count
    assert all(b - a >= kind.spacing for a, b in itertools.pairwise(times))


@settings(max_examples=200, deadline=None)
@given(situation=situations())
def test_proceed_never_breaks_a_limit(situation: dict[str, Any]) -> None:
    at = situation["at"]
    decision = decide_in(situation, at)
    if isinstance(decision, NotYet):
        return
    assert situation["working_hours"].is_open(at)
    block = situation["blocked_until"].get(("linkedin", KIND))
    assert block is None or at >= block
    earlier = [a for a in situation["history"] if a.action_type == KIND]
    # The history may already break limits (it is random); what we add must not.
    if earlier:
        assert at - max(a.at for a in earlier) >= situation["policy"].limits_for(KIND).spacing
    kind = situation["policy"].limits_for(KIND)
    now = situation["working_hours"].local(at)
    same_day = [a for a in earlier if situation["working_hours"].local_date(a.at) == now.date()]
    assert kind.daily is None or len(same_day) + 1 <= kind.daily
    week = [
        a
        for a in earlier
        if situation["working_hours"].local(a.at).isocalendar()[:2] == now.isocalendar()[:2]
    ]
    assert kind.weekly is None or len(week) + 1 <= kind.weekly
    for cap in kind.rolling:
        assert sum(at - cap.per < a.at for a in earlier) + 1 <= cap.count


@settings(max_examples=100, deadline=None)
@given(situation=situations(), steps=st.lists(st.integers(0, 3 * 3600), min_size=1, max_size=25))
def test_a_dispatcher_obeying_decisions_never_breaks_a_limit(
    situation: dict[str, Any], steps: list[int]
) -> None:
    history: list[Performed] = []
    at = situation["at"]
    for step in steps:
        decision = decide_in(situation, at, history)
        if isinstance(decision, Proceed):
            history.append(Performed(KIND, at))
            at += timedelta(seconds=step)
        elif decision.capped:
            break
        else:
            at = decision.until
    assert all(situation["working_hours"].is_open(a.at) for a in history)
    assert_within_limits(situation, history)


@settings(max_examples=200, deadline=None)
@given(situation=situations(), fractions=st.lists(st.floats(0, 1), max_size=3))
def test_a_wait_is_never_longer_than_needed(
    situation: dict[str, Any], fractions: list[float]
) -> None:
    at = situation["at"]
    decision = decide_in(situation, at)
    if isinstance(decision, Proceed):
        return
    until = decision.until
    assert at < until <= at + MAX_WAIT
    if not decision.capped:
        assert isinstance(decide_in(situation, until), Proceed)
    just_before = until - timedelta(microseconds=1)
    for instant in [
        just_before,
        until - timedelta(minutes=1),
        *(at + (just_before - at) * f for f in fractions),
    ]:
        if at <= instant < until:
            assert isinstance(decide_in(situation, instant), NotYet), instant
