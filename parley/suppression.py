"""The do-not-contact list: addresses (email, phone, LinkedIn profile) that nobody — or one
identity — may contact any more, with why and since when.

Every address is normalised before it is stored or looked up, so one person is one entry
however the address was written: an email lower-cased with its domain in IDNA (ASCII) form, a
phone number in E.164 (``+`` and digits; a number without ``+`` or ``00`` is read as already
carrying its country code, as WhatsApp ids do), a LinkedIn profile URL as
``https://www.linkedin.com/in/<slug>``.

Lead import and ``start`` ask ``suppressed_among`` before a conversation exists; the dispatcher
asks again before each action goes (an action queued before the suppression never goes).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple
from urllib.parse import unquote

from email_validator import EmailNotValidError, validate_email
from sqlalchemy.ext.asyncio import AsyncSession

from parley.db import queries
from parley.db.models import Contact, Identity, Suppression
from parley.errors import InvalidInput, NotFound
from parley.vocabulary import (
    ADDRESS_KINDS,
    SUPPRESSION_REASONS,
    AddressKind,
    SuppressionReason,
)

LEAD_ADDRESS_FIELDS = ("email", "phone", "linkedin", "whatsapp")
"""The contact fields that hold an address of the lead (``fields: {email: ...}``)."""


class Address(NamedTuple):
    kind: AddressKind
    address: str


_LINKEDIN = re.compile(
    r"^(?:https?://)?(?:[a-z0-9-]+\.)?linkedin\.com/in/([^/?#\s]+)/?(?:[?#].*)?$", re.IGNORECASE
)
_PHONE_PUNCTUATION = re.compile(r"[\s\-.()/]")
_E164_DIGITS = re.compile(r"^[1-9]\d{6,14}$")


def normalise(raw: str, kind: AddressKind | None = None) -> Address:
    """The address as the list stores it; the kind is detected unless given. InvalidInput when
    it is none of the three (or not a valid one of the kind given)."""
    text = raw.strip()
    detected = kind or _kind_of(text)
    if detected == "linkedin":
        return Address("linkedin", _linkedin(text))
    if detected == "email":
        return Address("email", _email(text))
    if detected == "phone":
        return Address("phone", _phone(text))
    raise InvalidInput(f"{raw!r} is not an email address, a phone number or a LinkedIn profile URL")


def try_normalise(raw: str | None) -> Address | None:
    """``normalise``, or None for what is not an address (a provider's opaque id)."""
    if not raw or not isinstance(raw, str):
        return None
    try:
        return normalise(raw)
    except InvalidInput:
        return None


def _kind_of(text: str) -> AddressKind | None:
    if "linkedin.com/" in text.lower():
        return "linkedin"
    if "@" in text:
        return "email"
    if text.lower().startswith("tel:") or any(ch.isdigit() for ch in text):
        return "phone"
    return None


def _linkedin(text: str) -> str:
    match = _LINKEDIN.match(text)
    if match is None:
        raise InvalidInput(f"{text!r} is not a LinkedIn profile URL (…linkedin.com/in/<name>)")
    slug = unquote(match.group(1)).strip().lower()
    if not slug:
        raise InvalidInput(f"{text!r} has no profile name after /in/")
    return f"https://www.linkedin.com/in/{slug}"


def _email(text: str) -> str:
    if text.lower().startswith("mailto:"):
        text = text[len("mailto:") :]
    try:
        valid = validate_email(text, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidInput(f"{text!r} is not a valid email address: {exc}") from exc
    return f"{valid.local_part.lower()}@{valid.ascii_domain.lower()}"


def _phone(text: str) -> str:
    if text.lower().startswith("tel:"):
        text = text[len("tel:") :]
    digits = _PHONE_PUNCTUATION.sub("", text)
    if digits.startswith("+"):
        digits = digits[1:]
    elif digits.startswith("00"):
        digits = digits[2:]
    if not _E164_DIGITS.match(digits):
        raise InvalidInput(
            f"{text!r} is not a phone number in international form (+ country code, 7-15 digits)"
        )
    return f"+{digits}"


def reason_of(value: str) -> SuppressionReason:
    if value not in SUPPRESSION_REASONS:
        raise InvalidInput(
            f"unknown reason {value!r}: one of {', '.join(repr(r) for r in SUPPRESSION_REASONS)}"
        )
    return value


def kind_of(value: str) -> AddressKind:
    if value not in ADDRESS_KINDS:
        raise InvalidInput(f"unknown address kind {value!r}: one of {', '.join(ADDRESS_KINDS)}")
    return value


# --- the list ---------------------------------------------------------------------------------


async def add(
    session: AsyncSession,
    raw: str,
    reason: str,
    *,
    identity_id: int | None = None,
    note: str | None = None,
    by: str | None = None,
) -> tuple[Suppression, bool]:
    """Suppress the address for one identity, or installation-wide (``identity_id`` None).
    Idempotent: an address already there keeps its first entry; the flag says whether it was
    new."""
    address = normalise(raw)
    checked = reason_of(reason)
    if identity_id is not None and await session.get(Identity, identity_id) is None:
        raise NotFound(f"identity {identity_id} does not exist")
    created = await queries.suppressions.insert_suppression(
        session,
        identity_id=identity_id,
        kind=address.kind,
        address=address.address,
        reason=checked,
        note=note,
        created_by=by,
    )
    entry = await queries.suppressions.find_suppression(
        session, identity_id, address.kind, address.address
    )
    assert entry is not None, "inserted or already there"
    return entry, created


async def remove(session: AsyncSession, raw: str, *, identity_id: int | None = None) -> Address:
    """Take the address off the list of that scope only (an installation-wide entry still
    covers every identity). NotFound when that scope does not have it."""
    address = normalise(raw)
    removed = await queries.suppressions.delete_suppression(
        session, identity_id, address.kind, address.address
    )
    if not removed:
        scope = "installation-wide" if identity_id is None else f"for identity {identity_id}"
        raise NotFound(f"{address.address} is not suppressed {scope}")
    return address


async def list_suppressions(
    session: AsyncSession, identity_id: int | None = None
) -> list[Suppression]:
    """Every entry; with an identity, those that apply to it (its own and installation-wide)."""
    return await queries.suppressions.list_suppressions(session, identity_id)


async def suppressed_among(
    session: AsyncSession, identity_id: int, addresses: Iterable[str | None]
) -> dict[str, Suppression]:
    """Which of a lead's raw addresses (email, phone, LinkedIn URL, in any spelling) may not be
    contacted by this identity: raw address -> the entry that covers it (installation-wide
    first). What is not an address at all is simply not suppressed."""
    normalised = {raw: a for raw in addresses if raw and (a := try_normalise(raw)) is not None}
    if not normalised:
        return {}
    entries = await queries.suppressions.suppressions_covering(
        session, identity_id, set(normalised.values())
    )
    covering: dict[Address, Suppression] = {}
    for entry in entries:  # installation-wide first: setdefault keeps it
        covering.setdefault(Address(kind_of(entry.kind), entry.address), entry)
    return {raw: covering[a] for raw, a in normalised.items() if a in covering}


def lead_addresses(contact: Contact) -> list[str]:
    """Every address a lead is known by: the one it is contacted on and its address fields."""
    found = [contact.address]
    for field in LEAD_ADDRESS_FIELDS:
        value = contact.fields.get(field) if contact.fields else None
        if isinstance(value, str) and value.strip():
            found.append(value)
    return list(dict.fromkeys(found))


async def suppression_of(
    session: AsyncSession, identity_id: int, contact: Contact
) -> Suppression | None:
    """The entry that forbids this identity to contact the lead, if any."""
    found = await suppressed_among(session, identity_id, lead_addresses(contact))
    return next(iter(found.values()), None)
