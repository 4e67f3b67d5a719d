"""Leaving a node over time: ``next_edge``, ``next_deadline`` and what a node waits for."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from parley.campaign import (
    EdgeContext,
    ExpressionError,
    SetNode,
    TaskNode,
    load_campaign,
    parse_campaign,
)

FOLLOW_UP = Path(__file__).resolve().parents[2] / "examples" / "campaigns" / "follow_up.yaml"

TIMING = """
name: timing
timezone: Europe/Madrid
on_reply: interrupted
start: hello
nodes:
  - {id: hello, type: send, text: "Hi", delay: 1h}
  - {id: listen, type: wait_for_reply, timeout: 2d, var: reply}
  - {id: nudge, type: send, text: "Still there?"}
  - {id: tuesday, type: wait, until: {weekday: tue, time: "10:00"}}
  - {id: pause, type: wait, duration: 1d, delay: 1h}
  - {id: ask, type: ask, prompt: "Name?", var: name}
  - {id: call, type: task, title: "Call", var: result, outcomes: [reached, voicemail]}
  - {id: interrupted, type: send, text: "Got it"}
  - {id: done, type: end}
  - {id: late, type: end}
edges:
  - {from: hello, to: listen}
  - {from: listen, to: done, when: {var: reply, contains: stop}}
  - {from: listen, to: ask, when: replied}
  - {from: listen, to: nudge, when: no_reply}
  - {from: nudge, to: tuesday}
  - {from: tuesday, to: pause, when: replied}
  - {from: tuesday, to: pause}
  - {from: pause, to: ask}
  - {from: ask, to: late, when: {time_passed: 3d}}
  - {from: ask, to: call}
  - {from: call, to: done, when: {task_result: reached}}
  - {from: call, to: late}
  - {from: interrupted, to: done}
"""
CAMPAIGN = parse_campaign(TIMING)
ENTERED = datetime(2025, 6, 2, 7, 0, tzinfo=UTC)  # Monday 09:00 in Madrid


def _at(after: timedelta = timedelta(0), **facts: Any) -> EdgeContext:
    return EdgeContext(entered_at=ENTERED, now=ENTERED + after, **facts)


def _target(node: str, ctx: EdgeContext) -> str | None:
    edge = CAMPAIGN.next_edge(node, ctx)
    return None if edge is None else edge.target


def test_a_delay_holds_the_node_then_its_edges_apply() -> None:
    during = _at(timedelta(minutes=30))
    assert CAMPAIGN.is_waiting("hello", during)
    assert _target("hello", during) is None
    assert CAMPAIGN.next_deadline("hello", during) == ENTERED + timedelta(hours=1)
    after = _at(timedelta(hours=1))
    assert _target("hello", after) == "listen"
    assert CAMPAIGN.next_deadline("hello", after) is None


def test_a_reply_during_a_timer_wait_goes_to_on_reply_unless_the_node_has_a_replied_edge() -> None:
    assert _target("hello", _at(timedelta(minutes=5), replied=True)) is None
    assert CAMPAIGN.on_reply_from("hello") == "interrupted"
    assert CAMPAIGN.on_reply_from("pause") == "interrupted"
    assert CAMPAIGN.on_reply_from("tuesday") is None  # its own replied edge takes it
    assert _target("tuesday", _at(timedelta(hours=1), replied=True)) == "pause"
    assert CAMPAIGN.on_reply_from("listen") is None  # a wait_for_reply consumes its reply


def test_wait_for_reply_takes_the_reply_or_times_out() -> None:
    assert _target("listen", _at(timedelta(days=1))) is None
    assert CAMPAIGN.next_deadline("listen", _at(timedelta(days=1))) == ENTERED + timedelta(days=2)
    assert _target("listen", _at(timedelta(days=2))) == "nudge"
    replied = _at(timedelta(hours=3), replied=True, variables={"reply": "hello"})
    assert _target("listen", replied) == "ask"
    assert CAMPAIGN.next_deadline("listen", replied) is None
    stop = _at(timedelta(hours=3), replied=True, variables={"reply": "Please STOP"})
    assert _target("listen", stop) == "done"


def test_conditions_on_a_waiting_node_wait_for_what_it_waits_for() -> None:
    # An old "stop" in the variable must not end the conversation at the timeout.
    timed_out = _at(timedelta(days=2), variables={"reply": "stop"})
    assert _target("listen", timed_out) == "nudge"


def test_wait_until_a_weekday_reads_the_contacts_clock() -> None:
    madrid_tuesday = datetime(2025, 6, 3, 8, 0, tzinfo=UTC)  # 10:00 CEST
    assert CAMPAIGN.next_deadline("tuesday", _at()) == madrid_tuesday
    assert _target("tuesday", _at(madrid_tuesday - ENTERED - timedelta(seconds=1))) is None
    assert _target("tuesday", _at(madrid_tuesday - ENTERED)) == "pause"
    new_york = {"timezone": "America/New_York"}
    assert CAMPAIGN.next_deadline("tuesday", _at(contact=new_york)) == datetime(
        2025, 6, 3, 14, 0, tzinfo=UTC
    )
    typo = {"timezone": "Europe/Madird"}
    assert CAMPAIGN.next_deadline("tuesday", _at(contact=typo)) == madrid_tuesday


def test_a_wait_with_a_delay_starts_counting_after_it() -> None:
    assert CAMPAIGN.next_deadline("pause", _at()) == ENTERED + timedelta(days=1, hours=1)
    later = _at(timedelta(hours=2))
    assert CAMPAIGN.next_deadline("pause", later) == ENTERED + timedelta(days=1, hours=1)
    assert _target("pause", later) is None
    assert _target("pause", _at(timedelta(days=1, hours=1))) == "ask"


def test_an_ask_times_out_only_before_its_answer_moves_it_on() -> None:
    assert _target("ask", _at(timedelta(days=1))) is None  # the catch-all is for the answer
    assert CAMPAIGN.next_deadline("ask", _at(timedelta(days=1))) == ENTERED + timedelta(days=3)
    assert _target("ask", _at(timedelta(days=3))) == "late"
    assert _target("ask", _at(timedelta(days=1), replied=True)) == "call"


def test_a_task_waits_for_its_result() -> None:
    assert CAMPAIGN.is_waiting("call", _at(timedelta(days=30)))
    assert _target("call", _at(timedelta(days=30))) is None
    assert CAMPAIGN.next_deadline("call", _at()) is None
    assert _target("call", _at(task_result={"outcome": "reached"})) == "done"
    assert _target("call", _at(task_result={"outcome": "voicemail"})) == "late"


def test_a_failed_node_takes_only_outcome_edges() -> None:
    assert _target("hello", _at(timedelta(hours=2), outcome="error")) is None
    assert CAMPAIGN.next_deadline("ask", _at(outcome="error")) is None


def test_departure_triggers_say_what_a_node_waits_for() -> None:
    triggers = {node.id: CAMPAIGN.departure_triggers(node.id) for node in CAMPAIGN.nodes}
    assert triggers["hello"] == {"time", "reply"}  # the delay, and the on_reply jump
    assert triggers["listen"] == {"time", "reply"}
    assert triggers["nudge"] == frozenset()
    assert triggers["tuesday"] == {"time", "reply"}
    assert triggers["ask"] == {"time", "reply"}
    assert triggers["call"] == {"task"}
    assert triggers["done"] == frozenset()
    edges = CAMPAIGN.edges_from("listen")
    assert [(e.waits_for_reply, e.waits_for_time) for e in edges] == [
        (False, False),
        (True, False),
        (False, True),
    ]


def test_contexts_are_kept_in_utc_and_must_be_aware() -> None:
    ctx = EdgeContext(
        entered_at=datetime(2025, 6, 2, 9, 0).astimezone(), now=datetime.now().astimezone()
    )
    assert ctx.entered_at.tzinfo is UTC and ctx.now.tzinfo is UTC
    with pytest.raises(ValueError, match="aware"):
        EdgeContext(entered_at=datetime(2025, 6, 2), now=ENTERED)


def test_the_legacy_next_node_ignores_time_and_replies() -> None:
    assert CAMPAIGN.next_node("listen", {"reply": "stop"}) == "done"
    assert CAMPAIGN.next_node("listen", {}) is None
    assert CAMPAIGN.next_node("ask", {}) == "call"


def test_set_nodes_assign_in_order() -> None:
    node = SetNode.model_validate(
        {
            "id": "s",
            "type": "set",
            "set": {
                "score": {"expr": "score + 10"},
                "label": "{name} has {score}",
                "vip": True,
                "ratio": 0.5,
                "loud": {"expr": "upper(label)"},
            },
        }
    )
    values = node.evaluate({"score": 1, "name": "Ada"})
    assert values == {
        "score": 11,
        "label": "Ada has 11",
        "vip": True,
        "ratio": 0.5,
        "loud": "ADA HAS 11",
    }
    assert list(node.variables_read()) == [("set.score", "score"), ("set.label", "name")]
    with pytest.raises(ExpressionError):
        node.evaluate({"name": "Ada"})


def test_a_task_result_model_validates_outcome_and_fields() -> None:
    follow_up = load_campaign(FOLLOW_UP)
    task = follow_up.node("call")
    assert isinstance(task, TaskNode)
    model = task.result_model()
    assert model is task.result_model()  # built once
    result = model.model_validate(
        {"outcome": "voicemail", "notes": "left a message", "callback_at": "2025-06-03T10:00Z"}
    )
    assert result.model_dump()["callback_at"] == datetime(2025, 6, 3, 10, 0, tzinfo=UTC)
    assert model.model_validate({"outcome": "reached"}).model_dump()["notes"] is None
    for bad in (
        {"outcome": "busy"},
        {"outcome": "reached", "mood": "good"},
        {"outcome": "reached", "callback_at": "2025-06-03T10:00"},  # naive: which zone?
        {"notes": "no outcome"},
    ):
        with pytest.raises(ValidationError):
            model.model_validate(bad)
    schema = model.model_json_schema()
    assert schema["properties"]["outcome"]["enum"] == ["reached", "voicemail", "no_answer"]
    assert list(schema["properties"]) == ["outcome", "notes", "callback_at"]


def test_inactivity_closes_only_while_waiting_for_the_contact() -> None:
    follow_up = load_campaign(FOLLOW_UP)
    at_wait = _at(timedelta(days=1))
    assert follow_up.inactive_at("first_wait", at_wait) == ENTERED + timedelta(days=30)
    heard = ENTERED + timedelta(days=3)
    assert follow_up.inactive_at("first_wait", at_wait, heard) == heard + timedelta(days=30)
    assert follow_up.inactive_at("call", at_wait) is None  # a person owes the next step
    assert CAMPAIGN.inactive_at("ask", at_wait) is None  # no inactivity_timeout set


def test_a_wait_for_reply_takes_a_reply_even_during_its_delay() -> None:
    campaign = parse_campaign(
        TIMING.replace("type: wait_for_reply, timeout: 2d", "type: wait_for_reply, delay: 1h")
    )
    assert campaign.on_reply_from("listen") is None
    during = _at(timedelta(minutes=5), replied=True, variables={"reply": "hi"})
    edge = campaign.next_edge("listen", during)
    assert edge is not None and edge.target == "ask"
    assert campaign.next_deadline("listen", _at()) == ENTERED + timedelta(hours=1)
    assert campaign.next_deadline("listen", _at(timedelta(hours=2))) == ENTERED + timedelta(
        days=14, hours=1
    )
