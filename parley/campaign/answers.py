"""Whether an inbound message answers an ask node, and the value to store if so."""

from __future__ import annotations

from dataclasses import dataclass

from email_validator import EmailNotValidError, validate_email

from parley.campaign.model import AskNode


@dataclass(frozen=True, slots=True)
class AnswerCheck:
    valid: bool
    value: str | None


_INVALID = AnswerCheck(valid=False, value=None)


def check_answer(node: AskNode, text: str | None, reply_id: str | None) -> AnswerCheck:
    """``reply_id`` is the id of a tapped reply button; only choice questions look at it."""
    answer = (text or "").strip()
    if node.validation == "choices":
        return _check_choice(node, answer, reply_id)
    if not answer:
        return _INVALID
    if node.validation == "email":
        return _check_email(answer)
    return AnswerCheck(valid=True, value=answer)


def _check_email(answer: str) -> AnswerCheck:
    # Deliverability needs DNS: too slow and flaky to judge a chat answer by.
    try:
        email = validate_email(answer, check_deliverability=False)
    except EmailNotValidError:
        return _INVALID
    return AnswerCheck(valid=True, value=email.normalized)


def _check_choice(node: AskNode, answer: str, reply_id: str | None) -> AnswerCheck:
    # The title is stored, not the id: it is what the person saw and what conditions compare.
    for choice in node.choices:
        if reply_id is not None and reply_id == choice.id:
            return AnswerCheck(valid=True, value=choice.title)
    folded = answer.casefold()
    for choice in node.choices:
        if folded and folded == choice.title.strip().casefold():
            return AnswerCheck(valid=True, value=choice.title)
    return _INVALID
