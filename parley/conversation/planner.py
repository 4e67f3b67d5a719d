"""What one step of a conversation does, decided without any I/O: the graph walk.

A step looks at the node the conversation is at and does exactly one of these:

* **its work**, once its ``delay`` has passed: send the text, send an ask's prompt, call the
  http endpoint, assign ``set`` values, or end; then it leaves by the first matching edge or
  waits at the node;
* **consume a message**: an ask's answer, a wait_for_reply's reply, or a message that
  interrupts a wait (the node's ``when: replied`` edge, else the campaign's ``on_reply``);
* **leave a waiting node** once the clock, a reply or a task result makes an edge match;
* **wait**: for a reply, a point in time, or a person (``Wait``), until the earliest instant
  at which the clock alone changes the answer.

A follow-up (a node a timer brought the conversation to) whose contact wrote meanwhile does not
do its work: the message is what matters now (the lead who replies at the worst moment:
docs/campaigns.md, "A reply interrupts a timer").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from parley.campaign import (
    AddToCampaignNode,
    AskNode,
    BundleNode,
    Campaign,
    Edge,
    EdgeContext,
    EndNode,
    HttpNode,
    Outcome,
    SendNode,
    SetNode,
    TaskNode,
    WaitForReplyNode,
    WaitNode,
    check_answer,
    render,
    render_url,
)
from parley.campaign.model import Node, queues_actions
from parley.campaign.nodes import BundleAction
from parley.channels.base import OutboundMessage
from parley.conversation.state_machine import (
    ActionIntent,
    HttpCall,
    Placement,
    Reply,
    Snapshot,
    Transition,
    Wait,
)
from parley.vocabulary import (
    ACTION_FAILED,
    ACTION_SENT,
    ACTION_SKIPPED,
    ACTION_TAKEN_OVER,
    Status,
    WaitKind,
)

_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def campaign_env(campaign: Campaign, environ: Mapping[str, str]) -> dict[str, str]:
    """The values of the campaign's declared ``env:`` names: the process environment where it
    sets them, else the campaign's defaults. Undeclared names are never read."""
    return {name: environ.get(name, default) for name, default in campaign.env.items()}


@dataclass(frozen=True)
class _Step:
    campaign: Campaign
    snapshot: Snapshot
    env: Mapping[str, str]

    @property
    def node(self) -> Node:
        return self.campaign.node(self.snapshot.current_node)

    @property
    def now(self) -> datetime:
        return self.snapshot.now or self.entered_at

    @property
    def entered_at(self) -> datetime:
        return self.snapshot.entered_at or self.snapshot.now or _EPOCH

    def context(
        self,
        variables: Mapping[str, Any],
        *,
        replied: bool = False,
        outcome: Outcome = "ok",
    ) -> EdgeContext:
        return EdgeContext(
            entered_at=self.entered_at,
            now=self.now,
            variables=variables,
            contact=self.snapshot.contact,
            replied=replied,
            outcome=outcome,
            task_result=self.snapshot.task_result,
            lead=self.snapshot.lead,
        )


def plan_step(
    campaign: Campaign,
    snapshot: Snapshot,
    reply: Reply | None,
    environ: Mapping[str, str] | None = None,
) -> Transition:
    """``reply`` is the conversation's oldest unread message, if any: the step decides whether
    it is for this node (an answer, an interruption) or stays unread for a later one."""
    step = _Step(campaign, snapshot, campaign_env(campaign, environ or {}))
    if snapshot.node_done:
        return _waiting(step, reply)
    if reply is not None and snapshot.follow_up and _talks(step.node):
        return _interrupted(step, reply, campaign.on_reply) or _skip_follow_up(step)
    if step.now < step.node.ready_at(step.entered_at):
        if reply is not None:
            return _interrupted(step, reply) or _noted(step, reply, done=False)
        return _stay(step, dict(snapshot.variables), done=False)
    if isinstance(step.node, WaitForReplyNode):
        return _waiting(step, reply)  # nothing to do first: a message already there is the reply
    return _do_work(step)


def plan_failure(
    campaign: Campaign,
    snapshot: Snapshot,
    reason: str,
    environ: Mapping[str, str] | None = None,
) -> Transition:
    """A node failed for good: follow its ``when: error`` edge, or end ``failed`` after telling
    the contact the campaign's ``error_text`` (never leave them waiting in silence)."""
    step = _Step(campaign, snapshot, campaign_env(campaign, environ or {}))
    variables = dict(snapshot.variables)
    edge = campaign.next_edge(snapshot.current_node, step.context(variables, outcome="error"))
    if edge is not None:
        return replace(_move(step, edge, variables), error=reason)
    apology = (
        OutboundMessage(render(campaign.error_text, variables, step.env))
        if campaign.error_text
        else None
    )
    return Transition(
        snapshot.current_node, variables, 0, None, Status.FAILED, outbound=apology, error=reason
    )


def after_http(
    campaign: Campaign,
    snapshot: Snapshot,
    result: Any,
    environ: Mapping[str, str] | None = None,
) -> Transition:
    """The transition of an http node once its call returned ``result``."""
    node = campaign.node(snapshot.current_node)
    assert isinstance(node, HttpNode)
    variables = dict(snapshot.variables)
    if node.result_var:
        variables[node.result_var] = result
    step = _Step(campaign, snapshot, campaign_env(campaign, environ or {}))
    return _leave_or_wait(step, variables)


# --- the node's own work ----------------------------------------------------------------------


def _talks(node: Node) -> bool:
    """Nodes whose work is a message to the contact."""
    if isinstance(node, SendNode | AskNode | BundleNode):
        return True
    return isinstance(node, EndNode) and bool(node.text)


def _do_work(step: _Step) -> Transition:
    node, variables = step.node, dict(step.snapshot.variables)
    if isinstance(node, SendNode) and node.action is not None:
        waiting = _stay(step, variables, done=True)
        intent = _intent(step, node.action, node, variables)
        return replace(waiting, wait=Wait(WaitKind.ACTION), action=intent)
    if isinstance(node, BundleNode):
        return _bundle_member(step, node, 0, variables)
    if isinstance(node, SendNode):
        message = OutboundMessage(render(node.text, variables, step.env))
        return replace(_leave_or_wait(step, variables), outbound=message)
    if isinstance(node, AskNode):
        prompt = OutboundMessage(render(node.prompt, variables, step.env), _buttons(node))
        return replace(_stay(step, variables, done=True), outbound=prompt)
    if isinstance(node, HttpNode):
        call = HttpCall(
            url=render_url(node.url, variables, step.env),
            body={name: variables.get(name) for name in node.send},
            headers={k: render(v, variables, step.env) for k, v in node.headers.items()},
            result_var=node.result_var,
            timeout_seconds=node.timeout_seconds,
        )
        return replace(_stay(step, variables, done=False), wait=None, http=call)
    if isinstance(node, AddToCampaignNode):
        placement = Placement(node.campaign, node.identity)
        return replace(_stay(step, variables, done=True), wait=None, placement=placement)
    if isinstance(node, SetNode):
        variables.update(node.evaluate(variables, step.env))  # ExpressionError: the error edge
        return _leave_or_wait(step, variables)
    if isinstance(node, EndNode):
        final = OutboundMessage(render(node.text, variables, step.env)) if node.text else None
        return Transition(node.id, variables, 0, None, Status.COMPLETED, outbound=final)
    return _leave_or_wait(step, variables)  # wait, wait_for_reply, branch, task: no work


def _intent(
    step: _Step, action: str, fields: SendNode | BundleAction, variables: dict[str, Any]
) -> ActionIntent:
    def rendered(template: str | None) -> str | None:
        return None if template is None else render(template, variables, step.env)

    return ActionIntent(
        action,
        render(fields.text, variables, step.env),
        rendered(fields.subject),
        fields.template,
        file=rendered(fields.file),
        post=rendered(fields.post),
    )


def _bundle_member(
    step: _Step, node: BundleNode, index: int, variables: dict[str, Any]
) -> Transition:
    """Queue the bundle's ``index``-th action and wait for it; ``attempts`` remembers which
    one (a new step, so the action has a key of its own)."""
    member = node.actions[index]
    return Transition(
        node.id,
        variables,
        index,
        Wait(WaitKind.ACTION),
        Status.RUNNING,
        action=_intent(step, member.action, member, variables),
        node_done=True,
        follow_up=step.snapshot.follow_up,
    )


def _buttons(node: AskNode) -> tuple[tuple[str, str], ...]:
    if node.validation != "choices":
        return ()
    return tuple((choice.id, choice.title) for choice in node.choices)


# --- waiting and leaving ----------------------------------------------------------------------


def _waiting(step: _Step, reply: Reply | None) -> Transition:
    node = step.node
    if queues_actions(node):
        return _awaiting_action(step, reply)
    if reply is not None:
        if isinstance(node, AskNode):
            return _answer(step, node, reply)
        if isinstance(node, WaitForReplyNode):
            variables = dict(step.snapshot.variables)
            if node.var:
                variables[node.var] = reply.text or ""
            left = _leave_or_wait(step, variables, replied=True)
            return replace(left, consumed_message_id=reply.message_id)
        return _interrupted(step, reply) or _noted(step, reply, done=True)
    return _leave_or_wait(step, dict(step.snapshot.variables))


def _leave_or_wait(step: _Step, variables: dict[str, Any], *, replied: bool = False) -> Transition:
    """With the node's work done: leave by the first matching edge, close an inactive
    conversation, or wait at the node until whatever can move it on."""
    campaign, node_id = step.campaign, step.snapshot.current_node
    ctx = step.context(variables, replied=replied)
    edge = campaign.next_edge(node_id, ctx)
    if edge is not None:
        return _move(step, edge, variables, replied=replied)
    inactive_at = campaign.inactive_at(node_id, ctx, step.snapshot.last_heard_at)
    if inactive_at is not None and step.now >= inactive_at and campaign.inactivity_timeout:
        closing = OutboundMessage(render(campaign.inactivity_timeout.text, variables, step.env))
        return Transition(node_id, variables, 0, None, Status.COMPLETED, outbound=closing)
    if not campaign.departure_triggers(node_id):
        return Transition(node_id, variables, 0, None, Status.COMPLETED)  # no edge: the end
    return _stay(step, variables, done=True, inactive_at=inactive_at)


def _stay(
    step: _Step,
    variables: dict[str, Any],
    *,
    done: bool,
    inactive_at: datetime | None = None,
) -> Transition:
    """Wait at the node: for what can move it on, until the clock next changes the answer."""
    campaign, node_id, s = step.campaign, step.snapshot.current_node, step.snapshot
    ctx = step.context(variables)
    deadlines = [campaign.next_deadline(node_id, ctx), inactive_at]
    if not done:
        deadlines.append(step.node.ready_at(step.entered_at))
    until = min((at for at in deadlines if at is not None and at > step.now), default=None)
    wait = Wait(_wait_kind(campaign, step.node, done), until)
    return Transition(
        node_id,
        variables,
        s.attempts,
        wait,
        Status.RUNNING,
        node_done=done,
        follow_up=s.follow_up,
        task_result=s.task_result,
    )


def _wait_kind(campaign: Campaign, node: Node, done: bool) -> WaitKind:
    if not done:
        return WaitKind.TIMER  # its delay
    if isinstance(node, TaskNode):
        return WaitKind.OPERATOR
    if isinstance(node, AskNode | WaitForReplyNode):
        return WaitKind.REPLY
    if campaign.departure_triggers(node.id) == {"reply"}:
        return WaitKind.REPLY
    return WaitKind.TIMER


def _move(
    step: _Step, edge: Edge, variables: dict[str, Any], *, replied: bool = False
) -> Transition:
    """To the edge's target: a new visit, entered now. A timer that moved the conversation
    makes the next nodes follow-ups, until the contact or a person is heard from."""
    left = step.node
    if replied or step.snapshot.task_result is not None:
        follow_up = False
    elif edge.waits_for_time or isinstance(left, WaitNode) or left.delay is not None:
        follow_up = True
    else:
        follow_up = step.snapshot.follow_up
    return Transition(
        edge.target, variables, 0, None, Status.RUNNING, entered=True, follow_up=follow_up
    )


def _to(step: _Step, target: str, variables: dict[str, Any]) -> Transition:
    return Transition(target, variables, 0, None, Status.RUNNING, entered=True)


def _awaiting_action(step: _Step, reply: Reply | None) -> Transition:
    """A queued outreach action: its outcome moves the conversation on (``failed``: the error
    path; ``taken_over``: a person's manual send stood in for it, see ``_taken_over``). A reply
    meanwhile interrupts at once (the dispatcher's freshness check then skips the action), or
    is read while the conversation keeps waiting for the outcome."""
    result = step.snapshot.task_result
    variables = dict(step.snapshot.variables)
    if result is None:
        if reply is not None:
            return _interrupted(step, reply, step.campaign.on_reply) or _noted_action(step, reply)
        return replace(_stay(step, variables, done=True), wait=Wait(WaitKind.ACTION))
    if result.get("outcome") == ACTION_FAILED:
        failed = plan_failure(step.campaign, step.snapshot, str(result.get("reason")))
        return replace(failed, error=f"{step.snapshot.current_node}: {result.get('reason')}")
    if result.get("outcome") == ACTION_TAKEN_OVER:
        return _taken_over(step, variables)
    following = _next_in_bundle(step, result)
    if following is not None:
        return following
    if result.get("outcome") == ACTION_SKIPPED and result.get("replied"):
        jump = step.campaign.on_reply
        for edge in step.campaign.edges_from(step.snapshot.current_node):
            if edge.waits_for_reply:
                return _move(step, edge, variables, replied=True)
        if jump is not None and jump != step.snapshot.current_node:
            return _to(step, jump, variables)
    return _leave_or_wait(step, variables)


def _next_in_bundle(step: _Step, result: Mapping[str, Any]) -> Transition | None:
    """A bundle's action was sent: queue the next one, if there is one."""
    node = step.node
    if result.get("outcome") != ACTION_SENT or not isinstance(node, BundleNode):
        return None
    following = step.snapshot.attempts + 1
    if following >= len(node.actions):
        return None
    return _bundle_member(step, node, following, dict(step.snapshot.variables))


def _taken_over(step: _Step, variables: dict[str, Any]) -> Transition:
    """The node counts as done by the person's hand-sent message: its ``when: taken_over``
    edge if it has one, else the way it would have gone had its action been sent."""
    ctx = step.context(variables, outcome="taken_over")
    edge = step.campaign.next_edge(step.snapshot.current_node, ctx)
    if edge is not None:
        return _move(step, edge, variables)
    return _leave_or_wait(step, variables)


def _noted_action(step: _Step, reply: Reply) -> Transition:
    waiting = _stay(step, dict(step.snapshot.variables), done=True)
    return replace(waiting, wait=Wait(WaitKind.ACTION), consumed_message_id=reply.message_id)


# --- messages ---------------------------------------------------------------------------------


def _answer(step: _Step, node: AskNode, reply: Reply) -> Transition:
    check = check_answer(node, reply.text, reply.reply_id)
    variables = dict(step.snapshot.variables)
    if check.valid:
        variables[node.var] = check.value
        return replace(_leave_after_answer(step, variables), consumed_message_id=reply.message_id)
    attempts = step.snapshot.attempts + 1
    if attempts >= node.max_attempts:
        ctx = step.context(variables, outcome="invalid")
        edge = step.campaign.next_edge(node.id, ctx)
        moved = (
            _move(step, edge, variables, replied=True)
            if edge is not None
            else Transition(node.id, variables, 0, None, Status.COMPLETED)
        )
        return replace(moved, consumed_message_id=reply.message_id)
    retry = OutboundMessage(render(node.retry, variables, step.env), _buttons(node))
    waiting = _stay(step, variables, done=True)
    return replace(  # the contact was heard: what follows is no follow-up any more
        waiting,
        attempts=attempts,
        consumed_message_id=reply.message_id,
        outbound=retry,
        follow_up=False,
    )


def _leave_after_answer(step: _Step, variables: dict[str, Any]) -> Transition:
    """An answered ask is no longer waiting: its ordinary edges apply (judged without the
    ``waiting`` rule that keeps them closed while the question is open)."""
    ctx = step.context(variables, replied=True)
    for edge in step.campaign.edges_from(step.snapshot.current_node):
        if not edge.on_outcome and edge.matches(ctx, step.node):
            return _move(step, edge, variables, replied=True)
    return Transition(step.snapshot.current_node, variables, 0, None, Status.COMPLETED)


def _interrupted(step: _Step, reply: Reply, jump: str | None = None) -> Transition | None:
    """BREAK_FLOW: a message while the node waits on the clock (or before a follow-up went out)
    takes the node's ``when: replied`` edge, else jumps to the campaign's ``on_reply`` — for a
    waiting node only where ``Campaign.on_reply_from`` says so (not at a person's task)."""
    variables = dict(step.snapshot.variables)
    ctx = step.context(variables, replied=True)
    for edge in step.campaign.edges_from(step.snapshot.current_node):
        if edge.waits_for_reply and edge.matches(ctx, step.node):
            moved = _move(step, edge, variables, replied=True)
            return replace(moved, consumed_message_id=reply.message_id)
    target = jump or step.campaign.on_reply_from(step.snapshot.current_node)
    if target is None or target == step.snapshot.current_node:
        return None
    return replace(_to(step, target, variables), consumed_message_id=reply.message_id)


def _noted(step: _Step, reply: Reply, *, done: bool) -> Transition:
    """A message nothing at this node listens to (a person is on the task, no ``on_reply``):
    it is in the transcript, read, and the conversation goes on as it would have without it —
    leaving if its wait is over or its task done, else waiting as it was."""
    variables = dict(step.snapshot.variables)
    moved = _leave_or_wait(step, variables) if done else _stay(step, variables, done=False)
    return replace(moved, consumed_message_id=reply.message_id)


def _skip_follow_up(step: _Step) -> Transition:
    """The contact wrote before this follow-up went out and nothing routes the message: do not
    send it; move on as if it had been sent, so the next node that listens reads the message."""
    variables = dict(step.snapshot.variables)
    if isinstance(step.node, EndNode):
        return Transition(step.node.id, variables, 0, None, Status.COMPLETED)
    if isinstance(step.node, AskNode):
        return replace(_stay(step, variables, done=True), follow_up=False)
    return replace(_leave_or_wait(step, variables), follow_up=False)
