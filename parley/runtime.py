"""What a conversation step needs from the outside world, built once per process and passed to
every executor, outbox and handshake function (never read from a module global), so tests hand
in their own database and loopback providers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from parley.campaign.registry import CampaignCache
from parley.channels.base import Channel, OutreachChannel
from parley.clock import Clock, SystemClock
from parley.db import Database
from parley.errors import NotFound
from parley.inbox_signal import InboxSignal, PollingSignal
from parley.retry import RetryPolicy

HttpPoster = Callable[..., Awaitable[dict[str, Any]]]
SecretResolver = Callable[[str], Awaitable[str]]
"""Looks up ``{secret.name}`` (``prefect_adapter.composition`` resolves Prefect Secret blocks);
raises NotFound."""


async def no_secrets(name: str) -> str:
    raise NotFound(f"secret {name!r} is not available in this process")


@dataclass
class Runtime:
    db: Database
    channels: Mapping[str, Channel]  # one sender per channel, by channel name
    post_json: HttpPoster
    campaigns: CampaignCache
    lease_seconds: float = 30.0
    reconcile_seconds: float = 30.0
    # How long an uncertain outreach action waits for the provider's status callback.
    action_reconcile_seconds: float = 900.0
    poll_seconds: float = 0.05
    inbox_signal: InboxSignal | None = None
    environ: Mapping[str, str] = field(default_factory=dict)  # values for campaigns' {env.NAME}
    secrets: SecretResolver = no_secrets
    # How long a step keeps retrying what a provider calls temporary (429, 5xx, timeouts).
    send_retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(budget_seconds=300))
    clock: Clock = field(default_factory=SystemClock)  # timers; leases stay on real time
    # The providers identities' dispatchers perform outreach actions with, by channel name.
    outreach: Mapping[str, OutreachChannel] = field(default_factory=dict)
    # Set when the worker shuts down: hot waits end early so their runs suspend (and cost
    # nothing) instead of dying with the process, and the dispatcher ends at its next tick.
    stopping: bool = False

    @property
    def signal(self) -> InboxSignal:
        return self.inbox_signal or PollingSignal(self.poll_seconds)

    def outreach_channel(self, name: str) -> OutreachChannel:
        try:
            return self.outreach[name]
        except KeyError:
            raise NotFound(f"no outreach provider for channel {name!r} in this process") from None

    def channel(self, name: str) -> Channel:
        try:
            return self.channels[name]
        except KeyError:
            raise NotFound(f"no sender for channel {name!r} in this process") from None

    async def aclose(self) -> None:
        for channel in self.channels.values():
            await channel.aclose()
        senders = {id(channel) for channel in self.channels.values()}
        for provider in self.outreach.values():
            if id(provider) not in senders:  # one object may be both (email, LinkedIn)
                await provider.aclose()
        await self.db.dispose()
