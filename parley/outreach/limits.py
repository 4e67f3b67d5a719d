"""May this sender identity perform this outreach action now, and if not, until when must it wait?

Pure logic, no I/O: the dispatcher passes the identity's policy, its working hours, the actions
it performed recently and what providers told us (429 / retry-after), and gets a ``Proceed`` or
a ``NotYet``. A ``NotYet`` lasts until the first instant at which *every* constraint passes at
once — a daily cap that frees at midnight waits for the next window's opening when midnight is
outside working hours — and never longer than six days.

Counting is conservative: an action in ``history`` counts wherever its time falls, even after
``at`` (clocks drift), so a ``Proceed`` never takes a cap over its limit.
"""

from __future__ import annotations

import random
import re
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Final, Literal
from zoneinfo import ZoneInfo

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from parley.errors import ConfigurationError
from parley.outreach.working_hours import MAX_WAIT, WorkingHours, describe_instant
from parley.vocabulary import ACTION_TYPES, CHANNEL_OF, ActionType, ChannelName

Reason = Literal[
    "outside_working_hours",
    "misconfigured_hours",
    "daily_cap",
    "weekly_cap",
    "rolling_cap",
    "spacing",
    "provider_limit",
]

DEFAULT_RETRY_AFTER: Final = timedelta(minutes=15)
"""How long a 429 blocks when the provider does not say (no ``Retry-After``)."""

MAX_ROUNDS: Final = 64
"""Bound on the search for an instant where all constraints pass; each round moves forward."""

BlockedUntil = Mapping[tuple[ChannelName, ActionType], datetime]
"""What providers told us: no action of this type on this channel before the instant."""


# --- the policy -------------------------------------------------------------------------------

_SHORT_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def _short_duration(value: object) -> object:
    """Read ``"30m"``, ``"1h30m"``, ``"45s"``, ``"2d"``; anything else goes to pydantic (seconds
    as a number, ISO 8601 such as ``"PT30M"``)."""
    if not isinstance(value, str):
        return value
    match = _SHORT_DURATION.match(value.strip())
    if match is None or not any(match.groups()):
        return value
    days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


def _not_negative(value: timedelta) -> timedelta:
    if value < timedelta(0):
        raise ValueError("must not be negative")
    return value


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be longer than zero")
    return value


Duration = Annotated[timedelta, BeforeValidator(_short_duration), AfterValidator(_not_negative)]
PositiveDuration = Annotated[Duration, AfterValidator(_positive)]
Cap = Annotated[int, Field(ge=0)]


class _Strict(BaseModel):
    # Unknown keys are errors: a misspelt `daliy` must not silently mean "no daily cap".
    model_config = ConfigDict(extra="forbid", frozen=True)


class RollingCap(_Strict):
    """At most ``count`` actions in any ``per``: one may proceed while fewer than ``count``
    were performed in the last ``per``."""

    count: Annotated[int, Field(ge=1)]
    per: PositiveDuration


class ActionLimits(_Strict):
    """Limits of one action type; ``None`` means no such cap. Caps of 0 forbid the action."""

    daily: Cap | None = None
    weekly: Cap | None = None
    rolling: tuple[RollingCap, ...] = ()
    spacing: Duration = timedelta(seconds=60)
    jitter: Duration = timedelta(0)  # up to this much is added to each spacing wait, at random


DEFAULT_LIMITS: Final[Mapping[ActionType, ActionLimits]] = {
    "linkedin_connection": ActionLimits(daily=20, weekly=100),
    "linkedin_message": ActionLimits(daily=50),
    "linkedin_inmail": ActionLimits(daily=20),
    "linkedin_profile_visit": ActionLimits(daily=50),
    "linkedin_attachment": ActionLimits(daily=30),
    "linkedin_voice": ActionLimits(daily=20),
    "linkedin_like_post": ActionLimits(daily=50),
    "email": ActionLimits(daily=40),
    # Meta paces per business/consumer pair (131056), not per number: templates to different
    # leads need no minute between them, or the daily cap could never be reached in office hours.
    "whatsapp_template": ActionLimits(daily=1000, spacing=timedelta(seconds=2)),
}
"""What outreach tools use when nobody says otherwise."""


class LimitPolicy(_Strict):
    """An identity's limits. With ``use_defaults`` (the default) each field given for an action
    type overrides ``DEFAULT_LIMITS`` and the rest is kept, so ``{linkedin_connection: {daily:
    50}}`` keeps the weekly 100; write ``weekly: null`` to drop a cap."""

    actions: dict[ActionType, ActionLimits] = Field(default_factory=dict)
    use_defaults: bool = True

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LimitPolicy:
        """Read a policy from decoded YAML/JSON; ``ConfigurationError`` names each bad key."""
        try:
            return cls.model_validate(config)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in problem['loc']) or '<policy>'}: {problem['msg']}"
                for problem in error.errors()
            )
            raise ConfigurationError(f"limits: {problems}") from None

    def limits_for(self, action_type: ActionType) -> ActionLimits:
        given = self.actions.get(action_type)
        if not self.use_defaults:
            return given if given is not None else ActionLimits()
        default = DEFAULT_LIMITS[action_type]
        if given is None:
            return default
        return default.model_copy(
            update={name: getattr(given, name) for name in given.model_fields_set}
        )


DEFAULT_POLICY: Final = LimitPolicy()

WEEK_OF_HISTORY: Final = timedelta(days=8)
"""This ISO week on any identity's clock: at most seven days back, plus the widest UTC offset."""


def history_needed(policy: LimitPolicy, action_type: ActionType) -> timedelta:
    """How far back ``decide`` must see ``action_type``'s performed actions: this ISO week
    (weekly caps), its longest rolling window, or its spacing, whichever reaches furthest. A
    shorter history would let ``{count: 2, per: 30d}`` proceed over two sends of nine days
    ago; a longer one only costs rows, on the dispatcher's path for every action."""
    if action_type not in ACTION_TYPES:  # as ``decide`` says it
        raise ValueError(f"unknown action type {action_type!r}; known: {', '.join(ACTION_TYPES)}")
    limits = policy.limits_for(action_type)
    return max([WEEK_OF_HISTORY, limits.spacing + limits.jitter, *(c.per for c in limits.rolling)])


# --- state and decisions -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Performed:
    """An action the identity performed (or handed to the provider) at ``at``."""

    action_type: ActionType
    at: datetime


@dataclass(frozen=True, slots=True)
class Proceed:
    action_type: ActionType
    at: datetime

    def explain(self) -> str:
        return f"{self.action_type} may proceed now"


@dataclass(frozen=True, slots=True)
class NotYet:
    """Do not act before ``until`` (UTC). ``reason`` and ``detail`` say what blocks at ``at``;
    ``capped`` means nothing passes within six days, so ``until`` is only when to ask again and
    the identity should be flagged."""

    action_type: ActionType
    at: datetime
    reason: Reason
    until: datetime
    detail: str
    timezone: ZoneInfo
    capped: bool = False

    @property
    def delay(self) -> timedelta:
        return self.until - self.at.astimezone(UTC)

    def explain(self) -> str:
        text = f"{self.detail}; next: {describe_instant(self.until, self.timezone)}"
        if self.capped:
            text += " (nothing allows it within 6 days: check this identity's hours and limits)"
        return text


Decision = Proceed | NotYet


@dataclass(frozen=True, slots=True)
class Usage:
    today: int
    this_week: int
    daily_cap: int | None
    weekly_cap: int | None


# --- deciding ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Blocked:
    reason: Reason
    detail: str
    free_at: datetime | None  # first instant >= the one checked this constraint allows; None: never


@dataclass(frozen=True, slots=True)
class _Situation:
    """Everything one decision looks at, with the history indexed once."""

    action_type: ActionType
    limits: ActionLimits
    hours: WorkingHours
    times: tuple[datetime, ...]  # UTC, sorted, of this action type only
    per_day: Counter[date] = field(hash=False, compare=False)
    per_week: Counter[tuple[int, int]] = field(hash=False, compare=False)
    gap: timedelta  # spacing plus this decision's jitter
    blocked_until: datetime | None


def decide(
    policy: LimitPolicy,
    working_hours: WorkingHours,
    history: Iterable[Performed],
    action_type: ActionType,
    at: datetime,
    rng: random.Random,
    *,
    blocked_until: BlockedUntil | None = None,
) -> Decision:
    """Proceed now, or wait until the first instant that working hours and every limit allow.

    Checks run in this order and the first that fails names the reason: working hours, daily,
    weekly and rolling caps, spacing, provider limits. Exactly one number is drawn from ``rng``
    (the spacing jitter), so a seeded ``Random`` makes decisions reproducible.
    """
    instant = _utc(at)
    situation = _situation(policy, working_hours, history, action_type, rng, blocked_until or {})
    blocks = _blocks(situation, instant)
    if not blocks:
        return Proceed(action_type=action_type, at=at)
    return _wait(situation, at, blocks[0], _first_allowed(situation, instant))


def counts(
    policy: LimitPolicy, history: Iterable[Performed], at: datetime, timezone: ZoneInfo
) -> dict[ActionType, Usage]:
    """Actions performed today and this ISO week on the identity's clock, by type, with the
    caps that apply: what an operator view shows."""
    local = _utc(at).astimezone(timezone)
    week = local.isocalendar()[:2]
    today: Counter[ActionType] = Counter()
    this_week: Counter[ActionType] = Counter()
    for action in history:
        performed = _utc(action.at).astimezone(timezone)
        today[action.action_type] += performed.date() == local.date()
        this_week[action.action_type] += performed.isocalendar()[:2] == week
    usage: dict[ActionType, Usage] = {}
    for kind in ACTION_TYPES:
        limits = policy.limits_for(kind)
        usage[kind] = Usage(today[kind], this_week[kind], limits.daily, limits.weekly)
    return usage


def learn_retry_after(
    blocked_until: BlockedUntil,
    action_type: ActionType,
    at: datetime,
    retry_after: float | None,
) -> dict[tuple[ChannelName, ActionType], datetime]:
    """The provider state after a 429 at ``at``: blocks only ever get longer."""
    delay = DEFAULT_RETRY_AFTER if retry_after is None else timedelta(seconds=max(retry_after, 0))
    key = (CHANNEL_OF[action_type], action_type)
    until = _utc(at) + delay
    updated = dict(blocked_until)
    if key in updated:
        until = max(until, _utc(updated[key]))
    updated[key] = until
    return updated


def _situation(
    policy: LimitPolicy,
    hours: WorkingHours,
    history: Iterable[Performed],
    action_type: ActionType,
    rng: random.Random,
    blocked_until: BlockedUntil,
) -> _Situation:
    if action_type not in ACTION_TYPES:
        raise ValueError(f"unknown action type {action_type!r}; known: {', '.join(ACTION_TYPES)}")
    limits = policy.limits_for(action_type)
    times = tuple(sorted(_utc(a.at) for a in history if a.action_type == action_type))
    local = [t.astimezone(hours.timezone) for t in times]
    block = blocked_until.get((CHANNEL_OF[action_type], action_type))
    return _Situation(
        action_type=action_type,
        limits=limits,
        hours=hours,
        times=times,
        per_day=Counter(t.date() for t in local),
        per_week=Counter(_iso_week(t.date()) for t in local),
        gap=limits.spacing + limits.jitter * rng.random(),
        blocked_until=None if block is None else _utc(block),
    )


def _first_allowed(situation: _Situation, start: datetime) -> datetime | None:
    """The least instant >= ``start`` that passes every check, or None beyond six days.

    Each check reports the first instant it would allow; jumping to the latest of them skips
    only instants some check refuses, so the first instant where none objects is the answer.
    """
    horizon = start + MAX_WAIT
    candidate = start
    for _ in range(MAX_ROUNDS):
        blocks = _blocks(situation, candidate)
        if not blocks:
            return candidate
        frees = [block.free_at for block in blocks]
        if None in frees:
            return None
        candidate = max(free for free in frees if free is not None)
        if candidate > horizon:
            return None
    return None


def _blocks(situation: _Situation, instant: datetime) -> list[_Blocked]:
    checks = (_hours, _daily, _weekly, _rolling, _spacing, _provider)
    return [block for check in checks if (block := check(situation, instant)) is not None]


def _wait(situation: _Situation, at: datetime, block: _Blocked, until: datetime | None) -> NotYet:
    return NotYet(
        action_type=situation.action_type,
        at=at,
        reason=block.reason,
        until=_utc(at) + MAX_WAIT if until is None else until,
        detail=block.detail,
        timezone=situation.hours.timezone,
        capped=until is None,
    )


def _misconfigured() -> _Blocked:
    return _Blocked(
        "misconfigured_hours", "no working-hours window opens within the next 7 days", None
    )


# --- the checks: each says what blocks at an instant and the first instant it would allow ------


def _hours(situation: _Situation, instant: datetime) -> _Blocked | None:
    hours = situation.hours
    opening = hours.opening(instant)
    if opening == instant:
        return None
    if opening is None:
        return _misconfigured()
    detail = f"outside working hours ({hours.describe(instant)})"
    return _Blocked("outside_working_hours", detail, opening)


def _daily(situation: _Situation, instant: datetime) -> _Blocked | None:
    cap = situation.limits.daily
    day = situation.hours.local_date(instant)
    done = situation.per_day[day]
    if cap is None or done < cap:
        return None
    detail = f"daily cap {cap} of {situation.action_type} reached ({done} today)"
    if cap == 0:
        return _Blocked("daily_cap", detail, None)
    free_day = day + timedelta(days=1)
    while situation.per_day[free_day] >= cap:
        free_day += timedelta(days=1)
    return _Blocked("daily_cap", detail, situation.hours.start_of_day(free_day))


def _weekly(situation: _Situation, instant: datetime) -> _Blocked | None:
    cap = situation.limits.weekly
    day = situation.hours.local_date(instant)
    done = situation.per_week[_iso_week(day)]
    if cap is None or done < cap:
        return None
    detail = f"weekly cap {cap} of {situation.action_type} reached ({done} this week)"
    if cap == 0:
        return _Blocked("weekly_cap", detail, None)
    monday = day - timedelta(days=day.weekday()) + timedelta(days=7)
    while situation.per_week[_iso_week(monday)] >= cap:
        monday += timedelta(days=7)
    return _Blocked("weekly_cap", detail, situation.hours.start_of_day(monday))


def _rolling(situation: _Situation, instant: datetime) -> _Blocked | None:
    times = situation.times
    for cap in situation.limits.rolling:
        recent = len(times) - bisect_right(times, instant - cap.per)
        if recent >= cap.count:
            # Allowed once only count-1 actions remain after (instant - per): the oldest of
            # the last `count` actions has to leave the window.
            free_at = times[len(times) - cap.count] + cap.per
            per = _format_duration(cap.per)
            detail = (
                f"rolling cap {cap.count} per {per} of {situation.action_type} reached "
                f"({recent} in the last {per})"
            )
            return _Blocked("rolling_cap", detail, free_at)
    return None


def _spacing(situation: _Situation, instant: datetime) -> _Blocked | None:
    if not situation.times:
        return None
    last = situation.times[-1]
    free_at = last + situation.gap
    if instant >= free_at:
        return None
    detail = (
        f"{situation.action_type} spaced {_format_duration(situation.gap)} apart; "
        f"the last one was at {situation.hours.describe(last)}"
    )
    return _Blocked("spacing", detail, free_at)


def _provider(situation: _Situation, instant: datetime) -> _Blocked | None:
    until = situation.blocked_until
    if until is None or instant >= until:
        return None
    channel = CHANNEL_OF[situation.action_type]
    detail = f"{channel} rate-limited {situation.action_type} (provider said retry later)"
    return _Blocked("provider_limit", detail, until)


# --- small helpers -----------------------------------------------------------------------------


def _utc(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"{at.isoformat()} is naive; limits need a timezone-aware time")
    return at.astimezone(UTC)


def _iso_week(day: date) -> tuple[int, int]:
    year, week, _ = day.isocalendar()
    return year, week


def _format_duration(duration: timedelta) -> str:
    """``30m``, ``1h30m``, ``1m12.5s``: how policies write durations."""
    seconds = duration.total_seconds()
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{int(hours)}h" if hours else "", f"{int(minutes)}m" if minutes else ""]
    if seconds or not any(parts):
        parts.append(f"{seconds:g}s" if seconds == int(seconds) else f"{seconds:.1f}s")
    return "".join(parts)
