"""Property: a graph that validates never crashes the runner.

Random valid campaigns (``tests.campaign.strategies``) are walked by the pure planner the way
the executor walks them: each step's ``Snapshot`` is built from the previous ``Transition``
exactly as ``row.step_taken`` writes the row, under a driven clock, with the contact writing at
random moments, people completing tasks, http calls answering (or failing for good) and the
occasional follow-up superseded by a message that arrived while it was being sent.

What must hold at every step: nothing raises but ``ExpressionError`` (the runner's error path,
``plan_failure``, takes over then), the conversation is always at a node of the graph, it never
waits once it has ended, a wait ends in the future, only the message handed to the step is ever
consumed (and an ask or wait_for_reply always reads the answer it waits for), an outreach node
(a send with an action, a bundle) waits for each action's outcome the dispatcher hands it —
sent, failed, skipped because the contact wrote — and never queues one beside another, a
follow-up is never
sent once the contact wrote, the runner never spins (within 3 x nodes + 5 steps that neither read
a message nor let it sleep, it sleeps or ends; a wait with a message unread counts as running,
since the flow refuses to suspend then), and what goes to sleep can be woken (a time, a message
that moves it on, or an open task).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parley.campaign import (
    AskNode,
    Campaign,
    ExpressionError,
    TaskNode,
    WaitForReplyNode,
    parse_campaign,
)
from parley.campaign.conditions import LeadFacts
from parley.campaign.model import queues_actions
from parley.campaign.nodes import PLACEMENT_OUTCOMES
from parley.campaign.schema import build_campaign
from parley.conversation.planner import after_http, plan_failure, plan_step
from parley.conversation.state_machine import Reply, Snapshot, Transition, Wait
from parley.vocabulary import TERMINAL, Status, WaitKind
from tests.campaign.strategies import campaign_documents

START = datetime(2025, 3, 29, 22, 30, tzinfo=UTC)  # an hour before Madrid's clocks jump
MAX_STEPS = 120
ENVIRONS = st.sampled_from([{}, {"CRM_URL": "https://crm.internal.example"}])
CONTACTS = st.fixed_dictionaries(
    {},
    optional={
        "country": st.sampled_from(["ES", "pro", "42", "", None, 3]),
        "timezone": st.sampled_from(["Asia/Tokyo", "Europe/Madrid", "Nope", ""]),
        "email": st.sampled_from(["ana@example.com", "ana@", "", None, 7]),
        "phone": st.sampled_from(["+34 600 123 456", "600", "", None, 34600123456]),
        "whatsapp_account": st.sampled_from([False, True, None]),
        "linkedin_connected": st.sampled_from([True, False, "true", None]),
    },
)
LEADS = st.builds(
    LeadFacts,
    channel=st.sampled_from([None, "whatsapp", "email", "linkedin"]),
    address=st.sampled_from([None, "34600123456", "ana@example.com", "ana-lovelace"]),
    last_contacted_at=st.none() | st.integers(-200, 2).map(lambda d: START + timedelta(days=d)),
)
OUTCOMES = st.sampled_from(
    [
        {"outcome": "sent", "reason": None, "replied": False},
        {"outcome": "failed", "reason": "PermanentChannelError: refused", "replied": False},
        {"outcome": "skipped", "reason": "the contact wrote", "replied": True},
        {"outcome": "taken_over", "reason": "a person took over", "replied": False},
    ]
)
TEXTS = st.sampled_from(
    ["Hi", "stop", "pro", "Pro", "yes", "No", "later", "42", "ana@example.com", "", "  ", None]
)
ODD_BASE = st.fixed_dictionaries(  # values the start node's expressions may trip over
    {},
    optional={
        "v1": st.sampled_from([0, -2, 2.5, "x", True]),
        "v2": st.sampled_from([0, "x", False, -1.5]),
    },
)
SMALL_STEP = st.integers(0, 5).map(lambda s: timedelta(seconds=s))
GAP = st.sampled_from([1, 59, 600, 3600, 5 * 3600, 86_400, 3 * 86_400, 15 * 86_400]).map(
    lambda s: timedelta(seconds=s)
)


def apply(snapshot: Snapshot, t: Transition, now: datetime) -> Snapshot:
    """The row ``row.step_taken`` writes for ``t``, read back as the next step's snapshot
    (its ``now`` and ``last_heard_at`` are the caller's to set)."""
    return replace(
        snapshot,
        current_node=t.current_node,
        variables=dict(t.variables),
        attempts=t.attempts,
        wait=t.wait,
        node_done=t.node_done,
        entered_at=now if t.entered else snapshot.entered_at,
        follow_up=t.follow_up,
        task_result=dict(t.task_result) if t.task_result is not None else None,
    )


def unchanged(s: Snapshot) -> Transition:
    """What the executor commits when a follow-up is dropped because the contact wrote while
    it was being sent (``executor._unchanged``): the step ends, the next one reads the message."""
    return Transition(
        s.current_node,
        dict(s.variables),
        s.attempts,
        s.wait,
        Status.RUNNING,
        node_done=s.node_done,
        follow_up=s.follow_up,
        task_result=s.task_result,
    )


@dataclass
class Inbox:
    """The conversation's inbound messages, oldest first, as ``first_unconsumed_inbound`` and
    ``last_heard_at`` see them."""

    unread: list[Reply] = field(default_factory=list)
    last_heard_at: datetime | None = None
    next_id: int = 1

    def receive(self, text: str | None, reply_id: str | None, at: datetime) -> None:
        self.unread.append(Reply(self.next_id, text, reply_id))
        self.next_id += 1
        self.last_heard_at = at

    def oldest(self) -> Reply | None:
        return self.unread[0] if self.unread else None

    def consume(self, message_id: int) -> None:
        assert self.unread and self.unread[0].message_id == message_id
        self.unread.pop(0)


def _reply_ids(campaign: Campaign) -> list[str | None]:
    ids: list[str | None] = [None, "nope"]
    for node in campaign.nodes:
        if isinstance(node, AskNode):
            ids += [choice.id for choice in node.choices]
    return ids


def _task_result(data: st.DataObject, node: TaskNode) -> dict[str, Any]:
    """A valid result for the task, the way ``lifecycle`` stores one (validated, as JSON)."""
    values: dict[str, Any] = {"outcome": data.draw(st.sampled_from(node.outcomes))}
    samples = {
        "text": st.sampled_from(["called", ""]),
        "number": st.floats(-1e6, 1e6, allow_nan=False),
        "datetime": st.just(START + timedelta(days=1)),
        "bool": st.booleans(),
    }
    for name, kind in node.fields.items():
        if data.draw(st.booleans()):
            values[name] = data.draw(samples[kind])
    return dict(node.result_model().model_validate(values).model_dump(mode="json"))


@dataclass
class Run:
    campaign: Campaign
    environ: dict[str, str]
    data: st.DataObject
    snapshot: Snapshot
    now: datetime
    inbox: Inbox = field(default_factory=Inbox)
    busy_steps: int = 0  # consecutive steps after which the runner at once steps again

    @property
    def spin_limit(self) -> int:
        return 3 * len(self.campaign.nodes) + 5

    def maybe_receive(self, chance: int) -> None:
        """With probability 1/``chance`` the contact writes now."""
        if self.data.draw(st.integers(0, chance - 1)) == 0:
            text = self.data.draw(TEXTS)
            reply_id = self.data.draw(st.sampled_from(_reply_ids(self.campaign)))
            self.inbox.receive(text, reply_id, self.now)

    def plan(self, snapshot: Snapshot, reply: Reply | None) -> Transition:
        """One step as the runner takes it: an ``ExpressionError`` is the node failing for
        good, so the error path (``plan_failure``) decides instead."""
        try:
            t = plan_step(self.campaign, snapshot, reply, self.environ)
        except ExpressionError as exc:
            return self.failed(snapshot, f"step: {exc!r}")
        self.check(snapshot, reply, t)
        return t

    def failed(self, snapshot: Snapshot, reason: str) -> Transition:
        t = plan_failure(self.campaign, snapshot, reason, self.environ)
        self.check(snapshot, None, t)
        assert t.error == reason
        return t

    def check(self, snapshot: Snapshot, reply: Reply | None, t: Transition) -> None:
        self.campaign.node(t.current_node)  # raises NotFound for a node not in the graph
        if t.consumed_message_id is not None:
            assert reply is not None and t.consumed_message_id == reply.message_id
        node = self.campaign.node(snapshot.current_node)
        if (
            reply is not None
            and snapshot.node_done
            and isinstance(node, AskNode | WaitForReplyNode)
        ):
            assert t.consumed_message_id == reply.message_id, t  # the answer it waited for
        if reply is not None and snapshot.follow_up and not snapshot.node_done:
            assert t.outbound is None, t  # the contact wrote first: the follow-up is not sent
        if t.wait is not None:
            assert t.status not in TERMINAL, t
            assert t.status is Status.RUNNING, t
            assert t.http is None, t
            if t.wait.until is not None:
                assert snapshot.now is not None and t.wait.until > snapshot.now, t
        if t.status in TERMINAL:
            assert t.http is None and not t.entered, t
        if t.action is not None:  # queued with the step: the run waits for its outcome
            assert queues_actions(self.campaign.node(t.current_node)), t
            assert t.wait == Wait(WaitKind.ACTION) and t.task_result is None, t
            awaiting = snapshot.wait is not None and snapshot.wait.kind is WaitKind.ACTION
            assert not (awaiting and snapshot.task_result is None), t  # never two at once
        if t.http is not None:
            assert isinstance(t.http.body, dict) and t.outbound is None, t

    def perform(self, snapshot: Snapshot, t: Transition) -> Transition:
        """The step's one effect, as ``executor.perform`` runs it."""
        if t.outbound is not None:
            self.now += self.data.draw(SMALL_STEP)
            self.maybe_receive(chance=6)  # the contact writes while it is being sent
            if snapshot.follow_up and self.inbox.unread and not _answers_the_reply(t):
                return unchanged(snapshot)  # outbox.deliver drops a superseded follow-up
            if self.data.draw(st.integers(0, 19)) == 0:
                return self.failed(snapshot, "PermanentChannelError: refused")
        if t.placement is not None:  # executor: lead_import.place_from_conversation
            outcome = self.data.draw(st.sampled_from(PLACEMENT_OUTCOMES))
            t = replace(t, task_result={"outcome": outcome, "reason": None})
        if t.http is not None:
            self.now += self.data.draw(SMALL_STEP)
            if self.data.draw(st.integers(0, 9)) == 0:
                return self.failed(snapshot, "PermanentChannelError: http 400")
            result = self.data.draw(st.sampled_from([{}, {"id": 7, "ok": True}, {"x": [1, "y"]}]))
            t = after_http(self.campaign, snapshot, result, self.environ)
            self.check(snapshot, None, t)
        return t

    def step(self) -> Transition:
        snapshot = replace(self.snapshot, now=self.now, last_heard_at=self.inbox.last_heard_at)
        reply = self.inbox.oldest()
        planned = self.plan(snapshot, reply)
        t = self.perform(snapshot, planned)
        if t.consumed_message_id is not None:
            self.inbox.consume(t.consumed_message_id)
        self.now += self.data.draw(SMALL_STEP)  # the commit's instant
        self.snapshot = apply(snapshot, t, self.now)
        if t.status in TERMINAL or t.consumed_message_id is not None or not self.steps_again(t):
            self.busy_steps = 0  # ended, read a message, or goes to sleep: progress
        else:
            self.busy_steps += 1
            assert self.busy_steps <= self.spin_limit, (
                f"{self.busy_steps} steps without waiting or ending; at {t.current_node}"
            )
        return t

    def steps_again(self, t: Transition) -> bool:
        """Whether the flow runs the next step at once: nothing to wait for, or a message is
        already there (``wait_hot`` and ``prepare_suspend`` both refuse to sleep then)."""
        return t.wait is None or bool(self.inbox.unread)

    def check_wakeable(self, t: Transition) -> None:
        """A conversation that goes to sleep (nothing unread) can be woken: by the dispatcher
        at ``wait.until``, by a message that moves it on, or by a person completing its task."""
        assert t.wait is not None
        node = self.campaign.node(t.current_node)
        if t.wait.kind is WaitKind.OPERATOR:
            assert isinstance(node, TaskNode) and t.node_done and t.task_result is None, t
        elif t.wait.kind is WaitKind.ACTION:
            # The dispatcher hands the outcome of the action the node queued.
            assert queues_actions(node) and t.node_done and t.task_result is None, t
        elif t.wait.until is None:
            assert "reply" in self.campaign.departure_triggers(t.current_node), (
                f"asleep at {t.current_node} for ever: nothing can wake it ({t})"
            )

    def wait_for_something(self, t: Transition) -> None:
        """The conversation waits: let what can wake it happen, then the runner looks again."""
        assert t.wait is not None
        node = self.campaign.node(t.current_node)
        open_task = isinstance(node, TaskNode) and t.node_done and t.task_result is None
        awaited = t.wait.kind is WaitKind.ACTION and t.task_result is None
        choices = ["reply", "time"]
        if awaited:
            choices += ["outcome", "outcome"]
        if t.wait.until is not None:
            choices.append("until")
        if open_task:
            choices.append("task")
        event = self.data.draw(st.sampled_from(choices))
        if event == "until":
            assert t.wait.until is not None
            self.now = max(self.now, t.wait.until) + self.data.draw(SMALL_STEP)
        elif event == "outcome":
            self.now += self.data.draw(SMALL_STEP)
            self.snapshot = replace(self.snapshot, task_result=self.data.draw(OUTCOMES))
        elif event == "task":
            assert isinstance(node, TaskNode)
            result = _task_result(self.data, node)
            variables = {**self.snapshot.variables, node.var: result}
            self.snapshot = replace(self.snapshot, task_result=result, variables=variables)
        elif event == "reply":
            self.now += self.data.draw(GAP)
            self.maybe_receive(chance=1)
        else:
            self.now += self.data.draw(GAP)


def _answers_the_reply(t: Transition) -> bool:
    """The step reads the message it sends for (an invalid answer's retry prompt): the executor
    does not guard such a send as a follow-up, it answers the message."""
    return t.consumed_message_id is not None


PROPERTY = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@PROPERTY
@given(
    document=campaign_documents(),
    odd=st.none() | ODD_BASE,
    environ=ENVIRONS,
    contact=CONTACTS,
    lead=LEADS,
    data=st.data(),
)
def test_a_graph_that_validates_never_crashes_the_runner(
    document: dict[str, Any],
    odd: dict[str, Any] | None,
    environ: dict[str, str],
    contact: dict[str, Any],
    lead: LeadFacts,
    data: Any,
) -> None:
    if odd:  # still valid: types are not checked, so an expression may fail when it runs
        document["nodes"][0]["set"].update(odd)
    campaign = build_campaign(document)
    now = START + timedelta(seconds=data.draw(st.integers(0, 7 * 86_400)))
    first = Snapshot(
        campaign.start, {}, 0, None, entered_at=now, now=now, contact=contact, lead=lead
    )
    run = Run(campaign, environ, data, first, now)
    if data.draw(st.booleans()):
        run.inbox.last_heard_at = now  # the message that started it (its trigger, not unread)
    for _ in range(MAX_STEPS):
        run.maybe_receive(chance=8)  # a message may land between any two steps
        t = run.step()
        if t.status in TERMINAL:
            assert t.wait is None
            return
        if not run.steps_again(t):
            run.check_wakeable(t)
            run.wait_for_something(t)


# --- what the property found, pinned down ------------------------------------------------------

T0 = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)
NAP = parse_campaign(
    """
name: nap
start: nap
nodes:
  - {id: nap, type: wait, duration: 30s}
  - {id: bye, type: end, text: Bye}
edges:
  - {from: nap, to: bye}
"""
)
CALL = parse_campaign(
    """
name: call
start: call
nodes:
  - {id: call, type: task, title: Call them, var: call, outcomes: [reached]}
  - {id: bye, type: end, text: Bye}
edges:
  - {from: call, to: bye, when: {task_result: reached}}
"""
)


def test_a_message_read_after_a_wait_ran_out_does_not_put_the_conversation_to_sleep() -> None:
    """The dispatcher resumes the run at 09:00:30; the contact wrote at 09:00:10 (or the
    message and the timer come in together). Nothing at the wait listens to messages, so the
    message is only noted — but the wait is over and the node's edge matches: the conversation
    must go on, not wait for a timer with no time (nothing would ever wake it)."""
    waiting = Snapshot(
        "nap",
        {},
        0,
        Wait(WaitKind.TIMER, T0 + timedelta(seconds=30)),
        node_done=True,
        entered_at=T0,
        now=T0 + timedelta(minutes=1),
    )
    assert plan_step(NAP, waiting, None).current_node == "bye"  # without the message: it goes on
    t = plan_step(NAP, waiting, Reply(1, "hi", None))
    assert t.consumed_message_id in (None, 1)
    assert (t.current_node, t.wait) == ("bye", None), t


def test_a_message_read_after_the_task_was_completed_does_not_put_the_conversation_to_sleep() -> (
    None
):
    """Someone completes the task (``lifecycle.complete_task`` stores the result and resumes
    the run) while the contact writes. The result matches the node's edge, so the conversation
    must move on: waiting for an operator with the task already done waits for ever (a second
    result is refused)."""
    result = {"outcome": "reached"}
    done = Snapshot(
        "call",
        {"call": result},
        0,
        Wait(WaitKind.OPERATOR),
        node_done=True,
        entered_at=T0,
        now=T0 + timedelta(hours=1),
        task_result=result,
    )
    assert plan_step(CALL, done, None).current_node == "bye"  # without the message: it goes on
    t = plan_step(CALL, done, Reply(1, "hello?", None))
    assert t.consumed_message_id in (None, 1)
    assert (t.current_node, t.wait) == ("bye", None), t
