import pytest

from parley.campaign import AnswerCheck, AskNode, Choice, check_answer

TEXT = AskNode(id="name", prompt="Name?", var="name")
EMAIL = AskNode(id="email", prompt="Email?", var="email", validation="email")
PLAN = AskNode(
    id="plan",
    prompt="Plan?",
    var="plan",
    validation="choices",
    choices=[Choice(id="basic", title="Basic"), Choice(id="pro", title="Pro")],
)

INVALID = AnswerCheck(valid=False, value=None)


def test_text_answer_is_stripped() -> None:
    assert check_answer(TEXT, "  Ada Lovelace \n", None) == AnswerCheck(True, "Ada Lovelace")


@pytest.mark.parametrize("text", [None, "", "   \n\t"])
def test_empty_text_answer_is_invalid(text: str | None) -> None:
    assert check_answer(TEXT, text, None) == INVALID


def test_valid_email_is_normalized() -> None:
    assert check_answer(EMAIL, "  Ada@Example.COM ", None) == AnswerCheck(True, "Ada@example.com")


@pytest.mark.parametrize("text", [None, "", "ada", "ada@", "@example.com", "ada at example.com"])
def test_invalid_email(text: str | None) -> None:
    assert check_answer(EMAIL, text, None) == INVALID


def test_email_is_not_checked_for_deliverability() -> None:
    assert check_answer(EMAIL, "someone@no-such-domain.example", None).valid


def test_choice_by_reply_id_stores_the_title() -> None:
    assert check_answer(PLAN, "whatever the button said", "pro") == AnswerCheck(True, "Pro")


@pytest.mark.parametrize("text", ["pro", "PRO", "  Pro  "])
def test_choice_typed_in_any_case_stores_the_title(text: str) -> None:
    assert check_answer(PLAN, text, None) == AnswerCheck(True, "Pro")


@pytest.mark.parametrize(
    ("text", "reply_id"),
    [("Enterprise", None), (None, "enterprise"), ("", None), (None, None), ("pro plan", None)],
)
def test_unknown_choice_is_invalid(text: str | None, reply_id: str | None) -> None:
    assert check_answer(PLAN, text, reply_id) == INVALID


def test_unknown_reply_id_falls_back_to_the_typed_title() -> None:
    assert check_answer(PLAN, "Basic", "stale-button") == AnswerCheck(True, "Basic")


def test_reply_id_is_ignored_by_text_questions() -> None:
    assert check_answer(TEXT, None, "pro") == INVALID
