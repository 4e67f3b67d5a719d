"""State stays small whatever the conversation's length (issue 8, "Seeing it").

A 2,000-message conversation is driven turn by turn at the storage level, on SQLite and on
PostgreSQL, as its flow run would: each message is stored by the inbox, the run steps until the
conversation waits again. Most messages find the run still there (a live chat, waiting hot); at
messages 10, 100, 1,000 and 2,000 the message finds the run suspended, so the inbox asks for a
resume, the run takes the conversation over (``begin_run``), steps and suspends again
(``prepare_suspend``): the whole resume. There it measures what would grow if anything kept
the transcript:

* the conversation's stored variables (``len(json.dumps(row.variables))``);
* the step results Prefect persists (the pickled ``Cursor`` each ``run_step`` returns);
* the resume's run input (``ResumeInput``: why it was woken, never the message itself);
* the SQL statements one turn executes (the resume cost, as work rather than time);

and the same for a hot turn two messages later. None of them may be larger at 2,000 than at 10
(the step counter's extra digits in the cursor aside).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from sqlalchemy import event

from devkit.fakes.whatsapp_fake import FakeWhatsAppAPI
from parley.campaign import parse_campaign
from parley.campaign.registry import install_campaign
from parley.conversation import executor, handshake, inbox
from parley.conversation import operator_views as views
from parley.conversation.state_machine import Cursor
from parley.db import Database, queries
from parley.runtime import Runtime
from parley.vocabulary import Status, WaitKind
from prefect_adapter.resume_form import ResumeInput
from tests.storage.conftest import USER, make_batch

MESSAGES = 2_000
CHECKPOINTS = (10, 100, 1_000, 2_000)
DIGIT_SLACK = 4  # bytes: the step counter (in every cursor) grows from 2 digits to 4
ECHO = """\
# Goes on for ever: each answer is echoed in the next question, one step and one send a turn.
name: long-echo
start: begin
nodes:
  - {id: begin, type: set, set: {text: nothing}}
  - {id: listen, type: ask, prompt: "You said {text}. Say something.", var: text}
edges:
  - {from: begin, to: listen}
  - {from: listen, to: listen}
"""


@pytest.fixture
async def campaign_name(db: Database, tmp_path: Path) -> str:
    """This module's campaign instead of the onboarding one: a loop with no way out (an ask
    that leads back to itself)."""
    path = tmp_path / "long-echo.yaml"
    path.write_text(ECHO, encoding="utf-8")
    parse_campaign(ECHO)  # a cycle through an ask waits, so it validates
    async with db.transaction() as session:
        return (await install_campaign(session, path)).name


@dataclass
class Counter:
    statements: int = 0

    def __call__(self, *_: Any) -> None:
        self.statements += 1


@contextmanager
def counting(db: Database) -> Iterator[Counter]:
    """Every SQL statement sent to the database while the block runs."""
    counter = Counter()
    engine = db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", counter)
    try:
        yield counter
    finally:
        event.remove(engine, "before_cursor_execute", counter)


@dataclass(frozen=True)
class Measure:
    variables: int  # bytes of the row's variables, as JSON
    cursor: int  # bytes of the largest step result (a pickled Cursor) of the turn
    run_input: int  # bytes of the resume's run input, as JSON
    statements: int  # SQL statements the turn executed
    steps: int
    seconds: float
    last: Cursor  # where the run stands after the turn


async def _steps(rt: Runtime, conversation_id: int, cursor: Cursor) -> list[Cursor]:
    """What the run does with a message: it looks again (one step, whatever the cursor says)
    and steps on until the conversation waits again."""
    cursors: list[Cursor] = []
    while not cursors or cursor.wait is None:
        cursor = await executor.run_step(rt, conversation_id, cursor.step)
        cursors.append(cursor)
        assert len(cursors) <= 5, cursors
    assert cursor.status is Status.RUNNING and cursor.wait.kind is WaitKind.REPLY
    return cursors


async def _suspend(rt: Runtime, conversation_id: int, cursor: Cursor) -> None:
    decision = await handshake.prepare_suspend(rt, conversation_id, cursor.step)
    assert decision.suspend, "a message it has not read yet"


async def _turn(
    db: Database,
    rt: Runtime,
    campaign_name: str,
    conversation_id: int,
    n: int,
    cursor: Cursor,
    *,
    resume: bool,
    suspend: bool,
) -> Measure:
    """Message ``n`` comes in. ``resume``: the conversation's run is suspended, so the message
    resumes it (``begin_run``); otherwise the run is still there (a live chat, waiting hot).
    It steps (from ``cursor``, where the run left off) until the conversation waits again,
    then ``suspend``s or stays hot."""
    text = f"message {n:05d}"  # fixed width: a longer text is not a larger state
    started = time.perf_counter()
    with counting(db) as counter:
        stored = await inbox.store_batch(db, make_batch(text), campaign_name)
        woken = [(w.action, w.conversation_id) for w in stored.wakeups]
        assert woken == ([("resume", conversation_id)] if resume else []), (n, woken)
        if resume:
            cursor = await executor.begin_run(rt, conversation_id, None)
        cursors = await _steps(rt, conversation_id, cursor)
        if suspend:
            await _suspend(rt, conversation_id, cursors[-1])
    seconds = time.perf_counter() - started
    async with db.read() as session:
        row = await queries.conversations.get_conversation(session, conversation_id)
        assert row.variables == {"text": text}
        variables = len(json.dumps(row.variables))
    run_input = ResumeInput(reason="message", conversation_id=conversation_id)
    return Measure(
        variables=variables,
        cursor=max(len(cloudpickle.dumps(c)) for c in cursors),
        run_input=len(json.dumps(run_input.model_dump(mode="json"))),
        statements=counter.statements,
        steps=len(cursors),
        seconds=seconds,
        last=cursors[-1],
    )


def _no_growth(measures: dict[int, Measure]) -> None:
    first = measures[min(measures)]
    for n, m in measures.items():
        # One task run a turn: reading the answer is a quiet step, planned with the next ask.
        assert m.steps == first.steps == 1, (n, m)
        assert m.variables == first.variables, (n, m)  # the last answer, not all of them
        assert m.cursor <= first.cursor + DIGIT_SLACK, (n, m)
        assert m.run_input == first.run_input, (n, m)
        assert m.statements <= first.statements, (n, m)


@pytest.mark.parametrize("backend", ["sqlite"])  # sizes and statement counts, not the backend
async def test_state_stays_small_whatever_the_conversations_length(
    db: Database, runtime: Runtime, campaign_name: str, fake: FakeWhatsAppAPI, backend: str
) -> None:
    await inbox.store_batch(db, make_batch("hello"), campaign_name)
    conversation_id = int((await views.list_conversations(db))[0]["id"])
    cursor = await executor.begin_run(runtime, conversation_id, None)
    cursor = (await _steps(runtime, conversation_id, cursor))[-1]  # the first question
    # Most messages find the run still there (hot). Each checkpoint's message finds it suspended
    # (the turn before suspends) and it suspends again: a whole resume, measured. The turn two
    # after a checkpoint is measured as a hot one.
    suspends = {n for c in CHECKPOINTS for n in (c - 1, c)}
    resumed: dict[int, Measure] = {}
    hot: dict[int, Measure] = {}
    for n in range(1, MESSAGES + 1):
        measure = await _turn(
            db,
            runtime,
            campaign_name,
            conversation_id,
            n,
            cursor,
            resume=n - 1 in suspends,
            suspend=n in suspends,
        )
        cursor = measure.last
        if n in CHECKPOINTS:
            resumed[n] = measure
        elif n - 2 in CHECKPOINTS:
            hot[n] = measure

    print(f"\n{backend} resumed: " + "; ".join(f"{n}: {m}" for n, m in resumed.items()))
    print(f"{backend} hot: " + "; ".join(f"{n}: {m}" for n, m in hot.items()))
    _no_growth(resumed)
    _no_growth(hot)
    detail = await views.show_conversation(db, conversation_id, last_messages=1)
    assert (detail["status"], detail["current_node"]) == ("suspended", "listen")
    assert detail["messages_total"] == 1 + MESSAGES + 1 + MESSAGES  # in and out
    texts = fake.texts_to(USER)
    assert len(texts) == MESSAGES + 1
    assert texts[0] == "You said nothing. Say something."
    assert texts[-1] == f"You said message {MESSAGES:05d}. Say something."
