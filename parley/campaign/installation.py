"""What a campaign needs from the installation it is published to, checked at publish time
rather than discovered by the first lead days later: every outreach action goes out on a
channel this installation has configured, and every ``{secret.x}`` exists as a Prefect Secret
block.

Parley does not import Prefect: the secret store is a port (``SecretNames``) the composition
root fills in (``prefect_adapter.secret_names``). A store that cannot be reached is not a
reason to refuse a publish — the secret is read at send time anyway — so it becomes a warning.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from parley.campaign.model import Campaign
from parley.campaign.nodes import SendNode
from parley.campaign.templates import secret_names
from parley.db import queries
from parley.errors import ParleyError
from parley.settings import Settings
from parley.vocabulary import CHANNEL_OF

Problem = tuple[str | None, str]


class SecretStoreUnreachable(ParleyError):
    """The secret store could not be asked (Prefect is down or not configured)."""


class SecretNames(Protocol):
    async def missing(self, names: Sequence[str]) -> list[str]:
        """The names among ``names`` that have no secret; ``SecretStoreUnreachable`` when the
        store cannot say."""
        ...


def configured_channels(settings: Settings) -> frozenset[str]:
    """The channels whose actions this installation can perform from its settings alone:
    email (each mailbox brings its SMTP server), WhatsApp (the Cloud API settings), and
    LinkedIn only with a gateway (``PARLEY_LINKEDIN_GATEWAY_URL``; a seat may name its own,
    which ``Installation.served_channels`` adds)."""
    served = {"email", "whatsapp"}
    if settings.linkedin_gateway_url:
        served.add("linkedin")
    return frozenset(served)


@dataclass(frozen=True)
class Installation:
    channels: frozenset[str]
    secrets: SecretNames | None = None

    async def served_channels(self, session: AsyncSession) -> frozenset[str]:
        """The configured channels, and LinkedIn when a seat names its own gateway."""
        seats = await queries.identities.all_identities(session)
        if any(s.channel == "linkedin" and s.settings.get("gateway_url") for s in seats):
            return self.channels | {"linkedin"}
        return self.channels


@dataclass
class InstallationCheck:
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def unserved_actions(campaign: Campaign, channels: Iterable[str]) -> list[Problem]:
    served = set(channels)
    return [
        (
            node.id,
            f"action {node.action!r} goes out on {CHANNEL_OF[node.action]}, which this "
            f"installation has not configured"
            + (
                " (set PARLEY_LINKEDIN_GATEWAY_URL or a seat's gateway_url)"
                if CHANNEL_OF[node.action] == "linkedin"
                else ""
            ),
        )
        for node in campaign.nodes
        if isinstance(node, SendNode)
        and node.action is not None
        and CHANNEL_OF[node.action] not in served
    ]


def secrets_used(campaign: Campaign) -> dict[str, str]:
    """Every ``{secret.x}`` the campaign's templates name, with the first node naming it."""
    used: dict[str, str] = {}
    for node in campaign.nodes:
        for template in node.templates().values():
            for name in secret_names(template):
                used.setdefault(name, node.id)
    return used


async def check_installation(
    session: AsyncSession, campaign: Campaign, installation: Installation
) -> InstallationCheck:
    check = InstallationCheck()
    check.problems += unserved_actions(campaign, await installation.served_channels(session))
    used = secrets_used(campaign)
    if not used:
        return check
    if installation.secrets is None:
        check.warnings.append("the secrets it uses were not checked: no secret store here")
        return check
    try:
        missing = await installation.secrets.missing(sorted(used))
    except SecretStoreUnreachable as exc:
        check.warnings.append(f"the secrets it uses were not checked: {exc}")
        return check
    check.problems += [
        (used[name], f"{{secret.{name}}} has no Prefect Secret block named {name!r}")
        for name in missing
    ]
    return check
