"""``when: taken_over``: a send node's outreach action was taken over by a person's manual send.
The node counts as done; its ``taken_over`` edge is taken if it has one, else the way the node
would have gone had the action been sent."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from parley.campaign import EdgeContext, parse_campaign
from parley.conversation.planner import plan_step
from parley.conversation.state_machine import Snapshot, Wait
from parley.errors import CampaignInvalid
from parley.vocabulary import Status, WaitKind

NOW = datetime(2026, 12, 8, 10, 0, tzinfo=UTC)


def _campaign(edges: str, node: str = "{id: a, type: send, action: email, text: Hi}") -> str:
    return (
        "name: takeover\nchannel: linkedin\nstart: a\nnodes:\n"
        f"  - {node}\n  - {{id: b, type: end}}\n  - {{id: c, type: end}}\nedges:\n{edges}\n"
    )


def _problems(text: str) -> list[tuple[str | None, str]]:
    with pytest.raises(CampaignInvalid) as caught:
        parse_campaign(text)
    return caught.value.problems


def _taken_over_at(node: str) -> Snapshot:
    return Snapshot(
        node,
        {},
        0,
        Wait(WaitKind.ACTION),
        node_done=True,
        entered_at=NOW,
        now=NOW,
        task_result={"outcome": "taken_over", "reason": "a person took over", "replied": False},
    )


ROUTED = _campaign("  - {from: a, to: c, when: taken_over}\n  - {from: a, to: b}")


def test_a_taken_over_edge_is_taken_only_when_the_node_was_taken_over() -> None:
    campaign = parse_campaign(ROUTED)
    ctx = EdgeContext(entered_at=NOW, now=NOW)
    assert campaign.next_node("a", {}) == "b"
    assert campaign.next_node("a", {}, outcome="taken_over") == "c"
    edge = campaign.next_edge("a", ctx)
    assert edge is not None and edge.target == "b"


def test_a_taken_over_node_leaves_by_its_taken_over_edge_in_the_planner() -> None:
    t = plan_step(parse_campaign(ROUTED), _taken_over_at("a"), None)
    assert (t.current_node, t.entered, t.status) == ("c", True, Status.RUNNING)


def test_without_a_taken_over_edge_the_node_goes_on_as_if_its_action_was_sent() -> None:
    campaign = parse_campaign(_campaign("  - {from: a, to: b, when: error}\n  - {from: a, to: c}"))
    t = plan_step(campaign, _taken_over_at("a"), None)
    assert (t.current_node, t.entered, t.error) == ("c", True, None)


@pytest.mark.parametrize(
    ("node", "fragment"),
    [
        ("{id: a, type: send, text: Hi}", "'a' is a send node without one"),
        ("{id: a, type: wait, duration: 1d}", "'a' is a wait node"),
    ],
)
def test_taken_over_off_a_node_without_an_action_is_refused(node: str, fragment: str) -> None:
    problems = _problems(
        _campaign("  - {from: a, to: c, when: taken_over}\n  - {from: a, to: b}", node)
    )
    assert any(
        where == "a"
        and "edges[0]" in message
        and "only applies to edges leaving a send node with an 'action'" in message
        and fragment in message
        for where, message in problems
    ), problems


def test_a_node_left_only_when_taken_over_is_a_dead_end() -> None:
    problems = _problems(_campaign("  - {from: a, to: b, when: taken_over}"))
    assert any(
        where == "a" and "no outgoing edge besides 'when: taken_over'" in message
        for where, message in problems
    ), problems
