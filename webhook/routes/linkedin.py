"""The LinkedIn gateway's signed webhooks (``parley.channels.linkedin.wire``): a lead's new
message, an accepted connection request, a seat's expired session.

Thin like the WhatsApp route: verify (401), read the whole body (400), store durably
(``parley.conversation.inbox``), answer 200, and only then wake runs. Unlike WhatsApp, a lead only
ever
*answers* outreach we started: a message from a profile with no active conversation is recorded
as an ``unmatched_message`` webhook event, never the start of a conversation on the default
(WhatsApp onboarding) campaign. A message that does reach its conversation is what stops a
sequence: the planner interrupts the wait, the dispatcher's freshness check skips queued actions.

The two account events are recorded as webhook events too, and acted on in the request, so a
200 means it was done and a failure (5xx) makes the gateway deliver again; both acts are
idempotent. An accepted connection is a ``field_changed`` signal (``linkedin_connected: true``)
to the lead's active conversation, whose run is resumed only if its edges read that field
(``when: connection_accepted``, or the older ``{field: linkedin_connected, ...}``). An
expired session parks the seat's queued LinkedIn actions (other channels keep flowing) until the
gateway reports the seat connected again (the dispatcher asks, ``parley.outreach.parked``) or an
operator runs ``parley identity reconnect ID linkedin``.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

from fastapi import APIRouter, BackgroundTasks, Depends, HTTPException, Request

from parley.channels.linkedin.channel import LinkedInChannel
from parley.channels.linkedin.wire import CHANNEL, GatewayEvent, GatewayEventKind
from parley.clock import clock_from
from parley.conversation import lifecycle
from parley.conversation.lifecycle import Change
from parley.db import Database, queries
from parley.errors import (
    ConcurrentUpdate,
    IdentityExpired,
    TransitionNotAllowed,
)
from parley.outreach import actions
from parley.settings import Settings
from parley.vocabulary import LINKEDIN_CONNECTED_FIELD
from prefect_adapter.runs import carry_out
from webhook.deps import DbDep, RuntimeDep, SettingsDep, read_signed, store_and_wake

CONNECTED_FIELD: Final = LINKEDIN_CONNECTED_FIELD  # what `when: connection_accepted` reads

router = APIRouter(prefix="/webhooks/linkedin", tags=["linkedin"])


def _linkedin(request: Request) -> LinkedInChannel:
    return request.app.state.linkedin  # type: ignore[no-any-return]


LinkedInDep = Annotated[LinkedInChannel, Depends(_linkedin)]


@router.post("")
async def receive(
    request: Request,
    background: BackgroundTasks,
    settings: SettingsDep,
    db: DbDep,
    rt: RuntimeDep,
    channel: LinkedInDep,
) -> dict[str, Any]:
    batch, events = read_signed(
        await request.body(),
        request.headers,
        channel.verify,
        lambda raw: (channel.parse(raw), channel.events(raw)),
    )
    # No campaign: messages reach active conversations only (see the module doc).
    result = await store_and_wake(rt, settings, background, batch, None)
    signalled = parked = 0
    for event in events:
        if event.kind is GatewayEventKind.CONNECTION_ACCEPTED:
            change = await _connection_accepted(db, event)
            if change is not None:
                signalled += 1
                if change.run != "none":
                    background.add_task(carry_out, db, settings, change)
        elif event.kind is GatewayEventKind.SESSION_EXPIRED:
            parked += await _session_expired(db, settings, event)
    return {
        "stored": result.stored,
        "duplicates": result.duplicates,
        "statuses": result.statuses,
        "ignored": result.ignored,
        "unmatched": result.unmatched,
        "signalled": signalled,
        "parked": parked,
    }


async def _connection_accepted(db: Database, event: GatewayEvent) -> Change | None:
    """The signal to the lead's active conversation with this seat, if there is one (the event
    itself is already recorded)."""
    conversation_id = await _active_conversation(db, event.account_id, str(event.contact))
    if conversation_id is None:
        return None
    try:
        return await lifecycle.signal(db, conversation_id, "field_changed", {CONNECTED_FIELD: True})
    except TransitionNotAllowed:
        return None  # it ended between the lookup and the signal: nothing waits for it
    except ConcurrentUpdate as exc:
        # Its run kept committing steps; the gateway's retry applies the signal again.
        raise HTTPException(status_code=503, detail=str(exc)) from exc


async def _active_conversation(db: Database, account_id: str, profile: str) -> int | None:
    async with db.transaction() as session:
        identity = await queries.identities.find_identity(session, CHANNEL, account_id)
        if identity is None:
            return None  # not one of our seats: nothing of ours can wait for it
        contact = await queries.contacts.ensure_contact(session, CHANNEL, profile, None)
        row = await queries.conversations.lock_active_conversation(session, identity.id, contact.id)
        return row.id if row is not None else None


async def _session_expired(db: Database, settings: Settings, event: GatewayEvent) -> int:
    """Park the seat's queued LinkedIn actions; how many were parked."""
    reason = event.data.get("reason")
    what = f"IdentityExpired: {reason or 'the LinkedIn session expired'} (gateway webhook)"
    now = clock_from(settings.clock_file).now()
    async with db.transaction() as session:
        found = await queries.identities.find_identity(session, CHANNEL, event.account_id)
        if found is None:
            return 0  # a seat Parley does not send from; the event is recorded
        identity = await queries.identities.lock_identity(session, found.id)
        queue = actions.parked_queue(identity, CHANNEL, IdentityExpired(what))
        return await actions.park(session, identity, CHANNEL, queue, what, now)
