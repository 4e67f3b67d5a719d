"""The LinkedIn actions beyond messages (``linkedin_attachment``, ``linkedin_voice``,
``linkedin_like_post``) and the ``bundle`` node: what the validator refuses, with the node's
id, and how the planner walks a bundle (one action queued at a time, in order)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from parley.campaign import parse_campaign
from parley.conversation.planner import plan_step
from parley.conversation.state_machine import Reply, Snapshot, Transition, Wait
from parley.errors import CampaignInvalid
from parley.vocabulary import Status, WaitKind

NOW = datetime(2026, 12, 8, 10, 0, tzinfo=UTC)
TEMPLATE = """
name: outreach
channel: linkedin
inputs: [first_name, post]
on_reply: stopped
start: step
nodes:
  - {NODE}
  - {id: done, type: end}
  - {id: failed, type: end}
  - {id: stopped, type: end}
edges:
  - {from: step, to: failed, when: error}
  - {from: step, to: done}
"""
BUNDLE = """id: step
    type: bundle
    actions:
      - {action: linkedin_profile_visit}
      - {action: linkedin_connection, text: "Hi {first_name}"}
      - {action: linkedin_like_post, post: "{post}"}"""


def campaign_with(node: str) -> str:
    return TEMPLATE.replace("{NODE}", node)


def _problems(text: str) -> list[tuple[str | None, str]]:
    with pytest.raises(CampaignInvalid) as caught:
        parse_campaign(text)
    return caught.value.problems


@pytest.mark.parametrize(
    "node",
    [
        '{id: step, type: send, action: linkedin_like_post, post: "{post}"}',
        "{id: step, type: send, action: linkedin_voice, file: https://files.example/hi.m4a}",
        "{id: step, type: send, action: linkedin_attachment, file: https://files.example/a.pdf}",
        '{id: step, type: send, action: linkedin_attachment, file: "{env.FILES}/a.pdf", '
        'text: "For you"}',
    ],
)
def test_the_new_linkedin_actions_validate_with_what_they_need(node: str) -> None:
    text = campaign_with(node)
    if "{env.FILES}" in text:
        text = text.replace("start: step", "start: step\nenv: {FILES: https://files.example}")
    assert parse_campaign(text).node("step").type == "send"


@pytest.mark.parametrize(
    ("node", "fragment"),
    [
        ("{id: step, type: send, action: linkedin_like_post}", "needs 'post'"),
        ("{id: step, type: send, action: linkedin_voice}", "needs 'file'"),
        ("{id: step, type: send, action: linkedin_attachment}", "needs 'file'"),
        (
            "{id: step, type: send, action: linkedin_voice, file: https://f.example/a.m4a, "
            "text: Hi}",
            "a linkedin_voice action sends no text",
        ),
        (
            "{id: step, type: send, action: linkedin_message, text: Hi, "
            "file: https://f.example/a.pdf}",
            "'file' only goes with a linkedin_attachment or linkedin_voice action",
        ),
        (
            "{id: step, type: send, action: linkedin_message, text: Hi, post: https://x.example}",
            "'post' only goes with a linkedin_like_post action",
        ),
        (
            "{id: step, type: send, action: linkedin_attachment, file: ftp://f.example/a.pdf}",
            "is not an http:// or https:// URL",
        ),
    ],
)
def test_an_action_without_what_it_needs_is_refused_with_its_node_id(
    node: str, fragment: str
) -> None:
    problems = _problems(campaign_with(node))
    assert any(where == "step" and fragment in message for where, message in problems), problems


@pytest.mark.parametrize(
    ("node", "fragment"),
    [
        (
            "{id: step, type: bundle, actions: [{action: linkedin_profile_visit}]}",
            "at least 2 items",
        ),
        ("{id: step, type: bundle, actions: []}", "at least 2 items"),
        (
            "{id: step, type: bundle, actions: [{action: linkedin_profile_visit}, "
            "{action: linkedin_message}]}",
            "a send node needs 'text'",
        ),
        (
            "{id: step, type: bundle, actions: [{action: linkedin_profile_visit}, "
            "{action: fax, text: Hi}]}",
            "field 'actions[1].action'",
        ),
        (
            "{id: step, type: bundle, actions: [{action: linkedin_profile_visit}, "
            '{action: linkedin_connection, text: "Hi {nickname}"}]}',
            "variable 'nickname'",
        ),
    ],
)
def test_a_bundle_that_cannot_work_is_refused_with_its_node_id(node: str, fragment: str) -> None:
    problems = _problems(campaign_with(node))
    assert any(where == "step" and fragment in message for where, message in problems), problems


def test_taken_over_applies_to_a_bundle() -> None:
    text = campaign_with(BUNDLE).replace(
        "  - {from: step, to: done}",
        "  - {from: step, to: stopped, when: taken_over}\n  - {from: step, to: done}",
    )
    assert parse_campaign(text).node("step").type == "bundle"


# --- the planner walks a bundle -------------------------------------------------------------


def _at_step(attempts: int = 0, outcome: str | None = None, *, done: bool = True) -> Snapshot:
    return Snapshot(
        "step",
        {"first_name": "Ana", "post": "https://www.linkedin.com/posts/ana_1"},
        attempts,
        Wait(WaitKind.ACTION) if done else None,
        node_done=done,
        entered_at=NOW,
        now=NOW,
        task_result=None if outcome is None else {"outcome": outcome, "reason": "why"},
    )


def _plan(snapshot: Snapshot, reply: Reply | None = None) -> Transition:
    return plan_step(parse_campaign(campaign_with(BUNDLE)), snapshot, reply)


def test_a_bundle_queues_its_first_action_on_arrival_and_waits_for_it() -> None:
    t = _plan(_at_step(done=False))
    assert t.action is not None and t.action.type == "linkedin_profile_visit"
    assert (t.current_node, t.attempts, t.wait, t.node_done) == (
        "step",
        0,
        Wait(WaitKind.ACTION),
        True,
    )


def test_each_sent_action_queues_the_next_one_rendered_then_the_node_is_left() -> None:
    second = _plan(_at_step(0, "sent"))
    assert second.action is not None
    assert (second.action.type, second.action.text, second.attempts) == (
        "linkedin_connection",
        "Hi Ana",
        1,
    )
    assert second.task_result is None  # the next outcome is awaited afresh
    third = _plan(_at_step(1, "sent"))
    assert third.action is not None
    assert (third.action.type, third.action.post) == (
        "linkedin_like_post",
        "https://www.linkedin.com/posts/ana_1",
    )
    left = _plan(_at_step(2, "sent"))
    assert (left.current_node, left.action, left.entered) == ("done", None, True)


def test_a_failed_action_of_a_bundle_takes_its_error_edge_and_queues_no_more() -> None:
    t = _plan(_at_step(1, "failed"))
    assert (t.current_node, t.action) == ("failed", None)
    assert t.error is not None


def test_a_reply_while_a_bundle_waits_interrupts_it() -> None:
    t = _plan(_at_step(1), Reply(7, "not interested", None))
    assert (t.current_node, t.action, t.consumed_message_id) == ("stopped", None, 7)
    assert t.status is Status.RUNNING
