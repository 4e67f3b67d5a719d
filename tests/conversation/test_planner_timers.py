"""The planner walking the follow-up campaign: delays, waits, reply timeouts, tasks, BREAK_FLOW,
follow-ups that a reply makes moot, inactivity — one step at a time, on an explicit clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from parley.campaign import load_campaign, parse_campaign
from parley.conversation.planner import plan_step
from parley.conversation.state_machine import Reply, Snapshot, Transition, Wait
from parley.vocabulary import Status, WaitKind

ROOT = Path(__file__).resolve().parents[2]
FOLLOW_UP = load_campaign(ROOT / "examples/campaigns/follow_up.yaml")
MONDAY = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)  # Monday 10:00 in Madrid (CET)


def at(
    node: str,
    now: datetime,
    *,
    entered: datetime = MONDAY,
    done: bool = False,
    follow_up: bool = False,
    task_result: dict[str, Any] | None = None,
    **variables: Any,
) -> Snapshot:
    base = {"tries": 0, "first_reply": ""}
    return Snapshot(
        node,
        {**base, **variables},
        0,
        None,
        node_done=done,
        entered_at=entered,
        now=now,
        follow_up=follow_up,
        task_result=task_result,
    )


def reply(text: str, message_id: int = 1) -> Reply:
    return Reply(message_id, text, None)


def test_set_assigns_its_values_and_moves_on_at_once() -> None:
    t = plan_step(FOLLOW_UP, at("setup", MONDAY, tries=None), None)
    assert (t.current_node, t.entered, t.variables["tries"]) == ("intro", True, 0)
    assert t.outbound is None and t.wait is None


def test_a_delay_waits_on_the_timer_and_then_sends() -> None:
    early = plan_step(FOLLOW_UP, at("intro", MONDAY + timedelta(minutes=3)), None)
    assert early.outbound is None
    assert early.wait == Wait(WaitKind.TIMER, MONDAY + timedelta(minutes=10))
    assert not early.node_done
    due = plan_step(FOLLOW_UP, at("intro", MONDAY + timedelta(minutes=10)), None)
    assert due.outbound is not None and "quick call" in due.outbound.text
    assert (due.current_node, due.entered, due.follow_up) == ("first_wait", True, True)


def test_wait_for_reply_waits_for_the_reply_until_its_timeout() -> None:
    t = plan_step(FOLLOW_UP, at("first_wait", MONDAY), None)
    assert t.wait == Wait(WaitKind.REPLY, MONDAY + timedelta(days=2))
    assert (t.status, t.node_done) == (Status.RUNNING, True)


def test_the_reply_timeout_follows_no_reply_exactly_at_its_deadline() -> None:
    deadline = MONDAY + timedelta(days=2)
    before = plan_step(
        FOLLOW_UP, at("first_wait", deadline - timedelta(seconds=1), done=True), None
    )
    assert before.current_node == "first_wait" and before.wait is not None
    after = plan_step(FOLLOW_UP, at("first_wait", deadline, done=True), None)
    assert (after.current_node, after.follow_up) == ("reminder", True)


def test_a_reply_is_stored_and_routed_and_ends_the_follow_up_mode() -> None:
    t = plan_step(
        FOLLOW_UP,
        at("first_wait", MONDAY + timedelta(hours=5), done=True, follow_up=True),
        reply("Yes, call me"),
    )
    assert (t.current_node, t.consumed_message_id) == ("route_reply", 1)
    assert t.variables["first_reply"] == "Yes, call me"
    assert t.follow_up is False
    routed = plan_step(FOLLOW_UP, at("route_reply", MONDAY, first_reply="Yes, call me"), None)
    assert routed.current_node == "call"
    stop = plan_step(FOLLOW_UP, at("route_reply", MONDAY, first_reply="please STOP"), None)
    assert stop.current_node == "unsubscribe"


def test_a_task_waits_for_a_person_and_its_result_chooses_the_edge() -> None:
    waiting = plan_step(FOLLOW_UP, at("call", MONDAY), None)
    assert waiting.wait == Wait(WaitKind.OPERATOR, MONDAY + timedelta(days=5))
    reached = plan_step(
        FOLLOW_UP,
        at("call", MONDAY + timedelta(hours=1), done=True, task_result={"outcome": "reached"}),
        None,
    )
    assert reached.current_node == "thanks" and reached.follow_up is False
    nobody = plan_step(FOLLOW_UP, at("call", MONDAY + timedelta(days=5), done=True), None)
    assert nobody.current_node == "close"


def test_a_message_while_a_person_has_the_task_is_read_and_the_task_stays_open() -> None:
    t = plan_step(FOLLOW_UP, at("call", MONDAY, done=True), reply("any news?"))
    assert (t.current_node, t.consumed_message_id) == ("call", 1)
    assert t.wait is not None and t.wait.kind is WaitKind.OPERATOR


def test_wait_until_tuesday_10_is_read_in_the_campaign_timezone() -> None:
    friday_evening = datetime(2026, 12, 11, 17, 1, tzinfo=UTC)
    t = plan_step(FOLLOW_UP, at("next_tuesday", friday_evening, entered=friday_evening), None)
    assert t.wait == Wait(WaitKind.TIMER, datetime(2026, 12, 15, 9, 0, tzinfo=UTC))  # 10:00 CET


def test_a_contact_timezone_moves_the_local_time() -> None:
    friday = datetime(2026, 12, 11, 17, 1, tzinfo=UTC)
    snapshot = at("next_tuesday", friday, entered=friday)
    in_new_york = Snapshot(**{**snapshot.__dict__, "contact": {"timezone": "America/New_York"}})
    t = plan_step(FOLLOW_UP, in_new_york, None)
    assert t.wait is not None and t.wait.until == datetime(2026, 12, 15, 15, 0, tzinfo=UTC)


def test_break_flow_a_reply_during_a_timer_wait_jumps_to_on_reply() -> None:
    friday = datetime(2026, 12, 11, 17, 1, tzinfo=UTC)
    t = plan_step(
        FOLLOW_UP,
        at("next_tuesday", friday + timedelta(days=1), entered=friday, done=True, follow_up=True),
        reply("I'm free now"),
    )
    assert (t.current_node, t.consumed_message_id, t.entered) == ("heard_back", 1, True)
    assert t.follow_up is False


def test_a_reply_before_a_follow_up_went_out_means_it_is_not_sent() -> None:
    """The worst moment (docs/campaigns.md): the reminder was planned by the timeout, the lead
    wrote before it went out. The reminder is not sent; the message goes where replies go."""
    t = plan_step(
        FOLLOW_UP,
        at("reminder", MONDAY + timedelta(days=2), follow_up=True),
        reply("sorry, busy week"),
    )
    assert t.outbound is None
    assert (t.current_node, t.consumed_message_id) == ("heard_back", 1)


def test_without_on_reply_an_unsent_follow_up_is_skipped_and_the_next_wait_reads_it() -> None:
    graph = parse_campaign(
        """
name: nudge
start: wait_a_day
nodes:
  - {id: wait_a_day, type: wait, duration: 1d}
  - {id: nudge, type: send, text: "Still there?"}
  - {id: listen, type: wait_for_reply, timeout: 2d, var: answer}
  - {id: thanks, type: end, text: "Thanks!"}
  - {id: bye, type: end}
edges:
  - {from: wait_a_day, to: nudge}
  - {from: nudge, to: listen}
  - {from: listen, to: thanks, when: replied}
  - {from: listen, to: bye, when: no_reply}
"""
    )
    day = MONDAY + timedelta(days=1)
    moved = plan_step(graph, Snapshot("wait_a_day", {}, 0, None, True, MONDAY, day), None)
    assert (moved.current_node, moved.follow_up) == ("nudge", True)
    skipped = plan_step(
        graph, Snapshot("nudge", {}, 0, None, False, day, day, follow_up=True), reply("hi")
    )
    assert (skipped.outbound, skipped.current_node, skipped.consumed_message_id) == (
        None,
        "listen",
        None,
    )
    heard = plan_step(graph, Snapshot("listen", {}, 0, None, False, day, day), reply("hi"))
    assert (heard.current_node, heard.variables["answer"]) == ("thanks", "hi")


def test_inactivity_closes_a_conversation_left_waiting_with_its_last_message() -> None:
    graph = parse_campaign(
        """
name: quiet
start: ask
inactivity_timeout: {after: 2d, text: "Closing this chat for now."}
nodes:
  - {id: ask, type: ask, prompt: "Name?", var: name}
  - {id: done, type: end}
edges:
  - {from: ask, to: done}
"""
    )
    waiting = plan_step(graph, Snapshot("ask", {}, 0, None, True, MONDAY, MONDAY), None)
    assert waiting.wait == Wait(WaitKind.REPLY, MONDAY + timedelta(days=2))
    late = MONDAY + timedelta(days=2)
    closed: Transition = plan_step(graph, Snapshot("ask", {}, 0, None, True, MONDAY, late), None)
    assert closed.status is Status.COMPLETED
    assert closed.outbound is not None and closed.outbound.text == "Closing this chat for now."


def test_an_end_node_with_a_delay_waits_then_sends_its_text_and_completes() -> None:
    hour = MONDAY + timedelta(hours=1)
    early = plan_step(FOLLOW_UP, at("thanks", MONDAY + timedelta(minutes=59)), None)
    assert early.wait == Wait(WaitKind.TIMER, hour) and early.status is Status.RUNNING
    done = plan_step(FOLLOW_UP, at("thanks", hour), None)
    assert done.status is Status.COMPLETED and done.outbound is not None
