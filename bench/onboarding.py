"""The conversation every bot of the benchmark holds, played by simulated users.

"Hi" → name → email → the plan button: the onboarding campaign Parley runs from YAML and the
peers re-implement (``bench.script``). Played one turn at a time for latency figures, by
everybody at once for throughput, and checked to the end: transcripts, CRM registrations,
and a stall watch that turns a stuck conversation into a failure instead of a long wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from bench.harness import Chat, FigureError, JSONDict, TimedFake, Turn

# A figure fails when the bot has said nothing to anybody for this long while users wait.
STALL_SECONDS = 300.0

OnboardingKinds = tuple[str, str, str, str]
PEER_KINDS: OnboardingKinds = ("start", "turn", "turn", "turn")


def user_name(phone: str) -> str:
    """Unique per run (the CRM check counts profiles by name): the figure prefix and the
    user's number from ``PhoneBook``."""
    return f"User{phone[2:4]}{phone[-6:]}"


def user_email(chat: Chat) -> str:
    return f"{chat.name.lower()}@example.com"


async def play_onboarding(
    chat: Chat,
    *,
    kinds: OnboardingKinds = PEER_KINDS,
    before_email: Any = None,
    plan: tuple[str, str] = ("pro", "Pro"),
    stop_at: float | None = None,
) -> list[Turn]:
    """ "Hi" → name → email → plan button, answering each question as soon as it arrives;
    ``before_email`` (a coroutine function of the chat) lets a figure wait in between.
    After ``stop_at`` (``perf_counter``) the user starts no new turn: a figure's time budget
    ends conversations early, but every message already sent is still answered and checked."""
    from bench.script import onboarding_transcript

    script = onboarding_transcript(chat.name, plan[1])
    turns = [await chat.say("Hi", script[0], kinds[0])]

    def over() -> bool:
        return stop_at is not None and time.perf_counter() >= stop_at

    if over():
        return turns
    turns.append(await chat.say(chat.name, script[1], kinds[1]))
    if before_email is not None:
        await before_email(chat)
    if over():
        return turns
    turns.append(await chat.say(user_email(chat), script[2], kinds[2]))
    if over():
        return turns
    turns.append(await chat.press(plan[0], plan[1], script[3], kinds[3]))
    return turns


def finished(chats: Sequence[Chat]) -> list[Chat]:
    """The conversations played to the end (all four turns) — the ones the CRM must know."""
    return [c for c in chats if len(c.turns) == len(PEER_KINDS)]


def verify_crm(figure: str, requests: Sequence[JSONDict], chats: Sequence[Chat]) -> None:
    """Each finished onboarding registered exactly once, with what its user said."""
    wanted = Counter((c.name, user_email(c), "Pro") for c in chats)
    posted = Counter(
        (r["json"].get("name"), r["json"].get("email"), r["json"].get("plan"))
        for r in requests
        if isinstance(r.get("json"), dict) and r["json"].get("name") in {c.name for c in chats}
    )
    if posted != wanted:
        missing = wanted - posted
        extra = posted - wanted
        raise FigureError(
            f"{figure}: CRM registrations wrong — missing {list(missing)[:5]}, "
            f"duplicated/unexpected {list(extra)[:5]}; refusing to report it"
        )


async def play_at_once(
    chats: list[Chat],
    *,
    budget: float | None = None,
    stall_seconds: float = STALL_SECONDS,
    diagnose: Callable[[], Awaitable[str]] | None = None,
) -> JSONDict:
    """Throughput: all users start at once and answer every question the moment it arrives;
    turns completed per second of wall time, from the first POST to the last reply — or, with
    a ``budget`` (seconds) that ends before everyone finished, to the end of the budget,
    counting only the turns answered by then (users stop starting turns at that point, and
    what they had already sent must still be answered: it is checked like everything else)."""
    started = time.perf_counter()
    stop_at = started + budget if budget else None
    fake = chats[0].fake
    everyone = asyncio.gather(*(play_onboarding(c, stop_at=stop_at) for c in chats))
    await watched(everyone, fake, "throughput", stall_seconds=stall_seconds, diagnose=diagnose)
    ended = max(t.replied for c in chats for t in c.turns)
    window_end = min(ended, stop_at) if stop_at else ended
    answered = sum(1 for c in chats for t in c.turns if t.replied <= window_end)
    return {
        "turns_per_s": round(answered / (window_end - started), 2),
        "turns": answered,
        "of": len(PEER_KINDS) * len(chats),
        "window_s": round(window_end - started, 1),
        "all_finished": len(finished(chats)) == len(chats),
    }


async def watched(
    work: Awaitable[Any],
    fake: TimedFake,
    label: str,
    *,
    stall_seconds: float = STALL_SECONDS,
    diagnose: Callable[[], Awaitable[str]] | None = None,
) -> Any:
    """Wait for ``work``, failing it as soon as the bot has been silent to everybody for
    ``stall_seconds`` while users still wait: a stuck conversation is a lost message, and an
    hour-long per-turn timeout would only hide it."""
    task = asyncio.ensure_future(work)
    seen, changed = fake.total_sent(), time.monotonic()
    while not task.done():
        await asyncio.wait({task}, timeout=5.0)
        if (now := fake.total_sent()) != seen:
            seen, changed = now, time.monotonic()
        elif not task.done() and time.monotonic() - changed > stall_seconds:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            detail = await diagnose() if diagnose is not None else ""
            raise FigureError(
                f"{label}: stalled — the bot sent nothing to anybody for {stall_seconds:.0f} s "
                f"while users were still waiting for answers (lost messages). {detail}"
            )
    return task.result()
