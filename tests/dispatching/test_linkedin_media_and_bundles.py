"""The LinkedIn actions beyond messages — a like, an attachment, a voice message — and the
bundle node, through the dispatcher against the loopback gateway, on SQLite and PostgreSQL.

The gateway downloads files from a real HTTP server on 127.0.0.1 and refuses what LinkedIn
would (a file too large or of the wrong type, a voice message over a minute, a like of a URL
that is no post); each refusal is a ``PermanentChannelError`` that takes the node's ``when:
error`` edge. A bundle's actions are ordinary actions queued one after another: each has its
own key and counts against its own cap.
"""

from __future__ import annotations

import io
import threading
import wave
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from devkit.fakes.linkedin_gateway import FakeLinkedInGateway
from parley.campaign.registry import CampaignCache, install_campaign
from parley.channels.base import OutreachAction
from parley.channels.linkedin.channel import LinkedInChannel, LinkedInConfig
from parley.clock import DrivenClock
from parley.conversation import executor, funnel, lifecycle
from parley.conversation.http_action import post_json
from parley.db import Database, queries
from parley.db.models import Action, Identity, utcnow
from parley.outreach import dispatch, identities
from parley.runtime import Runtime
from parley.vocabulary import Status, WaitKind
from tests.dispatching.test_outreach import _actions, _look_again, _seeded, _until_waiting

TUESDAY_10 = datetime(2026, 12, 8, 10, 0, tzinfo=UTC)
POST = "https://www.linkedin.com/feed/update/urn:li:activity:7140000000000000000/"
MEDIA = """
name: li-media
channel: linkedin
inputs: [first_name, post, deck, voice]
start: like
nodes:
  - {id: like, type: send, action: linkedin_like_post, post: "{post}"}
  - id: deck
    type: send
    action: linkedin_attachment
    file: "{deck}"
    text: "For you, {first_name}"
  - {id: hello, type: send, action: linkedin_voice, file: "{voice}"}
  - {id: done, type: end}
  - {id: refused, type: end}
edges:
  - {from: like, to: refused, when: error}
  - {from: like, to: deck}
  - {from: deck, to: refused, when: error}
  - {from: deck, to: hello}
  - {from: hello, to: refused, when: error}
  - {from: hello, to: done}
"""
BUNDLE = """
name: li-bundle
channel: linkedin
inputs: [first_name]
on_reply: stopped
start: touch
nodes:
  - id: touch
    type: bundle
    actions:
      - {action: linkedin_profile_visit}
      - {action: linkedin_connection, text: "Hi {first_name}, let's connect"}
  - {id: done, type: end}
  - {id: failed, type: end}
  - {id: stopped, type: end}
edges:
  - {from: touch, to: failed, when: error}
  - {from: touch, to: done}
"""
TYPES = (
    "linkedin_profile_visit",
    "linkedin_connection",
    "linkedin_like_post",
    "linkedin_attachment",
    "linkedin_voice",
)
NO_SPACING = {"actions": {kind: {"spacing": "0s"} for kind in TYPES}}


def wav(seconds: float, rate: int = 10) -> bytes:
    """A silent WAV file, at a rate low enough to stay under the fake's 1000-byte limit."""
    out = io.BytesIO()
    with wave.open(out, "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(1)
        audio.setframerate(rate)
        audio.writeframes(b"\x80" * int(seconds * rate))
    return out.getvalue()


class Files:
    """A real HTTP server on 127.0.0.1 serving the files the gateway downloads."""

    def __init__(self) -> None:
        self.content: dict[str, bytes] = {}
        files = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = files.content.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str, content: bytes) -> str:
        self.content[path] = content
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"


@pytest.fixture
def files() -> Iterator[Files]:
    served = Files()
    served.thread.start()
    yield served
    served.server.shutdown()
    served.server.server_close()


@pytest.fixture
def gateway() -> Iterator[FakeLinkedInGateway]:
    fake = FakeLinkedInGateway(require_connection=False, max_attachment_bytes=1000)
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def clock(tmp_path: Path) -> DrivenClock:
    driven = DrivenClock(tmp_path / "offset")
    driven.set_offset(TUESDAY_10 - datetime.now(UTC))
    return driven


@pytest.fixture
async def rt(db: Database, clock: DrivenClock) -> AsyncIterator[Runtime]:
    runtime = Runtime(
        db=db,
        channels={},
        post_json=post_json,
        campaigns=CampaignCache(),
        lease_seconds=5,
        clock=clock,
        outreach={"linkedin": LinkedInChannel(LinkedInConfig())},
    )
    yield runtime
    for provider in runtime.outreach.values():
        await provider.aclose()


async def _seat(db: Database, gateway: FakeLinkedInGateway, limits: object = NO_SPACING) -> int:
    hours = {"weekly": {d: ["09:00-17:00"] for d in ("mon", "tue", "wed", "thu", "fri")}}
    async with db.transaction() as session:
        identity = Identity(
            channel="linkedin",
            address="seat-1",
            timezone="UTC",
            policy={"working_hours": hours, "limits": limits},
            settings=dict(gateway.sender().settings),
        )
        session.add(identity)
        await session.flush()
        return identity.id


async def _start(
    db: Database, rt: Runtime, tmp_path: Path, source: str, seat: int, n: int, **variables: str
) -> int:
    path = tmp_path / f"campaign-{n}.yaml"
    path.write_text(source)
    async with db.transaction() as session:
        name = (await install_campaign(session, path)).name
    change = await lifecycle.start(
        db,
        name,
        seat,
        channel="linkedin",
        address=f"lead-{n}",
        variables={"first_name": f"Lead{n}", **variables},
    )
    await executor.begin_run(rt, change.conversation_id, None)
    await _until_waiting(rt, change.conversation_id)
    return change.conversation_id


async def _media_lead(
    db: Database, rt: Runtime, tmp_path: Path, files: Files, seat: int, n: int = 1, **over: str
) -> int:
    variables = {
        "post": POST,
        "deck": files.url("/deck.pdf", b"%PDF-1.4 small deck"),
        "voice": files.url("/hello.wav", wav(20)),
        **over,
    }
    return await _start(db, rt, tmp_path, MEDIA, seat, n, **variables)


async def _walk(rt: Runtime, seat: int, cid: int, steps: int) -> list[str]:
    """Perform the identity's next action and let the conversation look again, ``steps``
    times; what each dispatch did."""
    done = []
    for _ in range(steps):
        done.append(await dispatch.perform_next(rt, seat, _seeded()))
        await _look_again(rt, cid)
    return done


async def _conversation(db: Database, cid: int) -> tuple[str, Status]:
    async with db.read() as session:
        row = await queries.conversations.get_conversation(session, cid)
        return row.current_node, Status(row.status)


# --- like, attachment, voice --------------------------------------------------------------


async def test_a_like_an_attachment_and_a_voice_message_each_go_out_once(
    db: Database, rt: Runtime, gateway: FakeLinkedInGateway, files: Files, tmp_path: Path
) -> None:
    seat = await _seat(db, gateway)
    cid = await _media_lead(db, rt, tmp_path, files, seat)
    assert await _walk(rt, seat, cid, 3) == ["sent", "sent", "sent"]
    like, deck, voice = gateway.performed
    assert (like.kind, like.body) == ("like", {"to": "lead-1", "post": POST})
    assert deck.kind == "attachment"
    assert deck.body["filename"] == "deck.pdf" and deck.body["text"] == "For you, Lead1"
    assert (voice.kind, set(voice.body)) == ("voice", {"to", "url"})
    assert await _conversation(db, cid) == ("done", Status.COMPLETED)
    assert [a.type for a in await _actions(db, seat)] == [
        "linkedin_like_post",
        "linkedin_attachment",
        "linkedin_voice",
    ]


async def test_liking_a_url_that_is_no_post_is_refused_and_takes_the_error_edge(
    db: Database, rt: Runtime, gateway: FakeLinkedInGateway, files: Files, tmp_path: Path
) -> None:
    seat = await _seat(db, gateway)
    cid = await _media_lead(
        db, rt, tmp_path, files, seat, post="https://www.linkedin.com/in/ada-lovelace/"
    )
    assert await _walk(rt, seat, cid, 1) == ["failed"]
    [action] = await _actions(db, seat)
    assert action.reason is not None and "not_a_post" in action.reason
    assert gateway.performed == []
    assert await _conversation(db, cid) == ("refused", Status.COMPLETED)


@pytest.mark.parametrize(
    ("path", "content", "why"),
    [
        ("/big.pdf", b"x" * 1001, "larger than 1000 bytes"),
        ("/setup.exe", b"MZ", "unsupported attachment type 'exe'"),
        ("/gone.pdf", None, "could not download"),
    ],
)
async def test_an_attachment_linkedin_would_not_take_is_refused_and_takes_the_error_edge(
    db: Database,
    rt: Runtime,
    gateway: FakeLinkedInGateway,
    files: Files,
    tmp_path: Path,
    path: str,
    content: bytes | None,
    why: str,
) -> None:
    seat = await _seat(db, gateway)
    url = files.url(path, content) if content is not None else files.url("/x", b"") + path
    cid = await _media_lead(db, rt, tmp_path, files, seat, deck=url)
    assert await _walk(rt, seat, cid, 2) == ["sent", "failed"]
    action = (await _actions(db, seat))[-1]
    assert (
        action.reason is not None
        and "attachment_rejected" in action.reason
        and why in action.reason
    )
    assert [a.kind for a in gateway.performed] == ["like"]
    assert await _conversation(db, cid) == ("refused", Status.COMPLETED)


async def test_a_voice_message_over_a_minute_is_refused_and_takes_the_error_edge(
    db: Database, rt: Runtime, gateway: FakeLinkedInGateway, files: Files, tmp_path: Path
) -> None:
    seat = await _seat(db, gateway)
    long_voice = files.url("/long.wav", wav(61))
    cid = await _media_lead(db, rt, tmp_path, files, seat, voice=long_voice)
    assert await _walk(rt, seat, cid, 3) == ["sent", "sent", "failed"]
    action = (await _actions(db, seat))[-1]
    assert action.reason is not None and "voice_rejected" in action.reason
    assert "at most 60 s, got 61.0 s" in action.reason
    assert await _conversation(db, cid) == ("refused", Status.COMPLETED)


async def test_likes_count_against_their_own_daily_cap_not_the_other_actions(
    db: Database, rt: Runtime, gateway: FakeLinkedInGateway, files: Files, tmp_path: Path
) -> None:
    limits = {"actions": {**NO_SPACING["actions"], "linkedin_like_post": {"daily": 1}}}
    seat = await _seat(db, gateway, limits)
    first = await _media_lead(db, rt, tmp_path, files, seat, 1)
    second = await _media_lead(db, rt, tmp_path, files, seat, 2)
    assert await dispatch.perform_next(rt, seat, _seeded()) == "sent"  # lead 1's like
    assert await dispatch.perform_next(rt, seat, _seeded()) == "waiting"  # lead 2's: capped
    [_, capped] = await _actions(db, seat)
    assert capped.reason is not None and "daily cap 1 of linkedin_like_post" in capped.reason
    await _look_again(rt, first)  # lead 1 moves on to its attachment: not capped by likes
    assert await dispatch.perform_next(rt, seat, _seeded()) == "sent"
    assert [a.kind for a in gateway.performed] == ["like", "attachment"]
    node, status = await _conversation(db, second)
    assert node == "like" and status not in (Status.COMPLETED, Status.FAILED)  # still waits


# --- the bundle ---------------------------------------------------------------------------


async def test_a_bundle_performs_its_actions_in_order_each_once_and_each_counted(
    db: Database, rt: Runtime, gateway: FakeLinkedInGateway, tmp_path: Path
) -> None:
    seat = await _seat(db, gateway)
    cid = await _start(db, rt, tmp_path, BUNDLE, seat, 1)
    [visit] = await _actions(db, seat)
    assert visit.type == "linkedin_profile_visit"  # only the first is queued at first
    assert await dispatch.perform_next(rt, seat, _seeded()) == "sent"
    cursor = await _look_again(rt, cid)
    assert (cursor.node, cursor.wait and cursor.wait.kind) == ("touch", WaitKind.ACTION)
    replay = await executor.run_step(rt, cid, cursor.step - 1)  # a replayed step: same action
    assert replay.step == cursor.step
    visit, connect = await _actions(db, seat)
    assert (
        connect.type == "linkedin_connection"
        and connect.payload["text"] == "Hi Lead1, let's connect"
    )
    assert visit.idempotency_key != connect.idempotency_key
    assert await dispatch.perform_next(rt, seat, _seeded()) == "sent"
    await _look_again(rt, cid)
    assert await _conversation(db, cid) == ("done", Status.COMPLETED)
    assert [a.kind for a in gateway.performed] == ["profile_visit", "invitation"]
    usage = (await identities.explain(db, seat, now=rt.clock.now()))["usage"]
    assert usage["linkedin_profile_visit"]["today"] == 1
    assert usage["linkedin_connection"]["today"] == 1


async def test_a_bundle_whose_second_action_is_capped_waits_for_it_and_then_completes(
    db: Database, rt: Runtime, gateway: FakeLinkedInGateway, tmp_path: Path, clock: DrivenClock
) -> None:
    limits = {"actions": {**NO_SPACING["actions"], "linkedin_connection": {"daily": 1}}}
    seat = await _seat(db, gateway, limits)
    now = rt.clock.now()
    async with db.transaction() as session:  # today's one connection request went out already
        session.add(
            Action(
                identity_id=seat,
                channel="linkedin",
                type="linkedin_connection",
                payload={},
                queue="ready",
                not_before=now,
                status="done",
                outcome="sent",
                performed_at=now - timedelta(minutes=30),
                idempotency_key="earlier-invitation",
            )
        )
    cid = await _start(db, rt, tmp_path, BUNDLE, seat, 1)
    assert await dispatch.perform_next(rt, seat, _seeded()) == "sent"  # the visit: its own cap
    await _look_again(rt, cid)
    assert await dispatch.perform_next(rt, seat, _seeded()) == "waiting"
    connect = (await _actions(db, seat))[-1]
    assert connect.reason is not None and "daily cap 1 of linkedin_connection" in connect.reason
    node, status = await _conversation(db, cid)
    assert node == "touch" and status not in (Status.COMPLETED, Status.FAILED)  # waits for it
    clock.advance(connect.not_before - rt.clock.now() + timedelta(seconds=1))
    assert await dispatch.perform_next(rt, seat, _seeded()) == "sent"
    await _look_again(rt, cid)
    assert await _conversation(db, cid) == ("done", Status.COMPLETED)
    assert [a.kind for a in gateway.performed] == ["profile_visit", "invitation"]


async def test_a_bundle_action_whose_dispatcher_died_mid_call_is_performed_once(
    db: Database, rt: Runtime, gateway: FakeLinkedInGateway, tmp_path: Path
) -> None:
    """The second action's claim died after the gateway did it: recovery queues it again with
    the same key, the gateway answers with the first result, and LinkedIn got one invitation."""
    from prefect_adapter.outreach_tick import recover_abandoned_actions

    seat = await _seat(db, gateway)
    cid = await _start(db, rt, tmp_path, BUNDLE, seat, 1)
    assert await _walk(rt, seat, cid, 1) == ["sent"]
    connect = (await _actions(db, seat))[-1]
    async with db.transaction() as session:  # claimed; the call went out; the process died
        row = await queries.actions.lock_action(session, connect.id)
        row.status, row.claimed_at = "running", utcnow() - timedelta(minutes=10)
    await gateway_performs(gateway, connect)
    assert await recover_abandoned_actions(rt, timedelta(minutes=5)) == 1
    assert await dispatch.perform_next(rt, seat, _seeded()) == "sent"
    await _look_again(rt, cid)
    assert [a.kind for a in gateway.performed] == ["profile_visit", "invitation"]
    assert await _conversation(db, cid) == ("done", Status.COMPLETED)


async def gateway_performs(gateway: FakeLinkedInGateway, action: Action) -> None:
    """What the dead dispatcher's call did at the gateway: the invitation, under its key."""
    channel = LinkedInChannel(LinkedInConfig())
    try:
        await channel.perform(
            OutreachAction(
                type=action.type,
                to=str(action.payload["to"]),
                client_ref=action.idempotency_key,
                text=action.payload["text"],
            ),
            gateway.sender(),
        )
    finally:
        await channel.aclose()


async def test_a_bundle_whose_action_fails_takes_its_error_edge_and_performs_no_more(
    db: Database, rt: Runtime, gateway: FakeLinkedInGateway, tmp_path: Path
) -> None:
    seat = await _seat(db, gateway)
    cid = await _start(db, rt, tmp_path, BUNDLE, seat, 1)
    gateway.fail_next("invalid_request", 422)
    assert await dispatch.perform_next(rt, seat, _seeded()) == "failed"
    await _look_again(rt, cid)
    assert await _conversation(db, cid) == ("failed", Status.COMPLETED)
    assert [a.type for a in await _actions(db, seat)] == ["linkedin_profile_visit"]
    assert gateway.performed == []


async def test_the_funnel_names_each_node_s_actions_and_counts_a_bundle_once(
    db: Database, rt: Runtime, gateway: FakeLinkedInGateway, tmp_path: Path
) -> None:
    seat = await _seat(db, gateway)
    cid = await _start(db, rt, tmp_path, BUNDLE, seat, 1)
    assert await _walk(rt, seat, cid, 2) == ["sent", "sent"]
    shown = await funnel.campaign_funnel(db, "li-bundle")
    touch = next(node for node in shown.nodes if node.node == "touch")
    assert (touch.type, touch.actions) == (
        "bundle",
        ("linkedin_profile_visit", "linkedin_connection"),
    )
    assert (touch.reached, touch.completed, touch.waiting_now) == (1, 1, 0)
    done = next(node for node in shown.as_dict()["nodes"] if node["node"] == "done")
    assert done["actions"] == ()
