"""The conditions on the lead: ``has_email``, ``has_phone``, ``has_whatsapp``,
``connection_accepted`` and ``not_already_contacted``, judged purely from the contact's fields
and what the runner looked up (``LeadFacts``); and what the validator says about them."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import TypeAdapter, ValidationError

from parley.campaign import parse_campaign
from parley.campaign.conditions import Condition, EdgeContext, LeadFacts, fields_read
from parley.conversation.planner import plan_step
from parley.conversation.state_machine import Snapshot
from parley.errors import CampaignInvalid

NOW = datetime(2026, 12, 8, 10, 0, tzinfo=UTC)
CONDITION: TypeAdapter[object] = TypeAdapter(Condition)


def holds(
    when: object,
    contact: Mapping[str, object] | None = None,
    lead: LeadFacts | None = None,
) -> bool:
    condition = CONDITION.validate_python(when)
    ctx = EdgeContext(NOW, NOW, contact=contact or {}, lead=lead or LeadFacts())
    return bool(condition.matches(ctx))  # type: ignore[attr-defined]


def _problems(text: str) -> list[tuple[str | None, str]]:
    with pytest.raises(CampaignInvalid) as caught:
        parse_campaign(text)
    return caught.value.problems


@pytest.mark.parametrize(
    ("contact", "lead", "expected"),
    [
        ({"email": "ana@example.com"}, None, True),
        ({"email": "  ana@example.com "}, None, True),
        ({"email": "ana@"}, None, False),
        ({"email": "not an email"}, None, False),
        ({"email": ""}, None, False),
        ({"email": 42}, None, False),
        ({}, None, False),
        ({}, LeadFacts("email", "ana@example.com"), True),  # an email contact's own address
        ({}, LeadFacts("linkedin", "ana@example.com"), False),  # a profile, not a mailbox
    ],
)
def test_has_email_needs_a_well_formed_address(
    contact: dict[str, object], lead: LeadFacts | None, expected: bool
) -> None:
    assert holds("has_email", contact, lead) is expected
    assert holds({"has_email": False}, contact, lead) is not expected


@pytest.mark.parametrize(
    ("contact", "lead", "expected"),
    [
        ({"phone": "+34 600 123 456"}, None, True),
        ({"phone": "+1 (415) 555-0100"}, None, True),
        ({"whatsapp": "34600123456"}, None, True),  # WhatsApp ids come without the +
        ({"phone": 34600123456}, None, True),
        ({"phone": "+0 600 123 456"}, None, False),  # no country code starts with 0
        ({"phone": "+34 12"}, None, False),  # too short
        ({"phone": "+1234567890123456"}, None, False),  # 16 digits: longer than E.164 allows
        ({"phone": "call me"}, None, False),
        ({"phone": True}, None, False),
        ({}, LeadFacts("whatsapp", "34600123456"), True),
        ({}, LeadFacts("email", "34600123456"), False),
    ],
)
def test_has_phone_needs_an_e164_number(
    contact: dict[str, object], lead: LeadFacts | None, expected: bool
) -> None:
    assert holds("has_phone", contact, lead) is expected


def test_has_whatsapp_is_having_a_phone_until_whatsapp_said_otherwise() -> None:
    assert holds("has_whatsapp", {"phone": "+34600123456"})
    assert not holds("has_whatsapp", {})
    assert not holds("has_whatsapp", {"phone": "+34600123456", "whatsapp_account": False})
    assert holds({"has_whatsapp": False}, {"phone": "+34600123456", "whatsapp_account": False})


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), ("true", True), ("TRUE ", True), (False, False), (None, False), (1, False)],
)
def test_connection_accepted_reads_what_the_gateway_webhook_set(
    value: object, expected: bool
) -> None:
    assert holds("connection_accepted", {"linkedin_connected": value}) is expected


@pytest.mark.parametrize(
    ("last", "expected"),
    [
        (None, True),
        (NOW - timedelta(days=89, hours=23), False),
        (NOW - timedelta(days=90), True),  # exactly the window ago: outside it
        (NOW - timedelta(days=120), True),
        (NOW + timedelta(minutes=1), False),  # a clock a little ahead still counts
    ],
)
def test_not_already_contacted_looks_back_over_its_window(
    last: datetime | None, expected: bool
) -> None:
    when = {"not_already_contacted": {"within": "90d"}}
    assert holds(when, lead=LeadFacts(last_contacted_at=last)) is expected


@pytest.mark.parametrize(
    "when",
    [
        {"not_already_contacted": {"within": "0d"}},
        {"not_already_contacted": {}},
        {"not_already_contacted": "90d"},
        {"has_email": "maybe"},
        "has_mail",
        {"has_email": True, "has_phone": True},
    ],
)
def test_malformed_lead_conditions_are_refused(when: object) -> None:
    with pytest.raises(ValidationError):
        CONDITION.validate_python(when)


def test_the_fields_each_lead_condition_reads_wake_a_waiting_run() -> None:
    def read(when: object) -> frozenset[str]:
        return fields_read(CONDITION.validate_python(when))

    assert read("connection_accepted") == {"linkedin_connected"}
    assert read("has_email") == {"email"}
    assert read("has_whatsapp") >= {"phone", "whatsapp", "whatsapp_account"}
    assert read({"var": "x", "equals": 1}) == frozenset()


# --- in a campaign --------------------------------------------------------------------------

ROUTING = """
name: routing
channel: linkedin
start: gate
nodes:
  - {id: gate, type: branch}
  - {id: mail, type: end}
  - {id: call, type: end}
  - {id: nothing, type: end}
edges:
  - {from: gate, to: mail, when: has_email}
  - {from: gate, to: call, when: has_phone}
  - {from: gate, to: nothing}
"""


@pytest.mark.parametrize(
    ("contact", "target"),
    [
        ({"email": "ana@example.com", "phone": "+34600123456"}, "mail"),
        ({"email": "nope", "phone": "+34600123456"}, "call"),
        ({}, "nothing"),
    ],
)
def test_a_branch_routes_by_the_lead_s_addresses(contact: dict[str, object], target: str) -> None:
    snapshot = Snapshot("gate", {}, 0, None, entered_at=NOW, now=NOW, contact=contact)
    assert plan_step(parse_campaign(ROUTING), snapshot, None).current_node == target


def test_a_condition_and_its_negation_cover_every_case() -> None:
    """No "needs a default edge": one of has_email and {has_email: false} always holds."""
    text = ROUTING.replace(
        "  - {from: gate, to: nothing}", "  - {from: gate, to: nothing, when: {has_email: false}}"
    ).replace("when: has_phone", "when: {has_email: false}")
    assert parse_campaign(text).name == "routing"


def test_an_edge_that_tests_only_a_lead_condition_needs_a_default_edge() -> None:
    problems = _problems(ROUTING.replace("  - {from: gate, to: nothing}\n", ""))
    assert (
        "gate",
        "branch node 'gate' needs a default edge (an edge without 'when') so a "
        "conversation never stops here silently",
    ) in problems


def test_connection_accepted_where_no_invitation_can_be_accepted_is_refused() -> None:
    text = ROUTING.replace("channel: linkedin", "channel: whatsapp").replace(
        "when: has_email", "when: connection_accepted"
    )
    problems = _problems(text)
    assert any(
        node == "gate" and "edges[0]: 'when: connection_accepted' can never be true" in message
        for node, message in problems
    ), problems


def test_connection_accepted_on_a_whatsapp_campaign_that_sends_an_invitation_is_fine() -> None:
    text = """
name: mixed
channel: whatsapp
start: invite
nodes:
  - {id: invite, type: send, action: linkedin_connection, text: "Hi"}
  - {id: wait, type: branch}
  - {id: done, type: end}
edges:
  - {from: invite, to: wait}
  - {from: wait, to: done, when: connection_accepted}
  - {from: wait, to: done, when: {time_passed: 3d}}
"""
    assert parse_campaign(text).name == "mixed"


def test_an_unknown_lead_word_names_the_conditions_there_are() -> None:
    problems = _problems(ROUTING.replace("when: has_email", "when: has_mail"))
    assert any(
        node == "gate" and "'has_email', 'has_phone', 'has_whatsapp', 'connection_accepted'" in m
        for node, m in problems
    ), problems


def test_the_older_field_test_for_an_accepted_connection_still_validates() -> None:
    text = ROUTING.replace("when: has_email", "when: {field: linkedin_connected, equals: true}")
    assert parse_campaign(text).name == "routing"


def test_only_a_campaign_that_asks_not_already_contacted_looks_the_history_up() -> None:
    assert not parse_campaign(ROUTING).asks_contact_history
    asking = ROUTING.replace("when: has_email", "when: {not_already_contacted: {within: 30d}}")
    assert parse_campaign(asking).asks_contact_history


def test_connection_accepted_on_a_wait_for_reply_is_refused_with_what_to_write() -> None:
    text = """
name: waits
channel: linkedin
start: listen
nodes:
  - {id: listen, type: wait_for_reply, timeout: 3d}
  - {id: done, type: end}
edges:
  - {from: listen, to: done, when: connection_accepted}
  - {from: listen, to: done, when: replied}
  - {from: listen, to: done, when: no_reply}
"""
    problems = _problems(text)
    assert any(
        node == "listen" and "edges[0]" in m and "wait for an acceptance on a branch node" in m
        for node, m in problems
    ), problems
