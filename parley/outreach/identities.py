"""Sender identities (a mailbox, a LinkedIn seat, a WhatsApp number): adding and changing them,
the policy that paces them, reconnecting a parked channel, and saying why their queue is or is
not moving.

An identity's ``policy`` column holds ``{"working_hours": {...}, "limits": {...}}`` as its owner
wrote it (YAML or JSON, decoded), minus the timezone: the identity's ``timezone`` column is the
one place that says which clock its windows and daily caps are read on, so moving a mailbox to
another timezone is one change. ``IdentityPolicy.from_config`` turns the stored mapping into the
``WorkingHours`` and ``LimitPolicy`` that ``parley.outreach.limits.decide`` takes; every part left
out gets the default outreach tools use (Mon-Fri 09:00-18:00 on the identity's clock,
``DEFAULT_POLICY``).

WhatsApp numbers (``parley.conversation.whatsapp_numbers``): an identity's templates and
conversation messages go out from its own number, and inbound messages are routed back to it by
that number, so no two identities may claim one.

Each identity also needs a Prefect global concurrency limit ``identity-{id}`` (one action at a
time): that is Prefect, so ``prefect_adapter/outreach_tick.py`` creates it, not this module.

``explain`` is what ``parley identity show`` and ``GET /api/identities/{id}`` return: it runs
the dispatcher's own decision (``decide``, with a fixed ``random.Random(0)`` for the jitter) on
the next ready action, so the sentence it gives is the reason the dispatcher would give.
"""

from __future__ import annotations

import functools
import json
import random
import re
import shlex
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, ConfigDict, InstanceOf
from sqlalchemy.exc import IntegrityError

from parley.clock import Clock, SystemClock
from parley.conversation.whatsapp_numbers import WHATSAPP, whatsapp_number_in, whatsapp_settings_in
from parley.db import Database, queries
from parley.db.models import Action, Identity
from parley.errors import AlreadyExists, ConfigurationError, InvalidInput
from parley.outreach import actions
from parley.outreach.limits import (
    DEFAULT_POLICY,
    BlockedUntil,
    LimitPolicy,
    NotYet,
    Performed,
    counts,
    decide,
    history_needed,
)
from parley.outreach.working_hours import (
    DAY_KEYS,
    DEFAULT_WEEKLY,
    WorkingHours,
    default_working_hours,
    describe_instant,
)
from parley.vocabulary import (
    ACTION_TYPES,
    CHANNEL_OF,
    CREDITS,
    PAUSED,
    READY,
    ActionType,
    ChannelName,
)

CHANNELS: Final = ("email", "linkedin", "whatsapp")
POLICY_KEYS: Final = frozenset({"working_hours", "limits"})
MASK: Final = "•••"

_SECRET = re.compile(r"password|secret|token|api_?key|private", re.IGNORECASE)
_RECONNECT_HELP = (
    "linkedin (its session), whatsapp (its token), email (its mailbox), credits (InMails) or a "
    "parked queue's exact name (email-{mailbox})"
)
_QUEUE_KINDS: Final = frozenset({"linkedin", "whatsapp", CREDITS})
_DESTINATION = re.compile(
    r"(?:^|_)(?:url|uri|endpoint|host|hostname|server|port|tls|starttls|ssl)(?:$|_)",
    re.IGNORECASE,
)
"""Settings that say where (and how safely) the identity's secrets are sent: ``gateway_url``,
``smtp_host``, ``smtp_port``, ``use_tls``, ``starttls`` and their kind (not ``support_email``)."""


# --- the policy --------------------------------------------------------------------------------


class IdentityPolicy(BaseModel):
    """What paces one identity: when it may act and how much. Build it with ``from_config`` so
    each bad key is named."""

    model_config = ConfigDict(frozen=True)

    working_hours: InstanceOf[WorkingHours]
    limits: LimitPolicy = DEFAULT_POLICY

    @classmethod
    def default(cls, timezone: str = "UTC") -> IdentityPolicy:
        return cls(working_hours=default_working_hours(timezone))

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any] | None, *, timezone: str = "UTC"
    ) -> IdentityPolicy:
        """Read a decoded policy on the identity's clock ``timezone``. Raise
        ``ConfigurationError`` naming every bad part: unknown keys, the first problem of
        ``working_hours`` and each one of ``limits``."""
        if config is None:
            config = {}
        if not isinstance(config, Mapping):
            raise ConfigurationError(f"policy: expected a mapping, got {config!r}")
        problems: list[str] = []
        unknown = sorted(str(key) for key in set(config) - POLICY_KEYS)
        if unknown:
            problems.append(f"policy: unknown key(s) {unknown}; allowed: limits, working_hours")
        hours = limits = None
        try:
            hours = _working_hours(config.get("working_hours"), timezone)
        except ConfigurationError as error:
            problems.append(str(error))
        try:
            limits = _limits(config.get("limits"))
        except ConfigurationError as error:
            problems.append(str(error))
        if problems or hours is None or limits is None:
            raise ConfigurationError("invalid policy: " + "; ".join(problems))
        return cls(working_hours=hours, limits=limits)


def _working_hours(config: object, timezone: str) -> WorkingHours:
    if config is None:
        return default_working_hours(timezone)
    if not isinstance(config, Mapping):
        raise ConfigurationError(f"working_hours: expected a mapping, got {config!r}")
    given = config.get("timezone", timezone)
    if given != timezone:
        raise ConfigurationError(
            f"working_hours.timezone: {given!r} differs from the identity's timezone "
            f"{timezone!r}; set the identity's timezone instead"
        )
    return WorkingHours.from_config(
        {"weekly": dict(DEFAULT_WEEKLY), **config, "timezone": timezone}
    )


def _limits(config: object) -> LimitPolicy:
    if config is None:
        return DEFAULT_POLICY
    if not isinstance(config, Mapping):
        raise ConfigurationError(f"limits: expected a mapping, got {config!r}")
    return LimitPolicy.from_config(config)


def policy_of(identity: Identity) -> IdentityPolicy:
    """The stored policy as the dispatcher uses it (it was validated when stored). Read once
    per distinct policy, not per action: a country's holiday calendar alone takes ~3 ms to
    build, and most identities of an installation share a handful of policies."""
    stored = json.dumps(identity.policy, sort_keys=True, default=str)
    return _read_policy(stored, identity.timezone)


@functools.lru_cache(maxsize=1024)
def _read_policy(stored: str, timezone: str) -> IdentityPolicy:
    return IdentityPolicy.from_config(json.loads(stored), timezone=timezone)


def blocked_of(identity: Identity) -> BlockedUntil:
    """``identity.blocked_until`` ("channel/action_type" -> ISO instant) as ``decide`` takes
    it; entries that cannot be read are left out rather than blocking forever."""
    blocked: dict[tuple[ChannelName, ActionType], datetime] = {}
    for key, until in (identity.blocked_until or {}).items():
        channel, _, kind = str(key).partition("/")
        if kind not in ACTION_TYPES or CHANNEL_OF[kind] != channel:
            continue
        try:
            instant = datetime.fromisoformat(str(until))
        except ValueError:
            continue
        if instant.tzinfo is None:
            instant = instant.replace(tzinfo=UTC)
        blocked[(channel, kind)] = instant
    return blocked


async def _check_whatsapp_number(
    session: Any, identity_id: int | None, channel: str, address: str, settings: Mapping[str, Any]
) -> None:
    """Two identities never share a WhatsApp number: a lead's reply is routed to the identity
    that owns the number it arrived on (``parley.conversation.inbox``)."""
    given = whatsapp_settings_in(channel, settings).get("phone_number_id")
    where = "phone_number_id" if channel == WHATSAPP else "whatsapp.phone_number_id"
    if given is not None and not re.fullmatch(r"\d{5,20}", str(given)):
        raise InvalidInput(f"settings.{where}: {given!r} is not a WhatsApp phone number id: digits")
    if channel == WHATSAPP and given is None and not address.isdigit():
        raise InvalidInput(
            f"address: {address!r} is a display number, not Meta's phone number id: give the "
            "number's id as settings.phone_number_id (templates go out from it)"
        )
    number = whatsapp_number_in(channel, address, settings)
    if number is None:
        return
    others = [
        other
        for other in await queries.identities.whatsapp_number_claimers(session, number)
        if other.id != identity_id
    ]
    if others:
        raise AlreadyExists(
            f"the WhatsApp number {number} belongs to identity {others[0].id} "
            f"({others[0].channel} {others[0].address!r}) already; two identities cannot "
            "share a number: its leads' replies would reach only one of them"
        )


# --- validating what operators give ------------------------------------------------------------


def _channel(channel: str) -> str:
    if channel not in CHANNELS:
        raise InvalidInput(f"channel: {channel!r} is not one of {', '.join(CHANNELS)}")
    return channel


def _address(channel: str, address: str) -> str:
    """Email addresses are checked (syntax only: no DNS) and normalised, so the same mailbox
    typed twice is one identity; other addresses are provider ids."""
    address = address.strip()
    if channel == "email":
        try:
            return validate_email(address, check_deliverability=False).normalized
        except EmailNotValidError as error:
            raise InvalidInput(f"address: {address!r} is not an email address ({error})") from None
    if channel == "whatsapp" and not re.fullmatch(r"\+?\d{5,20}", address):
        raise InvalidInput(f"address: {address!r} is not a WhatsApp phone number (id): digits")
    if not address or len(address) > 255 or any(c.isspace() for c in address):
        raise InvalidInput(f"address: {address!r} is not a {channel} account id")
    return address


def _timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(
            f"timezone: unknown timezone {name!r} (expected an IANA name such as 'Europe/Madrid')"
        ) from None
    return name


def _name(name: str | None) -> str | None:
    if name is not None and len(name) > 100:
        raise InvalidInput("name: at most 100 characters")
    return name or None


def _json_value(value: object) -> object:
    if isinstance(value, date | datetime):
        return value.isoformat()  # YAML reads an unquoted 2026-12-25 as a date
    raise InvalidInput(f"{value!r} cannot be stored as JSON")


def _json_object(value: Mapping[str, Any], what: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidInput(f"{what}: expected a mapping, got {value!r}")
    stored = json.loads(json.dumps(dict(value), default=_json_value))
    return cast(dict[str, Any], stored)


def _secrets_follow(
    stored: Mapping[str, Any],
    changed: Mapping[str, Any],
    given: Mapping[str, Any],
    where: str = "settings",
) -> None:
    """Refuse a change of where a stored secret is sent (a gateway URL, an SMTP host, port or
    TLS setting) unless the secret is given again (or removed) in the same change: whoever
    sees only ``•••`` must not be able to point the stored API key or password at a server of
    their own and receive it with the next action. A masked value is never a secret given."""
    for key, value in given.items():
        if _SECRET.search(str(key)) and value == MASK:
            raise InvalidInput(f"{where}.{key}: {MASK} is the masked value; give the secret")
    for key, value in changed.items():
        old, new = stored.get(key), given.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            _secrets_follow(old, value, new if isinstance(new, Mapping) else {}, f"{where}.{key}")
    moved = sorted(
        str(key)
        for key in {*stored, *changed}
        if _DESTINATION.search(str(key))
        and not _SECRET.search(str(key))
        and stored.get(key) != changed.get(key)
    )
    kept = sorted(
        str(key)
        for key, value in changed.items()
        if _SECRET.search(str(key))
        and not isinstance(value, Mapping)
        and value not in (None, "")
        and key not in given
    )
    if moved and kept:
        secrets, fields = " and ".join(kept), ", ".join(f"{where}.{key}" for key in moved)
        raise InvalidInput(
            f"{fields}: changing where the stored {secrets} is sent needs {secrets} again: "
            f"give {', '.join(f'{where}.{key}' for key in kept)} in the same change "
            "(or null to remove it)"
        )


def _policy_timezone(policy: Mapping[str, Any] | None) -> str | None:
    hours = (policy or {}).get("working_hours") if isinstance(policy, Mapping) else None
    zone = hours.get("timezone") if isinstance(hours, Mapping) else None
    return zone if isinstance(zone, str) else None


def _checked_policy(policy: Mapping[str, Any] | None, timezone: str) -> dict[str, Any]:
    """Validate on the identity's clock and return what is stored: JSON, without a timezone."""
    try:
        IdentityPolicy.from_config(policy, timezone=timezone)
    except ConfigurationError as error:
        raise InvalidInput(str(error)) from None
    stored = _json_object(policy or {}, "policy")
    hours = stored.get("working_hours")
    if isinstance(hours, dict):
        hours.pop("timezone", None)
    return stored


def _resolve_timezone(given: str | None, policy: Mapping[str, Any] | None, current: str) -> str:
    """The explicit ``timezone``, else the policy's ``working_hours.timezone``, else
    ``current``; both given and different is refused rather than guessed."""
    from_policy = _policy_timezone(policy)
    if given is not None and from_policy is not None and given != from_policy:
        raise InvalidInput(
            f"working_hours.timezone: {from_policy!r} differs from timezone {given!r}"
        )
    return _timezone(given or from_policy or current)


# --- adding, listing, changing -----------------------------------------------------------------


async def add_identity(
    db: Database,
    channel: str,
    address: str,
    *,
    name: str | None = None,
    timezone: str | None = None,
    policy: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Create a sender identity; everything is checked before anything is written.
    ``AlreadyExists`` when the channel has that address already, ``InvalidInput`` naming the
    bad field otherwise."""
    channel = _channel(channel)
    address = _address(channel, address)
    zone = _resolve_timezone(timezone, policy, "UTC")
    stored_settings = _json_object(settings or {}, "settings")
    values = {
        "channel": channel,
        "address": address,
        "name": _name(name),
        "timezone": zone,
        "policy": _checked_policy(policy, zone),
        "settings": stored_settings,
    }
    duplicate = f"the {channel} identity {address!r} exists already"
    try:
        async with db.transaction() as session:
            existing = await queries.identities.find_identity(session, channel, address)
            if existing is not None:
                raise AlreadyExists(f"{duplicate} (id {existing.id})")
            await _check_whatsapp_number(session, None, channel, address, stored_settings)
            identity = await queries.identities.insert_identity(session, values)
            return _summary(identity, {})
    except IntegrityError:  # added by someone else between the look and the insert
        raise AlreadyExists(duplicate) from None


async def list_identities(db: Database) -> list[dict[str, Any]]:
    async with db.read() as session:
        identities = await queries.identities.all_identities(session)
        queued = await queries.actions.queued_action_counts(session)
    return [_summary(identity, _counts_of(queued, identity.id)) for identity in identities]


async def update_identity(
    db: Database,
    identity_id: int,
    *,
    name: str | None = None,
    timezone: str | None = None,
    policy: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
    clear_flag: bool = False,
    clock: Clock | None = None,
) -> dict[str, Any]:
    """Change what is given and keep the rest. ``name=""`` clears the name; ``policy``
    replaces the whole policy; ``settings`` are merged key by key (a ``None`` value removes a
    key), so a password need not be typed again to change a username — but it must be to
    change where it is sent (``_secrets_follow``). A new timezone re-checks the stored policy
    on the new clock.

    A changed policy or timezone takes effect now, not when the old one's waits run out: the
    actions the dispatcher put off under the old one are due again, in the same transaction,
    and the dispatcher is told, so it decides each under the new one at once (a wider window
    sends them, a narrower one puts them off further). ``clock`` is the one the dispatcher
    decides on (a driven clock in rehearsals); the system clock otherwise."""
    async with db.transaction() as session:
        identity = await queries.identities.lock_identity(session, identity_id)
        before = (identity.policy, identity.timezone)
        zone = _resolve_timezone(timezone, policy, identity.timezone)
        if policy is not None or zone != identity.timezone:
            identity.policy = _checked_policy(
                policy if policy is not None else identity.policy, zone
            )
        identity.timezone = zone
        if name is not None:
            identity.name = _name(name)
        if settings is not None:
            given = _json_object(settings, "settings")
            merged = {**identity.settings, **given}
            merged = {key: value for key, value in merged.items() if value is not None}
            _secrets_follow(identity.settings, merged, given)
            await _check_whatsapp_number(
                session, identity.id, identity.channel, identity.address, merged
            )
            identity.settings = merged
        if clear_flag:
            identity.flagged = None
        await session.flush()
        if (identity.policy, identity.timezone) != before:
            now = (clock or SystemClock()).now()
            if await queries.actions.redecide_put_off(session, identity.id, now):
                await queries.actions.notify_action_ready(session, identity.id)
        queued = await queries.actions.queued_action_counts(session, identity.id)
        return _summary(identity, _counts_of(queued, identity.id))


def parked_queue(identity: Identity, name: str, queues: Iterable[str] = ()) -> str:
    """The parked queue ``name`` means for this identity: its exact name as ``identity show``
    prints it (``linkedin``, ``whatsapp``, ``credits``, ``email-{mailbox}``), or ``email`` for
    its mailbox's queue (a LinkedIn seat's fallback mailbox included). ``queues`` are those
    holding queued actions now. A queue of the identity's own accounts (its channel, its
    ``settings`` mailbox, credits for a seat) is accepted even when nothing is parked in it (0
    moved); another only while something is parked in it — a typo is refused, not ignored."""
    name = name.strip()
    if name == "email":
        queue = queries.actions.channel_queue(identity, "email")
    elif name in _QUEUE_KINDS or (name.startswith("email-") and len(name) > len("email-")):
        queue = name
    else:
        raise InvalidInput(f"channel: {name!r} cannot be reconnected; use {_RECONNECT_HELP}")
    parked = set(identity.parked or {}) | {q for q in queues if q != READY}
    if queue in parked or queue in _own_queues(identity):
        return queue
    raise InvalidInput(
        f"channel: {name!r} cannot be reconnected: identity {identity.id} is a "
        f"{identity.channel} identity and nothing of it is parked in {queue!r} (parked: "
        f"{', '.join(sorted(parked)) or 'nothing'})"
    )


def _own_queues(identity: Identity) -> set[str]:
    own = {queries.actions.channel_queue(identity, identity.channel)}
    if identity.channel == "linkedin":
        own.add(CREDITS)
    for channel in CHANNELS:  # accounts on other channels: settings[channel] = {address, ...}
        nested = (identity.settings or {}).get(channel)
        if isinstance(nested, Mapping) and nested.get("address"):
            own.add(queries.actions.channel_queue(identity, channel))
    return own


def reconnect_command(identity_id: int, queue: str) -> str:
    """What an operator types to unpark ``queue`` now (``identity show`` prints it)."""
    return f"parley identity reconnect {identity_id} {shlex.quote(queue)}"


async def reconnect(
    db: Database, identity_id: int, channel: str, *, now: datetime | None = None
) -> int:
    """Unpark one queue of an identity after a human fixed it: its actions go back to the
    ready queue in their original order (``not_before``, then id), other parked queues stay
    parked. The same path as the dispatcher's own health check (``parley.outreach.parked``).
    Returns how many actions were unparked (0 when it was not parked)."""
    moment = now or datetime.now(UTC)
    async with db.transaction() as session:
        identity = await queries.identities.lock_identity(session, identity_id)
        queued = await queries.actions.queued_action_counts(session, identity.id)
        queue = parked_queue(identity, channel, (q for _, q in queued))
        return await actions.unpark(session, identity, queue, moment)


# --- what operators see --------------------------------------------------------------------------


def mask_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Provider settings as many people may read them: passwords, API keys and tokens hidden
    (their presence still shows), everything else as it is."""
    masked: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, Mapping):
            masked[key] = mask_settings(value)
        elif _SECRET.search(str(key)) and value not in (None, ""):
            masked[key] = MASK
        else:
            masked[key] = value
    return masked


def _counts_of(queued: Mapping[tuple[int, str], int], identity_id: int) -> dict[str, int]:
    return {queue: n for (owner, queue), n in queued.items() if owner == identity_id}


def _summary(identity: Identity, queued: Mapping[str, int]) -> dict[str, Any]:
    parked = {
        queue: {
            "reason": (entry or {}).get("reason"),
            "since": (entry or {}).get("since"),
            "actions": queued.get(queue, 0),
        }
        for queue, entry in sorted((identity.parked or {}).items())
    }
    return {
        "id": identity.id,
        "channel": identity.channel,
        "address": identity.address,
        "name": identity.name,
        "timezone": identity.timezone,
        "policy": identity.policy,
        "settings": mask_settings(identity.settings or {}),
        "parked": parked,
        "blocked_until": dict(identity.blocked_until or {}),
        "flagged": identity.flagged,
        "queued": {
            "ready": queued.get(READY, 0),
            "parked": sum(n for queue, n in queued.items() if queue not in (READY, PAUSED)),
            "held": queued.get(PAUSED, 0),  # their conversation or campaign is paused
        },
        "created_at": identity.created_at.isoformat(),
    }


async def explain(
    db: Database, identity_id: int, *, now: datetime | None = None, clock: Clock | None = None
) -> dict[str, Any]:
    """Everything ``parley identity show`` says: the identity, its parked queues, what it did
    today and this week against its caps, its queue, and one sentence on why the queue is not
    moving and when it will. ``now`` wins over ``clock`` (the driven clock sent actions were
    recorded on); the system clock otherwise."""
    moment = now or (clock or SystemClock()).now()
    async with db.read() as session:
        identity = await queries.identities.get_identity(session, identity_id)
        queued = _counts_of(
            await queries.actions.queued_action_counts(session, identity_id), identity_id
        )
        policy = policy_of(identity)
        since = moment - _lookback(policy.limits)
        sent = await queries.actions.sent_history(session, identity_id, since)
        next_action = await queries.actions.next_ready_action(session, identity_id)
        uncertain = await queries.actions.uncertain_action_count(session, identity_id)
    history = [Performed(kind, at) for kind, at in sent if kind in ACTION_TYPES]
    hours = policy.working_hours
    detail = _summary(identity, queued)
    usage = counts(policy.limits, history, moment, hours.timezone)
    detail.update(
        now=moment.isoformat(),
        working_hours=_hours_view(hours, moment),
        usage={
            kind: {
                "today": used.today,
                "this_week": used.this_week,
                "daily_cap": used.daily_cap,
                "weekly_cap": used.weekly_cap,
            }
            for kind, used in usage.items()
            if CHANNEL_OF[kind] == identity.channel
        },
        next_action=_action_view(next_action),
        uncertain=uncertain,
        unpark=_unpark_view(identity),
        status=_status(identity, policy, history, next_action, detail["parked"], moment),
    )
    return detail


def _lookback(limits: LimitPolicy) -> timedelta:
    return max(history_needed(limits, kind) for kind in ACTION_TYPES)


def _hours_view(hours: WorkingHours, now: datetime) -> dict[str, Any]:
    opens = hours.next_open(now)
    return {
        "timezone": hours.timezone.key,
        "weekly": {
            day: [str(window) for window in windows]
            for day, windows in zip(DAY_KEYS, hours.weekly, strict=True)
        },
        "holidays": sorted(day.isoformat() for day in hours.holidays),
        "country": hours.country,
        "open_now": hours.is_open(now),
        "next_open": opens.astimezone(UTC).isoformat(),
        "next_open_local": hours.describe(opens),
    }


def _action_view(action: Action | None) -> dict[str, Any] | None:
    if action is None:
        return None
    return {
        "id": action.id,
        "type": action.type,
        "conversation_id": action.conversation_id,
        "not_before": action.not_before.isoformat(),
        "attempts": action.attempts,
        "reason": action.reason,
    }


def format_wait(delay: timedelta) -> str:
    """``63 h 59 min``, ``12 min``, ``less than a minute``: how long, as an operator reads it."""
    minutes = int(delay.total_seconds() // 60)
    if minutes <= 0:
        return "less than a minute"
    hours, minutes = divmod(minutes, 60)
    return " ".join(part for part in (f"{hours} h" if hours else "", f"{minutes} min") if part)


def _status(
    identity: Identity,
    policy: IdentityPolicy,
    history: list[Performed],
    action: Action | None,
    parked: Mapping[str, Mapping[str, Any]],
    now: datetime,
) -> dict[str, Any]:
    """Why the queue is (not) moving: the dispatcher's decision on the next ready action."""
    parked_note = _parked_note(identity, parked)
    if action is None:
        if parked_note:
            return _said("parked", None, now, f"not moving: nothing is ready; {parked_note}")
        return _said("idle", None, now, "nothing is queued")
    label = f"the next action ({action.type} #{action.id})"
    also = f" Also {parked_note}" if parked_note else ""
    if action.type not in ACTION_TYPES:
        return _said("unknown_type", None, now, f"not moving: {label} has an unknown type.{also}")
    at = max(now, action.not_before)
    decision = decide(
        policy.limits,
        policy.working_hours,
        history,
        action.type,
        at,
        random.Random(0),
        blocked_until=blocked_of(identity),
    )
    zone = policy.working_hours.timezone
    if isinstance(decision, NotYet):
        return _said(decision.reason, decision.until, now, _waiting(decision, label, now) + also)
    if at > now:
        when = f"{describe_instant(at, zone)}, in {format_wait(at - now)}"
        why = f" ({action.reason})" if action.reason else ""  # the dispatcher's last decision
        return _said("not_due", at, now, f"{label} is not due before {when}{why}.{also}")
    return _said("moving", None, now, f"moving: {label} may proceed now.{also}")


def _waiting(wait: NotYet, label: str, now: datetime) -> str:
    when = f"{describe_instant(wait.until, wait.timezone)}, in {format_wait(wait.until - now)}"
    if wait.reason == "outside_working_hours":
        return f"not moving: {wait.detail}; the next window opens {when} ({label})."
    text = f"not moving: {label} waits: {wait.detail}; it may go {when}."
    if wait.capped:
        text += " Nothing allows it within 6 days: check this identity's hours and limits."
    return text


def _parked_note(identity: Identity, parked: Mapping[str, Mapping[str, Any]]) -> str:
    notes = []
    for queue, entry in parked.items():
        notes.append(
            f"{entry['actions']} action(s) parked in {queue!r} since {entry['since']} "
            f"({entry['reason'] or 'no reason recorded'}): the dispatcher moves them back once "
            f"the account works again, `{reconnect_command(identity.id, queue)}` now"
        )
    return "; ".join(notes) + ("." if notes else "")


def _unpark_view(identity: Identity) -> dict[str, Any]:
    """Per parked queue: the exact command and REST call that unpark it now, and the
    dispatcher's last look at the account (``parley.outreach.parked``)."""
    view: dict[str, Any] = {}
    for queue, entry in sorted((identity.parked or {}).items()):
        known = entry if isinstance(entry, Mapping) else {}
        view[queue] = {
            "command": reconnect_command(identity.id, queue),
            "rest": {
                "method": "POST",
                "path": f"/api/identities/{identity.id}/reconnect",
                "body": {"channel": queue},
            },
            "checked_at": known.get("checked_at"),
            "check": known.get("check"),
        }
    return view


def _said(state: str, until: datetime | None, now: datetime, sentence: str) -> dict[str, Any]:
    return {
        "state": state,
        "until": until.astimezone(UTC).isoformat() if until else None,
        "wait_seconds": int((until - now).total_seconds()) if until else None,
        "sentence": sentence,
    }
