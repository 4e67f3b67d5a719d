"""The pure state machine: what each step of the onboarding graph does, one effect at a time."""

from __future__ import annotations

from pathlib import Path

import pytest

from parley.campaign import (
    AskNode,
    Campaign,
    Edge,
    EndNode,
    EqualsCondition,
    load_campaign,
    parse_campaign,
)
from parley.channels.base import OutboundMessage
from parley.conversation.planner import after_http, plan_step
from parley.conversation.state_machine import REPLY, Reply, Snapshot
from parley.errors import CampaignInvalid

ROOT = Path(__file__).resolve().parents[2]
ONBOARDING = load_campaign(ROOT / "examples/campaigns/onboarding.yaml")


def _at(node: str, *, waiting: bool = False, attempts: int = 0, **variables: object) -> Snapshot:
    return Snapshot(node, variables, attempts, REPLY if waiting else None, node_done=waiting)


def test_entering_an_ask_node_sends_its_prompt_and_waits() -> None:
    t = plan_step(ONBOARDING, _at("ask_name"), None)
    assert t.outbound == OutboundMessage("Hi, welcome aboard! What's your name?")
    assert (t.current_node, t.wait, t.status) == ("ask_name", REPLY, "running")


def test_a_valid_reply_is_stored_and_moves_on_without_sending() -> None:
    t = plan_step(ONBOARDING, _at("ask_name", waiting=True), Reply(7, " Ana ", None))
    assert t.variables["name"] == "Ana"
    assert (t.current_node, t.wait, t.outbound) == ("ask_email", None, None)
    assert t.consumed_message_id == 7


def test_an_invalid_email_sends_the_retry_prompt_and_keeps_waiting() -> None:
    t = plan_step(ONBOARDING, _at("ask_email", waiting=True, name="Ana"), Reply(8, "nope", None))
    retry = "That doesn't look like an email address. Please try again."
    assert t.outbound == OutboundMessage(retry)
    assert (t.current_node, t.wait, t.attempts) == ("ask_email", REPLY, 1)


def test_the_last_allowed_invalid_answer_follows_the_invalid_edge() -> None:
    t = plan_step(ONBOARDING, _at("ask_email", waiting=True, attempts=2), Reply(9, "x", None))
    assert (t.current_node, t.wait, t.outbound) == ("email_unreadable", None, None)
    final = plan_step(ONBOARDING, _at("email_unreadable"), None)
    assert final.status == "completed"
    assert final.outbound is not None and "couldn't read your email" in final.outbound.text


def test_choices_are_sent_as_buttons_and_accept_a_press_or_the_typed_title() -> None:
    prompt = plan_step(ONBOARDING, _at("ask_plan", name="Ana"), None)
    assert prompt.outbound is not None
    assert prompt.outbound.buttons == (("basic", "Basic"), ("pro", "Pro"))
    pressed = plan_step(ONBOARDING, _at("ask_plan", waiting=True), Reply(1, "Pro", "pro"))
    typed = plan_step(ONBOARDING, _at("ask_plan", waiting=True), Reply(2, "  pRO ", None))
    assert pressed.variables["plan"] == typed.variables["plan"] == "Pro"


def test_an_http_node_calls_with_the_chosen_variables_then_stores_the_result() -> None:
    snapshot = _at("register", name="Ana", email="a@b.co", plan="Pro", extra="no")
    t = plan_step(ONBOARDING, snapshot, None)
    assert t.http is not None
    assert t.http.body == {"name": "Ana", "email": "a@b.co", "plan": "Pro"}
    done = after_http(ONBOARDING, snapshot, {"status": 201})
    assert done.variables["crm"] == {"status": 201}
    assert done.current_node == "confirm"


def test_send_renders_variables_and_a_value_with_braces_stays_literal() -> None:
    t = plan_step(ONBOARDING, _at("confirm", name="{plan}", plan="Basic"), None)
    assert t.outbound == OutboundMessage("Thanks {plan}, you're on Basic.")


def test_an_asked_question_without_a_reply_keeps_waiting_and_sends_nothing_again() -> None:
    t = plan_step(ONBOARDING, _at("ask_name", waiting=True), None)
    assert (t.current_node, t.wait, t.outbound, t.status) == ("ask_name", REPLY, None, "running")


def test_no_matching_edge_ends_the_conversation() -> None:
    """Validation refuses such a graph ("needs a default edge"); built without it, the planner
    still ends the conversation rather than leaving it stuck at a node."""
    graph = Campaign(
        name="branchy",
        start="ask",
        nodes=[AskNode(id="ask", prompt="yes?", var="answer"), EndNode(id="agreed", text="great")],
        edges=[
            Edge(source="ask", target="agreed", when=EqualsCondition(var="answer", equals="yes"))
        ],
    )
    t = plan_step(graph, _at("ask", waiting=True), Reply(1, "no", None))
    assert t.status == "completed"


def test_a_graph_without_a_default_edge_is_refused_by_validation() -> None:
    with pytest.raises(CampaignInvalid, match="needs a default edge"):
        parse_campaign(
            """
name: branchy
start: ask
nodes:
  - {id: ask, type: ask, prompt: "yes?", var: answer}
  - {id: agreed, type: end, text: "great"}
edges:
  - {from: ask, to: agreed, when: {var: answer, equals: "yes"}}
"""
        )
