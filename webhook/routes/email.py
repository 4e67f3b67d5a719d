"""The inbound-email webhook (``parley.channels.email.wire``): leads' replies and delivery events
(delivered, bounced, complained) about the emails we sent, POSTed by the provider's relay.

Thin like the WhatsApp route: verify (401), read the whole body (400), store durably
(``parley.conversation.inbox``), answer 200, and only then wake runs. A reply reaches the active
conversation of its mailbox and sender, which is what stops an outreach sequence (the planner
interrupts the wait, the dispatcher's freshness check skips queued actions). A reply from anyone
without one is recorded as an ``unmatched_message`` webhook event: email outreach never starts a
conversation on the default (WhatsApp onboarding) campaign.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Depends, HTTPException, Request

from parley.channels.email.channel import EmailChannel
from parley.errors import ConfigurationError
from webhook.deps import RuntimeDep, SettingsDep, read_signed, store_and_wake

router = APIRouter(prefix="/webhooks/email", tags=["email"])


def _email(request: Request) -> EmailChannel:
    return request.app.state.email  # type: ignore[no-any-return]


EmailDep = Annotated[EmailChannel, Depends(_email)]


@router.post("")
async def receive(
    request: Request,
    background: BackgroundTasks,
    settings: SettingsDep,
    rt: RuntimeDep,
    channel: EmailDep,
) -> dict[str, Any]:
    try:
        batch = read_signed(await request.body(), request.headers, channel.verify, channel.parse)
    except ConfigurationError as exc:
        # Not the sender's fault: 503 so the relay keeps the event and retries once it is set.
        detail = f"{exc}; set PARLEY_EMAIL_WEBHOOK_SECRET"
        raise HTTPException(status_code=503, detail=detail) from exc
    # No campaign: replies reach active conversations only (see the module doc).
    result = await store_and_wake(rt, settings, background, batch, None)
    return {
        "stored": result.stored,
        "duplicates": result.duplicates,
        "statuses": result.statuses,
        "ignored": result.ignored,
        "unmatched": result.unmatched,
    }
