"""Graph checks of the richer language: loops that never wait, nodes where a conversation could
stop silently, variables read before every path sets them, and conditions out of place."""

from __future__ import annotations

from pathlib import Path

import pytest

from parley.campaign import parse_campaign
from parley.errors import CampaignInvalid

FOLLOW_UP = Path(__file__).resolve().parents[2] / "examples" / "campaigns" / "follow_up.yaml"
Problems = list[tuple[str | None, str]]


def _campaign(nodes: str, edges: str, header: str = "") -> str:
    end = "  - {id: z, type: end}"
    return f"name: flow\nstart: a\n{header}\nnodes:\n{nodes}\n{end}\nedges:\n{edges}\n"


def _problems(text: str) -> Problems:
    with pytest.raises(CampaignInvalid) as caught:
        parse_campaign(text)
    return caught.value.problems


def _has(problems: Problems, node: str | None, *fragments: str) -> bool:
    return any(
        problem_node == node and all(fragment in message for fragment in fragments)
        for problem_node, message in problems
    )


def test_the_follow_up_example_validates() -> None:
    campaign = parse_campaign(FOLLOW_UP.read_text(encoding="utf-8"))
    assert campaign.on_reply == "heard_back"


def test_the_follow_up_example_needs_its_first_reply_default() -> None:
    text = FOLLOW_UP.read_text(encoding="utf-8").replace('      first_reply: ""', "")
    problems = _problems(text.replace("  # so every later text and condition may read it", ""))
    # a reply during intro's delay jumps to heard_back -> call before anything set first_reply
    assert _has(
        problems,
        "call",
        "description uses variable 'first_reply'",
        "not along setup -> intro -> heard_back -> call",
    ), problems


# --- loops ------------------------------------------------------------------------------------

LOOP_NODES = """
  - {id: a, type: send, text: "one"}
  - {id: b, type: send, text: "two"}
"""


def test_a_loop_that_never_waits_is_refused_with_its_nodes() -> None:
    problems = _problems(
        _campaign(
            LOOP_NODES,
            "  - {from: a, to: b}\n  - {from: b, to: z, when: {var: x, exists: true}}\n"
            "  - {from: b, to: a}\n",
        )
        + "  - {from: a, to: z, when: error}\n"
    )
    assert _has(problems, "a", "the loop a -> b -> a never waits"), problems
    assert len([p for p in problems if "never waits" in p[1]]) == 1


@pytest.mark.parametrize(
    ("nodes", "edges"),
    [
        (LOOP_NODES.replace('text: "two"}', 'text: "two", delay: 1d}'), "  - {from: b, to: a}"),
        (LOOP_NODES, "  - {from: b, to: a, when: {time_passed: 1d}}\n  - {from: b, to: z}"),
        (
            LOOP_NODES.replace('type: send, text: "two"', "type: wait, duration: 1h"),
            "  - {from: b, to: a}",
        ),
    ],
)
def test_a_loop_with_a_wait_in_it_is_fine(nodes: str, edges: str) -> None:
    parse_campaign(
        _campaign(nodes, "  - {from: a, to: b}\n  - {from: a, to: z, when: error}\n" + edges)
    )


def test_an_error_loop_around_an_http_call_is_refused() -> None:
    problems = _problems(
        _campaign(
            '  - {id: a, type: http, url: "https://crm.example"}\n'
            '  - {id: sorry, type: send, text: "Retrying"}\n',
            "  - {from: a, to: z}\n  - {from: a, to: sorry, when: error}\n"
            "  - {from: sorry, to: a}\n",
        )
    )
    assert _has(problems, "a", "the loop a -> sorry -> a never waits"), problems


# --- default edges ----------------------------------------------------------------------------


def test_a_node_whose_conditions_may_all_fail_needs_a_default_edge() -> None:
    problems = _problems(
        _campaign(
            "  - {id: a, type: set, set: {plan: Pro}}\n  - {id: b, type: branch}\n",
            "  - {from: a, to: b}\n  - {from: b, to: z, when: {var: plan, equals: Pro}}\n",
        )
    )
    assert (
        "b",
        "branch node 'b' needs a default edge (an edge without 'when') so a conversation never "
        "stops here silently",
    ) in problems


@pytest.mark.parametrize(
    "edges",
    [
        "  - {from: b, to: z, when: {var: plan, exists: true}}\n"
        "  - {from: b, to: z, when: {var: plan, exists: false}}",
        "  - {from: b, to: z, when: {var: plan, equals: pro}}\n"
        "  - {from: b, to: z, when: {var: plan, not_equals: PRO}}",
        "  - {from: b, to: z, when: {var: plan, equals: pro}}\n"
        "  - {from: b, to: z, when: {time_passed: 1d}}",
    ],
)
def test_conditions_that_cover_every_case_need_no_default(edges: str) -> None:
    parse_campaign(
        _campaign(
            "  - {id: a, type: set, set: {plan: Pro}}\n  - {id: b, type: branch}\n",
            "  - {from: a, to: b}\n" + edges,
        )
    )


def test_a_wait_for_reply_needs_both_its_reply_and_its_timeout_handled() -> None:
    nodes = "  - {id: a, type: wait_for_reply, timeout: 3d}\n"
    problems = _problems(_campaign(nodes, "  - {from: a, to: z, when: replied}"))
    assert _has(
        problems, "a", "needs a 'when: no_reply' edge (taken when no reply comes within 3d)"
    ), problems
    problems = _problems(_campaign(nodes, "  - {from: a, to: z, when: no_reply}"))
    assert _has(problems, "a", "needs a 'when: replied' edge, or a default edge"), problems
    parse_campaign(
        _campaign(
            nodes, "  - {from: a, to: z, when: replied}\n  - {from: a, to: z, when: no_reply}"
        )
    )


TASK = '  - {id: a, type: task, title: "Call", var: call, outcomes: [reached, voicemail]}\n'


def test_a_task_needs_an_edge_for_every_outcome_or_a_default() -> None:
    problems = _problems(_campaign(TASK, "  - {from: a, to: z, when: {task_result: reached}}"))
    assert _has(
        problems, "a", "needs an edge for outcome 'voicemail' (when: {task_result: voicemail})"
    ), problems
    parse_campaign(
        _campaign(
            TASK,
            "  - {from: a, to: z, when: {task_result: reached}}\n"
            "  - {from: a, to: z, when: {task_result: VOICEMAIL}}",
        )
    )
    parse_campaign(
        _campaign(TASK, "  - {from: a, to: z, when: {task_result: reached}}\n  - {from: a, to: z}")
    )


def test_a_wait_left_only_by_a_reply_would_stop_after_the_wait() -> None:
    problems = _problems(
        _campaign("  - {id: a, type: wait, duration: 1d}\n", "  - {from: a, to: z, when: replied}")
    )
    assert _has(problems, "a", "wait node 'a' needs a default edge"), problems


# --- variables set on every path ---------------------------------------------------------------

BRANCHES = """
  - {id: a, type: ask, prompt: "Plan?", var: plan}
  - {id: b, type: http, url: "https://crm.example", result_var: crm}
  - {id: c, type: send, text: "You are {crm}"}
"""


def test_a_variable_set_on_only_one_path_is_refused_with_that_path() -> None:
    problems = _problems(
        _campaign(
            BRANCHES,
            "  - {from: a, to: b, when: {var: plan, equals: Pro}}\n  - {from: a, to: c}\n"
            "  - {from: b, to: c}\n  - {from: c, to: z}",
        )
    )
    assert (
        "c",
        "text uses variable 'crm', but it is not set on every path from start to 'c' "
        "(not along a -> c); set it on every path before",
    ) in problems


def test_an_exists_edge_guards_an_optional_variable() -> None:
    parse_campaign(
        _campaign(
            BRANCHES + '  - {id: d, type: send, text: "No CRM"}\n',
            "  - {from: a, to: b, when: {var: plan, equals: Pro}}\n  - {from: a, to: c}\n"
            "  - {from: b, to: c}\n  - {from: c, to: z}\n  - {from: d, to: z}",
        ).replace("  - {from: a, to: c}\n", "  - {from: a, to: d}\n")
    )
    guarded = _campaign(
        BRANCHES + "  - {id: d, type: branch}\n",
        "  - {from: a, to: b, when: {var: plan, equals: Pro}}\n  - {from: a, to: d}\n"
        "  - {from: b, to: d}\n  - {from: d, to: c, when: {var: crm, exists: true}}\n"
        "  - {from: d, to: z}\n  - {from: c, to: z}",
    )
    parse_campaign(guarded)


@pytest.mark.parametrize(
    ("edge", "why"),
    [
        ("{from: a, to: c, when: invalid}", "an ask left by 'invalid' has no answer"),
        ("{from: b, to: c, when: error}", "a failed http call has no result"),
    ],
)
def test_a_node_left_by_its_outcome_edge_has_not_set_its_variable(edge: str, why: str) -> None:
    nodes = BRANCHES.replace("{crm}", "{plan} {crm}")
    problems = _problems(
        _campaign(
            nodes,
            f"  - {{from: a, to: b}}\n  - {edge}\n  - {{from: b, to: c}}\n  - {{from: c, to: z}}",
        )
    )
    assert _has(problems, "c", "not set on every path from start to 'c'"), (why, problems)


def test_a_condition_reading_a_variable_not_yet_set_is_refused() -> None:
    problems = _problems(
        _campaign(
            "  - {id: a, type: send, text: Hi}\n  - {id: s, type: set, set: {score: 1}}\n",
            "  - {from: a, to: z, when: {var: score, gt: 0}}\n  - {from: a, to: s}\n"
            "  - {from: s, to: z}",
        )
    )
    assert _has(
        problems,
        "a",
        "edges[0]: condition uses variable 'score'",
        "not set yet when a conversation starts at 'a'",
        "or test it with 'exists' first",
    ), problems


def test_a_variable_nobody_sets_names_every_kind_of_setter_in_use() -> None:
    problems = _problems(
        _campaign('  - {id: a, type: set, set: {x: "{nope}"}}\n', "  - {from: a, to: z}")
    )
    assert ("a", "set.x uses variable 'nope', but no ask, http or set node sets it") in problems


def test_a_wait_for_reply_sets_its_variable_only_when_a_reply_came() -> None:
    problems = _problems(
        _campaign(
            "  - {id: a, type: wait_for_reply, var: answer}\n"
            '  - {id: b, type: send, text: "You said {answer}"}\n',
            "  - {from: a, to: b, when: replied}\n  - {from: a, to: b, when: no_reply}\n"
            "  - {from: b, to: z}",
        )
    )
    assert _has(problems, "b", "variable 'answer'", "not set on every path"), problems


def test_expressions_read_variables_too() -> None:
    problems = _problems(
        _campaign(
            '  - {id: a, type: set, set: {total: {expr: "price * 2"}}}\n', "  - {from: a, to: z}"
        )
    )
    assert _has(problems, "a", "set.total uses variable 'price', but no"), problems


# --- where conditions may stand ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("node", "when", "fragment"),
    [
        ("{id: a, type: send, text: Hi}", "replied", "'a' is a send node (it does not wait)"),
        (
            '{id: a, type: ask, prompt: "?", var: q, delay: 1h}',
            "replied",
            "'a' is a ask node (its reply is its answer)",
        ),
        (
            "{id: a, type: wait, duration: 1d}",
            "no_reply",
            "only applies to edges leaving a wait_for_reply node",
        ),
        ("{id: a, type: branch}", "{task_result: reached}", "only applies to edges leaving a task"),
    ],
)
def test_conditions_out_of_place_are_refused(node: str, when: str, fragment: str) -> None:
    problems = _problems(
        _campaign(f"  - {node}\n", f"  - {{from: a, to: z, when: {when}}}\n  - {{from: a, to: z}}")
    )
    assert _has(problems, "a", "edges[0]", fragment), problems


def test_a_reply_during_a_delay_may_take_its_own_edge() -> None:
    parse_campaign(
        _campaign(
            "  - {id: a, type: send, text: Hi, delay: 1d}\n",
            "  - {from: a, to: z, when: replied}\n  - {from: a, to: z}",
        )
    )


def test_a_task_result_must_be_one_of_the_outcomes() -> None:
    problems = _problems(
        _campaign(TASK, "  - {from: a, to: z, when: {task_result: busy}}\n  - {from: a, to: z}")
    )
    assert _has(
        problems, "a", "'task_result: busy' is not an outcome of task 'a'", "'reached', 'voicemail'"
    ), problems


def test_edges_that_interrupt_a_wait_are_not_shadowed_by_its_catch_all() -> None:
    parse_campaign(
        _campaign(
            "  - {id: a, type: wait, duration: 1d}\n",
            "  - {from: a, to: z}\n  - {from: a, to: z, when: replied}",
        )
    )
    problems = _problems(
        _campaign(
            "  - {id: a, type: send, text: Hi}\n",
            "  - {from: a, to: z}\n  - {from: a, to: z, when: {time_passed: 1d}}",
        )
    )
    assert _has(problems, "a", "edges[1] is never taken"), problems


# --- campaign-level fields --------------------------------------------------------------------


def test_on_reply_must_be_a_node_that_some_timer_wait_can_jump_to() -> None:
    nodes = "  - {id: a, type: send, text: Hi}\n"
    problems = _problems(_campaign(nodes, "  - {from: a, to: z}", "on_reply: ghost"))
    assert (None, "on_reply 'ghost' is not a node") in problems
    problems = _problems(_campaign(nodes, "  - {from: a, to: z}", "on_reply: z"))
    assert _has(problems, None, "on_reply 'z' is never used"), problems


def test_the_on_reply_sub_graph_is_reached_through_timer_waits() -> None:
    parse_campaign(
        _campaign(
            "  - {id: a, type: wait, duration: 1d}\n  - {id: sorry, type: send, text: Hi}\n",
            "  - {from: a, to: z}\n  - {from: sorry, to: z}",
            "on_reply: sorry",
        )
    )


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        ("timezone: Mars/Olympus", "unknown timezone 'Mars/Olympus'"),
        ("timezone: Europe", "unknown timezone 'Europe'"),
        ("inactivity_timeout: {after: soon, text: Bye}", "'soon' is not a duration"),
        ("inactivity_timeout: {after: 2d}", "field 'inactivity_timeout.text' is required"),
        ("inactivity_timeout: {after: 2d, text: 'Bye {who'}", "stray brace"),
        ("inactivity_timeout: {after: 2d, text: 'Bye {who}'}", "variable 'who', but no node"),
        ("error_text: 'Sorry {env.NOPE}'", "does not declare NOPE"),
    ],
)
def test_campaign_fields_are_checked(header: str, fragment: str) -> None:
    problems = _problems(
        _campaign("  - {id: a, type: send, text: Hi}\n", "  - {from: a, to: z}", header)
    )
    assert _has(problems, None, fragment), problems


@pytest.mark.parametrize(
    ("node", "fragment"),
    [
        ("{id: a, type: wait}", "needs exactly one of 'duration'"),
        ("{id: a, type: wait, duration: 1d, until: {time: '10:00'}}", "exactly one of"),
        ("{id: a, type: wait, until: {time: 10:00}}", "write the time in quotes"),
        ("{id: a, type: wait, until: {weekday: someday, time: '10:00'}}", "not a weekday"),
        ("{id: a, type: wait_for_reply, timeout: 0s}", "not a positive duration"),
        ("{id: a, type: send, text: Hi, delay: 2 days}", "unknown unit 'days'"),
        ("{id: a, type: set, set: {}}", "field 'set'"),
        ("{id: a, type: set, set: {x: [1]}}", "expected a text (may use {variables})"),
        ("{id: a, type: set, set: {x: {expr: 'x.y'}}}", "field 'set.x.expr'"),
        ("{id: a, type: task, title: T, var: r, outcomes: []}", "field 'outcomes'"),
        ("{id: a, type: task, title: T, outcomes: [ok]}", "field 'var' is required"),
        (
            "{id: a, type: task, title: T, var: r, outcomes: [ok], fields: {outcome: text}}",
            "'outcome' is always part of a task result",
        ),
        (
            "{id: a, type: task, title: T, var: r, outcomes: [ok], fields: {n: colour}}",
            "field 'fields.n'",
        ),
    ],
)
def test_new_node_fields_are_checked_with_their_node(node: str, fragment: str) -> None:
    problems = _problems(_campaign(f"  - {node}\n", "  - {from: a, to: z}"))
    assert _has(problems, "a", "nodes[0] (id 'a')", fragment), problems
