"""The one writer of the conversation row: every change to a conversation's status, lease,
wait, variables, end, wake request and repair bookkeeping is one of the verbs below.

Each verb is a business move made on a row the caller has locked (or read for an optimistic
update: ``lifecycle``'s commands); a status change goes through ``TRANSITIONS``
(``check_transition``), so "resume a completed conversation" is refused here, whoever asks.
Nothing here opens a transaction, talks to Prefect or reads other tables: callers decide *when*
(and under which lock), this module decides *what the row says*. A unit test
(``tests/conversation/test_one_writer.py``) fails when code elsewhere assigns a column.

The columns by concern (``parley.db.models.Conversation``):

* status — ``status``, ``paused_by``;
* the step — ``step``, ``current_node``, ``node_entered_at``, ``node_done``, ``follow_up``,
  ``attempts``, ``variables``, ``task_result``, ``action_step``;
* the wait — ``waiting_for``, ``waiting_since``, ``wake_at``, ``sleeps``;
* the run's ownership — ``flow_run_id``, ``lease_until``, ``handed_over_at``;
* the end — ``ended_at``, ``last_error``;
* what a run is owed — ``wake_requested_at``;
* repairs — ``recoveries``, ``repair_after``, ``repair_failures``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Literal

from parley.conversation.state_machine import Transition, check_transition
from parley.db.models import Conversation, utcnow
from parley.vocabulary import ACTION_TAKEN_OVER, TERMINAL, Status

PausedBy = Literal["operator", "campaign"]
ERROR_MAX_LENGTH = 2000


def _become(row: Conversation, status: Status) -> None:
    """Every status change goes through the state machine's table."""
    check_transition(Status(row.status), status, row.id)
    row.status = status


def touch(row: Conversation) -> None:
    """The row changed now (the repair watch reads ``updated_at``)."""
    row.updated_at = utcnow()


# --- a run's ownership: take-over, lease, sleep -----------------------------------------------


def renew_lease(row: Conversation, lease_seconds: float) -> None:
    """A live run says it is alive for another lease."""
    row.lease_until = utcnow() + timedelta(seconds=lease_seconds)


def take_over(
    row: Conversation, flow_run_id: str | None, lease_seconds: float, now: datetime
) -> bool:
    """A run (new, resumed or rescheduled after a crash) takes the conversation over: it is
    running (a paused one stays paused), under its lease, owes nothing and is repaired by
    nobody. True when this is its first run: the start node is entered ``now``."""
    if row.status is not Status.PAUSED:
        _become(row, Status.RUNNING)
    if flow_run_id:
        row.flow_run_id = flow_run_id
    first = row.node_entered_at is None
    if first:
        row.node_entered_at = now
    renew_lease(row, lease_seconds)
    row.handed_over_at = None  # taken over: the dispatcher's handover watch ends here
    row.wake_requested_at = None
    row.repair_after, row.repair_failures = None, 0
    touch(row)
    return first


def mark_hot(row: Conversation, lease_seconds: float) -> None:
    """Its run waits in-process for the next message (a live chat)."""
    _become(row, Status.HOT)
    renew_lease(row, lease_seconds)


def keep_going(row: Conversation) -> None:
    """About to suspend, its run found something to do (a message, a due timer, the outcome
    of the action it waits for): it goes on running."""
    _become(row, Status.RUNNING)


def suspend(row: Conversation) -> int:
    """Its run is about to suspend: no process, no lease. A paused conversation stays paused.
    Returns the count of sleeps, which names the suspend."""
    if row.status is not Status.PAUSED:
        _become(row, Status.SUSPENDED)
    row.sleeps += 1
    row.lease_until = None
    touch(row)
    return row.sleeps


def run_created(row: Conversation, flow_run_id: str) -> None:
    """A flow run was created for it (a start, or a new home for one whose run is gone): the
    run must take the conversation over within a lease."""
    row.flow_run_id = flow_run_id
    handed_over(row)
    touch(row)


def handed_over(row: Conversation) -> None:
    """A start, resume or reschedule was issued: the run must take the conversation over
    within a lease, and nobody issues another meanwhile."""
    row.handed_over_at = utcnow()


def claimed_for_repair(row: Conversation, now: datetime) -> None:
    """A dispatcher claimed the row for a repair: no other takes it for a lease."""
    row.handed_over_at = now


# --- the step ----------------------------------------------------------------------------------


def step_taken(
    row: Conversation, step: int, t: Transition, lease_seconds: float, now: datetime
) -> None:
    """Step ``step``'s transition written into the (locked) row: step+1 from here. An
    operator's pause that came in while the step ran stands: the run stops at the next node."""
    if t.wait and (row.waiting_for != t.wait.kind or row.current_node != t.current_node):
        row.waiting_since = now
    if t.entered:
        row.node_entered_at = now
    row.current_node = t.current_node
    row.variables = t.variables
    row.attempts = t.attempts
    row.waiting_for = t.wait.kind if t.wait else None
    row.wake_at = t.wait.until if t.wait else None
    row.node_done = t.node_done
    row.follow_up = t.follow_up
    row.task_result = dict(t.task_result) if t.task_result is not None else None
    if not (row.status is Status.PAUSED and t.status is Status.RUNNING):
        _become(row, t.status)
    row.step = step + 1
    row.recoveries = 0  # it made a step: earlier failures of its runs were not consecutive
    if t.error is not None:
        row.last_error = t.error[:ERROR_MAX_LENGTH]
    if t.status in TERMINAL:
        row.ended_at = utcnow()
        row.lease_until = None
    else:
        renew_lease(row, lease_seconds)
    touch(row)


def step_held(row: Conversation) -> None:
    """A paused conversation's run asked for a step: the step is one of its own (its cached
    result must not say "paused" to the run resumed later that asks for step n again)."""
    row.step += 1
    touch(row)


def expect_action(row: Conversation, step: int) -> None:
    """Step ``step`` queued an outreach action: while the conversation waits for an action,
    only that one's outcome is for it — not one queued by an earlier visit of the node."""
    row.action_step = step


def action_settled(
    row: Conversation, outcome: str, reason: str | None, *, replied: bool = False
) -> None:
    """The outreach action the conversation waits for has its outcome: the send node's
    ``task_result``, and its run is owed a look (the dispatcher resumes it at once; the
    repair's ``owed_a_look`` does if that resume is lost)."""
    row.task_result = {"outcome": outcome, "reason": reason, "replied": replied}
    request_wake(row)
    touch(row)


def placed(row: Conversation, outcome: Mapping[str, Any]) -> None:
    """An ``add_to_campaign`` node started (or skipped) the lead elsewhere: its outcome is the
    node's ``task_result``, which its edges read in the next step."""
    row.task_result = dict(outcome)
    touch(row)


def action_taken_over(row: Conversation, reason: str) -> None:
    """A person's hand-sent message stands in for the action the conversation waits for; the
    conversation is paused next, so no wake is owed."""
    row.task_result = {"outcome": ACTION_TAKEN_OVER, "reason": reason, "replied": False}
    touch(row)


# --- from outside: operators, campaigns, migrations, signals ------------------------------------


def give_inputs(row: Conversation, variables: Mapping[str, Any]) -> None:
    """A conversation started by the business gets its campaign's inputs."""
    row.variables = dict(variables)


def merge_variables(row: Conversation, data: Mapping[str, Any]) -> None:
    row.variables = {**row.variables, **data}


def complete_task(row: Conversation, var: str, result: dict[str, Any]) -> None:
    """A person completed the task the conversation waits at: its result, also as ``var``."""
    row.task_result = result
    row.variables = {**row.variables, var: result}


def pause(row: Conversation, by: PausedBy) -> None:
    """Hold it at its next node (the pause gate). ``by`` says whose hold it is: a campaign's
    resume releases only the campaign's; an operator's outlives it."""
    _become(row, Status.PAUSED)
    row.paused_by = by
    touch(row)


def release(row: Conversation) -> Status:
    """Back to what it was before the pause: held before its first run started, it is pending
    (its run is to be started); sleeping, suspended (its run is to be resumed); live, running
    (its run has not reached its next node yet: it goes on). Returns the new status."""
    row.paused_by = None
    if row.flow_run_id is None:
        _become(row, Status.PENDING)
    elif row.lease_until is None:
        _become(row, Status.SUSPENDED)
    else:
        _become(row, Status.RUNNING)
    return Status(row.status)


def end(row: Conversation, status: Status, reason: str) -> None:
    """Ended from outside its run (completed, cancelled or failed): no run holds it any more."""
    _become(row, status)
    row.paused_by = None
    row.last_error = reason[:ERROR_MAX_LENGTH]
    row.ended_at = utcnow()
    row.lease_until = None
    row.handed_over_at = None
    touch(row)


def retry(row: Conversation, now: datetime) -> None:
    """A failed conversation goes on from the node that failed, in a new flow run (its own
    node visit from ``now``)."""
    _become(row, Status.PENDING)
    row.ended_at, row.flow_run_id, row.recoveries = None, None, 0
    row.node_done, row.node_entered_at, row.waiting_for, row.wake_at = False, now, None, None


def migrate(
    row: Conversation, campaign_version_id: int, node: str, now: datetime, *, fresh: bool
) -> None:
    """Moved to another version of its campaign, at ``node``. ``fresh``: a node of another
    type, whose work starts over (a suspended run must look again to do it)."""
    row.campaign_version_id = campaign_version_id
    row.current_node = node
    if fresh:
        row.node_entered_at, row.node_done, row.follow_up = now, False, False
        row.attempts, row.task_result = 0, None
        row.waiting_for, row.waiting_since, row.wake_at = None, None, None
        if row.status is Status.SUSPENDED:
            request_wake(row, at=now)
    touch(row)


# --- what a run is owed -------------------------------------------------------------------------


def request_wake(row: Conversation, at: datetime | None = None) -> None:
    """Its run is owed a start, a look or its ending: whoever committed this resumes it at
    once; the dispatcher's repairs do if that did not get through."""
    row.wake_requested_at = at or utcnow()


def clear_wake(row: Conversation) -> None:
    """What the run was owed was given (it ended, or it took the conversation over)."""
    row.wake_requested_at = None


# --- repairs -------------------------------------------------------------------------------------


def count_recovery(row: Conversation) -> int:
    """One more failure of its runs in a row (no step between); returns the count."""
    row.recoveries += 1
    return row.recoveries


def repair_succeeded(row: Conversation) -> None:
    row.repair_after, row.repair_failures = None, 0


def repair_failed(row: Conversation, cap_seconds: float) -> None:
    """A repair of the row changed nothing or failed: the next waits twice as long, capped."""
    row.repair_failures += 1
    delay = min(cap_seconds, 2.0**row.repair_failures)
    row.repair_after = utcnow() + timedelta(seconds=delay)
