"""Leads as rows: reading a CSV or JSONL file, and checking each row against the campaign
before anything is stored (docs/outreach.md, "Importing leads").

One row is one lead. Its columns (keys in JSONL):

* ``channel`` — the lead's channel; the campaign's ``channel`` when absent;
* ``email``, ``linkedin``, ``phone`` — addresses; the one of the lead's channel is the contact's
  address (``phone`` for ``whatsapp``), and all of them are contact fields the actions use;
* ``name`` — the contact's name;
* ``var.<x>`` (or a ``variables`` object in JSONL) — the campaign's inputs; a plain column named
  like one of the campaign's inputs fills it too;
* any other column (or a ``fields`` object) — a contact field (edges compare fields).

Everything here is plain data in, verdicts out: no database, so the same rules serve the CLI,
the REST API and the ``add_to_campaign`` node.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from email_validator import EmailNotValidError, validate_email

from parley.campaign import Campaign
from parley.errors import InvalidInput

ADDRESS_COLUMN = {"email": "email", "linkedin": "linkedin", "whatsapp": "phone"}
"""The lead's channel -> the column holding its address there."""
RESERVED = frozenset({"channel", "name", "address", "variables", "fields", "email", "linkedin"})
VARIABLE_PREFIX = "var."
PHONE_DIGITS = re.compile(r"^\d{7,15}$")
UNREADABLE = "__unreadable__"


@dataclass(frozen=True)
class Lead:
    """A valid row, normalised: who the contact is, its fields and the campaign's inputs."""

    channel: str
    address: str
    name: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    variables: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.channel}:{self.address}"

    def as_json(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "address": self.address,
            "name": self.name,
            "fields": self.fields,
            "variables": self.variables,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Lead:
        return cls(
            channel=data["channel"],
            address=data["address"],
            name=data.get("name"),
            fields=dict(data.get("fields") or {}),
            variables=dict(data.get("variables") or {}),
        )


class InvalidLead(Exception):
    """Why a row cannot become a lead (the report says ``invalid: <reason>``)."""


@dataclass(frozen=True)
class CheckedRow:
    """One row of the file, numbered from 1, as stored before the import creates anything."""

    number: int
    lead: Lead | None
    invalid: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)


# --- reading ------------------------------------------------------------------------------------


def read_file(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``.csv`` or ``.jsonl`` (``.ndjson``) file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read {path}: {exc}") from exc
    return parse_text(text, _format_of(path.name))


def _format_of(name: str) -> str:
    suffix = name.rsplit(".", 1)[-1].lower()
    if suffix == "csv":
        return "csv"
    if suffix in ("jsonl", "ndjson"):
        return "jsonl"
    raise InvalidInput(f"{name}: expected a .csv or .jsonl file")


def parse_text(text: str, fmt: str) -> list[dict[str, Any]]:
    """``fmt``: ``csv`` (a header row, then one lead a row) or ``jsonl`` (one object a line)."""
    if fmt == "csv":
        return _parse_csv(text)
    if fmt == "jsonl":
        return _parse_jsonl(text)
    raise InvalidInput(f"unknown lead format {fmt!r}: csv or jsonl")


def _parse_csv(text: str) -> list[dict[str, Any]]:
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    if not reader.fieldnames:
        raise InvalidInput("the CSV has no header row")
    rows = []
    for record in reader:
        extra = record.pop(None, None)
        row = {k.strip(): (v or "").strip() for k, v in record.items() if k}
        if extra:
            row[UNREADABLE] = f"{len(extra)} more value(s) than the header has columns"
        if any(v for v in row.values()):
            rows.append(row)
    return rows


def _parse_jsonl(text: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            rows.append({UNREADABLE: f"line {number} is not JSON ({exc.msg})"})
            continue
        if not isinstance(value, dict):
            rows.append({UNREADABLE: f"line {number} is not a JSON object"})
            continue
        rows.append(value)
    return rows


def content_digest(rows: Sequence[Mapping[str, Any]], campaign: str, identity_id: int) -> str:
    """Names an import's content: the same rows into the same campaign for the same identity
    are the same import (a CSV and its JSONL twin included)."""
    canonical = json.dumps(
        {"campaign": campaign, "identity": identity_id, "rows": list(rows)},
        sort_keys=True,
        default=str,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


# --- checking -----------------------------------------------------------------------------------


def check_rows(rows: Iterable[Mapping[str, Any]], campaign: Campaign) -> list[CheckedRow]:
    """Every row checked before any is imported: a malformed address, a missing campaign input
    or a second row for the same lead makes the row invalid (the others go on)."""
    checked: list[CheckedRow] = []
    first_row_of: dict[str, int] = {}
    for number, raw in enumerate(rows, start=1):
        try:
            lead = lead_of(raw, campaign)
        except InvalidLead as exc:
            checked.append(CheckedRow(number, None, str(exc), raw))
            continue
        if (earlier := first_row_of.get(lead.key)) is not None:
            checked.append(CheckedRow(number, None, f"duplicate of row {earlier}", raw))
            continue
        first_row_of[lead.key] = number
        checked.append(CheckedRow(number, lead, None, raw))
    return checked


def lead_of(raw: Mapping[str, Any], campaign: Campaign) -> Lead:
    """One row as a lead of ``campaign``, or ``InvalidLead`` with the reason."""
    if UNREADABLE in raw:
        raise InvalidLead(str(raw[UNREADABLE]))
    channel = _text(raw.get("channel")) or campaign.channel
    if channel not in ADDRESS_COLUMN:
        raise InvalidLead(f"unknown channel {channel!r} (one of {', '.join(ADDRESS_COLUMN)})")
    fields = {**_object(raw, "fields"), **_other_columns(raw)}
    fields.update(_addresses(raw))
    given = _text(raw.get("address"))
    if given and channel in ("email", "whatsapp"):
        given = _normal_email(given) if channel == "email" else _normal_phone(given)
    address = given or fields.get(ADDRESS_COLUMN[channel])
    if not address:
        raise InvalidLead(f"no {ADDRESS_COLUMN[channel]} for a {channel} lead")
    variables = _variables(raw, campaign)
    missing = [name for name in campaign.inputs if variables.get(name) in (None, "")]
    if missing:
        raise InvalidLead(f"missing campaign input(s): {', '.join(missing)}")
    return Lead(channel, str(address), _text(raw.get("name")) or None, fields, variables)


def _addresses(raw: Mapping[str, Any]) -> dict[str, str]:
    found: dict[str, str] = {}
    if email := _text(raw.get("email")):
        found["email"] = _normal_email(email)
    if linkedin := _text(raw.get("linkedin")):
        found["linkedin"] = linkedin
    if phone := _text(raw.get("phone")) or _text(raw.get("whatsapp")):
        found["phone"] = found["whatsapp"] = _normal_phone(phone)
    return found


def _normal_email(value: str) -> str:
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise InvalidLead(f"malformed email {value!r}: {exc}") from None


def _normal_phone(value: str) -> str:
    digits = re.sub(r"[\s().+-]", "", value)
    if not PHONE_DIGITS.match(digits):
        raise InvalidLead(f"malformed phone {value!r}: 7 to 15 digits, an optional +")
    return digits


def _variables(raw: Mapping[str, Any], campaign: Campaign) -> dict[str, Any]:
    variables = {name: raw[name] for name in campaign.inputs if _text(raw.get(name))}
    variables.update(_object(raw, "variables"))
    for key, value in raw.items():
        if key.startswith(VARIABLE_PREFIX) and _text(value):
            variables[key.removeprefix(VARIABLE_PREFIX)] = value
    return variables


def _other_columns(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {
        key: value
        for key, value in raw.items()
        if key not in RESERVED
        and key not in ("phone", "whatsapp")
        and not key.startswith(VARIABLE_PREFIX)
        and value not in (None, "")
    }


def _object(raw: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key)
    if value in (None, ""):
        return {}
    if isinstance(value, str):  # a CSV cell holding JSON
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise InvalidLead(f"{key} is not a JSON object") from None
    if not isinstance(value, dict):
        raise InvalidLead(f"{key} is not a JSON object")
    return dict(value)


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()
