"""What the onboarding and echo bots say, so every peer and every transcript check agree.

The peers (DBOS, naive Prefect, the floor) are hand-written versions of
``examples/campaigns/onboarding.yaml``; Parley runs the YAML itself. Checking these texts against
the YAML at start-up (``check_against_campaigns``) means a campaign edit fails the benchmark
loudly instead of making every transcript look "lost".
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Final

import yaml

ONBOARDING_YAML: Final = Path("examples/campaigns/onboarding.yaml")
ECHO_YAML: Final = Path(__file__).parent / "campaigns" / "echo.yaml"

GREETING: Final = "Hi, welcome aboard! What's your name?"
ASK_EMAIL: Final = "Nice to meet you, {name}! What's your email address?"
EMAIL_RETRY: Final = "That doesn't look like an email address. Please try again."
EMAIL_UNREADABLE: Final = "Sorry, we couldn't read your email. Write to us any time to start again."
EMAIL_ATTEMPTS: Final = 3
ASK_PLAN: Final = "Which plan would you like, {name}?"
PLAN_BUTTONS: Final = (("basic", "Basic"), ("pro", "Pro"))
CONFIRM: Final = "Thanks {name}, you're on {plan}."

ECHO_PROMPT: Final = "Say something (or stop)."
ECHO_REPLY: Final = "You said {msg}."
ECHO_BYE: Final = "Bye!"

# Deliberately simple: the users of the benchmark only send well-formed addresses.
_EMAIL: Final = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")


def valid_email(text: str) -> bool:
    return bool(_EMAIL.match(text.strip()))


def onboarding_transcript(name: str, plan: str) -> list[list[str]]:
    """Bot texts per user turn: "Hi", the name, the email, the plan button."""
    return [
        [GREETING],
        [ASK_EMAIL.format(name=name)],
        [ASK_PLAN.format(name=name)],
        [CONFIRM.format(name=name, plan=plan)],
    ]


def echo_turn(msg: str) -> list[str]:
    return [ECHO_REPLY.format(msg=msg), ECHO_PROMPT]


def _nodes(path: Path) -> dict[str, dict[str, Any]]:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    return {node["id"]: node for node in document["nodes"]}


def check_against_campaigns() -> None:
    """Fail fast when the campaigns no longer say what the hand-written peers say."""
    nodes = _nodes(ONBOARDING_YAML)
    expected = {
        ("ask_name", "prompt"): GREETING,
        ("ask_email", "prompt"): ASK_EMAIL,
        ("ask_email", "retry"): EMAIL_RETRY,
        ("email_unreadable", "text"): EMAIL_UNREADABLE,
        ("ask_plan", "prompt"): ASK_PLAN,
        ("confirm", "text"): CONFIRM,
    }
    echo = _nodes(ECHO_YAML)
    expected_echo = {
        ("listen", "prompt"): ECHO_PROMPT,
        ("echo", "text"): ECHO_REPLY,
        ("bye", "text"): ECHO_BYE,
    }
    stale = [
        f"{path}:{node}.{key}"
        for path, table, wanted in (
            (ONBOARDING_YAML, nodes, expected),
            (ECHO_YAML, echo, expected_echo),
        )
        for (node, key), text in wanted.items()
        if table.get(node, {}).get(key) != text
    ]
    buttons = tuple((c["id"], c["title"]) for c in nodes.get("ask_plan", {}).get("choices", []))
    if buttons != PLAN_BUTTONS:
        stale.append(f"{ONBOARDING_YAML}:ask_plan.choices")
    if stale:
        raise SystemExit(
            "bench/script.py no longer matches the campaigns the peers re-implement: "
            + ", ".join(stale)
        )
