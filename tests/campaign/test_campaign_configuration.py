"""What campaigns read from their environment, what they may not show a contact, and what the
channel and storage can carry: each refused with the node it concerns."""

from __future__ import annotations

import pytest

from parley.campaign import parse_campaign
from parley.conversation.planner import plan_failure, plan_step
from parley.conversation.state_machine import Snapshot
from parley.errors import CampaignInvalid
from parley.vocabulary import Status

CRM = """
name: crm-call
env:
  CRM_URL: http://127.0.0.1:8090
error_text: "Sorry {name}, something broke."
start: ask
nodes:
  - {id: ask, type: ask, prompt: "Name?", var: name}
  - id: register
    type: http
    url: "{env.CRM_URL}/contacts/{name}"
    headers: {Authorization: "Bearer {secret.crm-token}"}
    send: [name]
  - {id: done, type: end, text: "Bye"}
edges:
  - {from: ask, to: register}
  - {from: register, to: done}
"""


def _problems(text: str) -> list[tuple[str | None, str]]:
    with pytest.raises(CampaignInvalid) as caught:
        parse_campaign(text)
    return caught.value.problems


def test_env_values_come_from_the_environment_and_fall_back_to_the_campaign_default() -> None:
    campaign = parse_campaign(CRM)
    at_register = Snapshot("register", {"name": "Ana"}, 0, None)
    default = plan_step(campaign, at_register, None)
    configured = plan_step(campaign, at_register, None, {"CRM_URL": "https://crm.example.com"})
    assert default.http is not None and configured.http is not None
    assert default.http.url == "http://127.0.0.1:8090/contacts/Ana"
    assert configured.http.url == "https://crm.example.com/contacts/Ana"


def test_an_answer_placed_into_a_url_cannot_change_its_host_or_path() -> None:
    campaign = parse_campaign(CRM)
    hostile = Snapshot("register", {"name": "../admin?x=1#@evil.example"}, 0, None)
    call = plan_step(campaign, hostile, None).http
    assert call is not None
    assert call.url == "http://127.0.0.1:8090/contacts/..%2Fadmin%3Fx%3D1%23%40evil.example"


def test_secrets_stay_unresolved_in_the_planned_call() -> None:
    call = plan_step(parse_campaign(CRM), Snapshot("register", {"name": "A"}, 0, None), None).http
    assert call is not None and call.headers == {"Authorization": "Bearer {secret.crm-token}"}


def test_a_node_failing_for_good_without_an_error_edge_apologises_and_fails() -> None:
    t = plan_failure(parse_campaign(CRM), Snapshot("register", {"name": "Ana"}, 0, None), "503")
    assert t.status is Status.FAILED and t.error == "503"
    assert t.outbound is not None and t.outbound.text == "Sorry Ana, something broke."


def test_a_node_failing_for_good_follows_its_error_edge() -> None:
    with_edge = CRM.replace(
        "  - {from: register, to: done}",
        "  - {from: register, to: done}\n  - {from: register, to: sorry, when: error}",
    ).replace(
        '  - {id: done, type: end, text: "Bye"}',
        '  - {id: done, type: end, text: "Bye"}\n'
        '  - {id: sorry, type: end, text: "We will call you"}',
    )
    t = plan_failure(parse_campaign(with_edge), Snapshot("register", {}, 0, None), "503")
    assert (t.current_node, t.status, t.outbound) == ("sorry", Status.RUNNING, None)


def test_the_ok_path_never_takes_an_error_edge() -> None:
    text = CRM.replace(
        "  - {from: register, to: done}",
        "  - {from: register, to: ask, when: error}\n  - {from: register, to: done}",
    )
    campaign = parse_campaign(text)
    assert campaign.next_node("register", {}, outcome="ok") == "done"


def test_an_undeclared_env_name_is_refused_with_its_node() -> None:
    problems = _problems(CRM.replace("{env.CRM_URL}", "{env.BILLING_URL}"))
    assert any(node == "register" and "BILLING_URL" in m for node, m in problems), problems


def test_a_secret_anywhere_but_an_http_header_is_refused() -> None:
    problems = _problems(CRM.replace('text: "Bye"', 'text: "Bye {secret.crm-token}"'))
    assert any(node == "done" and "secrets may only appear" in m for node, m in problems)


def test_a_configured_url_that_is_not_http_is_refused() -> None:
    problems = _problems(CRM.replace("CRM_URL: http://127.0.0.1:8090", "CRM_URL: ftp-server"))
    assert any(node == "register" and "not an http URL" in m for node, m in problems)


def test_button_ids_longer_than_storage_holds_are_refused() -> None:
    long_id = "x" * 300
    text = f"""
name: buttons
start: ask
nodes:
  - id: ask
    type: ask
    prompt: "Pick"
    var: pick
    validate: choices
    choices: [{{id: {long_id}, title: Yes}}]
  - {{id: done, type: end}}
edges:
  - {{from: ask, to: done}}
"""
    problems = _problems(text)
    assert any(node == "ask" and "choices[0].id has 300 characters" in m for node, m in problems)


def test_node_ids_longer_than_storage_holds_are_refused() -> None:
    long_id = "n" * 101
    problems = _problems(
        CRM.replace("id: register", f"id: {long_id}")
        .replace("to: register", f"to: {long_id}")
        .replace("from: register", f"from: {long_id}")
    )
    assert any("at most 100 can be stored" in m for _node, m in problems), problems


def test_an_unknown_channel_is_refused() -> None:
    problems = _problems(CRM.replace("name: crm-call", "name: crm-call\nchannel: pigeon"))
    assert any(node is None and "unknown channel 'pigeon'" in m for node, m in problems)
