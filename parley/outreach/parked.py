"""Parked queues unpark themselves: the dispatcher asks the provider whether the account works
again, and moves the queue's actions back in their order when it does.

A queue is parked when its account cannot work (``parley.outreach.actions``): a LinkedIn session
that expired, a mailbox whose login is refused, a WhatsApp token that expired, InMail credits used
up. A human fixes the account at the provider — often without telling Parley — so the
dispatcher looks itself, at most once per ``every`` per parked queue, without performing
anything:

* ``linkedin``: the gateway's ``GET /v1/accounts/{id}`` says ``connected``;
* ``credits``: the same answer with InMail credits left;
* ``email-{mailbox}``: an SMTP login (and ``MAIL FROM`` the mailbox) succeeds;
* ``whatsapp``: the Cloud API reads the sender's phone number with the token.

Healthy: the queue is unparked by the same path as ``parley identity reconnect`` (which stays
for the impatient). Still down: it stays parked, and the answer is kept for ``identity show``.
No answer (the provider unreachable, no provider for the channel in this process): it stays
parked and is asked again an interval later.

The time of each look is stamped on the queue's ``identity.parked`` entry (``checked_at``, on
the driven clock like ``since``) under the identity's row lock *before* the provider is asked,
so several dispatcher runs or hosts never ask twice within an interval. A queue parked again
while the question was out (its ``since`` changed) is not unparked on that stale answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from parley.channels.base import HealthChecked, SenderHealth, SenderIdentity
from parley.db import queries
from parley.errors import ChannelError, IdentityExpired, NotFound
from parley.outreach import actions, dispatch
from parley.runtime import Runtime
from parley.vocabulary import CREDITS, channel_of_queue

log = logging.getLogger(__name__)

PROBE_TIMEOUT_SECONDS: Final = 30.0
"""A provider that does not answer within this is no answer; the next look is an interval on."""


@dataclass(frozen=True)
class _Look:
    """A look claimed under the identity's lock: whom to ask, and which parking it is about."""

    sender: SenderIdentity
    queue: str
    channel: str
    since: Any


async def check_parked_queues(rt: Runtime, every: timedelta) -> Counter[str]:
    """Look at every parked queue not looked at within ``every``; counts what became of them
    (``unparked``, ``still parked``, ``no answer``)."""
    now = rt.clock.now()
    async with rt.db.read() as session:
        candidates = await queries.actions.identities_with_parked_queues(session)
    due = [
        (identity_id, queue)
        for identity_id, parked in candidates
        for queue, entry in parked.items()
        if _due(entry, now, every)
    ]
    results: Counter[str] = Counter()
    for identity_id, queue in due:
        results[await check_queue(rt, identity_id, queue, every)] += 1
    return +results


async def check_queue(rt: Runtime, identity_id: int, queue: str, every: timedelta) -> str:
    """Look at one parked queue if it is due, and unpark it when its account works."""
    look = await _claim(rt, identity_id, queue, every)
    if look is None:
        return "not due"
    health = await _ask(rt, look)
    async with rt.db.transaction() as session:
        identity = await queries.identities.lock_identity(session, identity_id)
        entry = (identity.parked or {}).get(queue)
        if not isinstance(entry, dict) or entry.get("since") != look.since:
            return "changed meanwhile"  # reconnected, or parked again on a newer failure
        if health is not None and health.healthy:
            moved = await actions.unpark(session, identity, queue, rt.clock.now())
            log.warning(
                "identity %s: %s; %d action(s) unparked from %r", identity_id, health.detail,
                moved, queue,
            )  # fmt: skip
            return "unparked"
        said = health.detail if health is not None else "no answer from the provider"
        identity.parked = {**identity.parked, queue: {**entry, "check": said}}
    return "still parked" if health is not None else "no answer"


def _due(entry: object, now: datetime, every: timedelta) -> bool:
    """An interval after the last look, or after the parking when never looked at."""
    if not isinstance(entry, dict):
        return False
    last = _instant(entry.get("checked_at")) or _instant(entry.get("since"))
    return last is None or now - last >= every


def _instant(value: object) -> datetime | None:
    try:
        instant = datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None
    if instant is not None and instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    return instant


async def _claim(rt: Runtime, identity_id: int, queue: str, every: timedelta) -> _Look | None:
    async with rt.db.transaction() as session:
        try:
            identity = await queries.identities.lock_identity(session, identity_id)
        except NotFound:
            return None
        now = rt.clock.now()  # read once the identity is ours, like the dispatcher's claim
        entry = (identity.parked or {}).get(queue)
        if not isinstance(entry, dict) or not _due(entry, now, every):
            return None
        identity.parked = {**identity.parked, queue: {**entry, "checked_at": now.isoformat()}}
        channel = channel_of_queue(queue)
        sender = dispatch.sender_for(identity, channel)
        return _Look(sender, queue, channel, entry.get("since"))


async def _ask(rt: Runtime, look: _Look) -> SenderHealth | None:
    """The provider's answer: healthy, unhealthy (with why), or None when it gave none."""
    provider = rt.outreach.get(look.channel)
    if not isinstance(provider, HealthChecked):
        log.info("no health check for %s in this process; left parked", look.channel)
        return None
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
            health = await provider.check_sender(look.sender)
    except IdentityExpired as exc:
        return SenderHealth(False, f"{type(exc).__name__}: {exc}")
    except (ChannelError, TimeoutError) as exc:
        log.info("health check of %s %r: no answer (%r)", look.channel, look.sender.address, exc)
        return None
    return _credits(health) if look.queue == CREDITS and health.healthy else health


def _credits(health: SenderHealth) -> SenderHealth:
    credits = health.inmail_credits
    if credits is None or credits <= 0:
        return SenderHealth(False, f"{health.detail}, with no InMail credits left", credits)
    return SenderHealth(True, f"{health.detail}, with {credits} InMail credit(s)", credits)
