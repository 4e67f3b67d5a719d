"""The email channel's sending side against a real SMTP server on loopback (aiosmtpd), so the
message format, the SMTP dialogue and the error taxonomy are checked end to end."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from devkit.fakes.smtp_server import LoopbackSMTPServer
from parley.channels.base import OutboundMessage, OutreachAction, SenderIdentity
from parley.channels.email.channel import (
    DEFAULT_CONVERSATION_SUBJECT,
    EmailChannel,
    EmailConfig,
)
from parley.channels.email.client import error_from_reply, retry_after_of
from parley.channels.email.wire import client_ref_of, message_id_for
from parley.errors import (
    ChannelError,
    IdentityExpired,
    PermanentChannelError,
    RateLimited,
    TransientChannelError,
    Undeliverable,
)

MAILBOX = "ada@parley.example"
LEAD = "bob@example.com"
CLIENT_REF = "conv-42:step-3"


@pytest.fixture
def smtp() -> Iterator[LoopbackSMTPServer]:
    with LoopbackSMTPServer() as server:
        yield server


@pytest.fixture
def channel() -> EmailChannel:
    return EmailChannel()


def mailbox(smtp: LoopbackSMTPServer, **settings: Any) -> SenderIdentity:
    return SenderIdentity("email", MAILBOX, smtp.smtp_settings(**settings))


def action(**fields: Any) -> OutreachAction:
    values: dict[str, Any] = {
        "type": "email",
        "to": LEAD,
        "client_ref": CLIENT_REF,
        "subject": "Quick question",
        "text": "Hi Bob,\nare you the right person to talk to about invoices?\n",
    }
    return OutreachAction(**(values | fields))


def free_port() -> int:
    """A port nobody listens on (bound and released), for "connection refused"."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- sending ----------------------------------------------------------------------------------


async def test_send_delivers_from_to_subject_body_and_our_message_id(
    channel: EmailChannel, smtp: LoopbackSMTPServer
) -> None:
    result = await channel.perform(action(), mailbox(smtp, from_name="Ada Lovelace"))

    assert result.provider_id == "<conv-42%3Astep-3@parley.example>"
    [received] = smtp.messages_to(LEAD)
    assert (received.mail_from, received.rcpt_tos) == (MAILBOX, (LEAD,))
    assert received.message["From"] == f"Ada Lovelace <{MAILBOX}>"
    assert received.message["To"] == LEAD
    assert received.message["Subject"] == "Quick question"
    assert received.message["Message-ID"] == result.provider_id
    assert received.message["Date"] is not None
    assert received.text == "Hi Bob,\nare you the right person to talk to about invoices?\n"
    assert result.detail == {"to": LEAD, "smtp_reply": f"2.0.0 OK: queued as {received.queue_id}"}


async def test_the_same_client_ref_twice_gives_the_same_message_id(
    channel: EmailChannel, smtp: LoopbackSMTPServer
) -> None:
    first = await channel.perform(action(), mailbox(smtp))
    retry = await channel.perform(action(), mailbox(smtp))
    other = await channel.perform(action(client_ref="conv-42:step-4"), mailbox(smtp))

    assert first.provider_id == retry.provider_id != other.provider_id
    ids = [m.message["Message-ID"] for m in smtp.messages]
    assert ids == [first.provider_id, first.provider_id, other.provider_id]


async def test_non_ascii_subject_and_body_arrive_intact(
    channel: EmailChannel, smtp: LoopbackSMTPServer
) -> None:
    await channel.perform(
        action(subject="Grüße aus Köln 👋", text="Schöne Grüße, Jürgen"), mailbox(smtp)
    )

    [received] = smtp.messages
    assert received.message["Subject"] == "Grüße aus Köln 👋"
    assert received.text.strip() == "Schöne Grüße, Jürgen"


async def test_a_newline_in_the_subject_cannot_inject_a_header(
    channel: EmailChannel, smtp: LoopbackSMTPServer
) -> None:
    await channel.perform(action(subject="Hello\r\nBcc: eve@evil.example"), mailbox(smtp))

    [received] = smtp.messages
    assert received.message["Subject"] == "Hello Bcc: eve@evil.example"
    assert received.message["Bcc"] is None
    assert received.rcpt_tos == (LEAD,)


async def test_a_login_with_the_right_password_sends(
    channel: EmailChannel, smtp: LoopbackSMTPServer
) -> None:
    smtp.require_auth("ada", "s3cret")

    await channel.perform(action(), mailbox(smtp))

    assert [m.login for m in smtp.messages] == ["ada"]


async def test_each_send_uses_its_own_connection(
    channel: EmailChannel, smtp: LoopbackSMTPServer
) -> None:
    await channel.perform(action(), mailbox(smtp))
    await channel.perform(action(client_ref="second"), mailbox(smtp))

    assert smtp.connections == 2


# --- refusals ---------------------------------------------------------------------------------


async def test_a_wrong_password_is_an_expired_identity(
    channel: EmailChannel, smtp: LoopbackSMTPServer
) -> None:
    smtp.require_auth("ada", "s3cret")

    with pytest.raises(IdentityExpired) as caught:
        await channel.perform(action(), mailbox(smtp, password="wrong"))

    assert caught.value.code == 535
    assert smtp.messages == []


async def test_a_server_requiring_a_login_we_do_not_have_is_an_expired_identity(
    channel: EmailChannel, smtp: LoopbackSMTPServer
) -> None:
    smtp.require_auth("ada", "s3cret")

    with pytest.raises(IdentityExpired) as caught:
        await channel.perform(
            action(),
            SenderIdentity("email", MAILBOX, {"smtp_host": smtp.host, "smtp_port": smtp.port}),
        )

    assert caught.value.code == 530


async def test_a_mailbox_check_logs_in_and_sends_nothing_and_a_locked_account_is_expired(
    channel: EmailChannel, smtp: LoopbackSMTPServer
) -> None:
    smtp.require_auth("ada", "s3cret")
    sender = mailbox(smtp, username="ada", password="s3cret")

    healthy = await channel.check_sender(sender)
    assert healthy.healthy and "accepts the login" in healthy.detail
    smtp.refuse_logins()  # the right password, refused: the provider locked the account
    with pytest.raises(IdentityExpired) as caught:
        await channel.check_sender(sender)
    assert caught.value.code == 535 and "locked" in str(caught.value)
    with pytest.raises(IdentityExpired) as unauthenticated:  # no login where one is needed
        await channel.check_sender(
            SenderIdentity("email", MAILBOX, {"smtp_host": smtp.host, "smtp_port": smtp.port})
        )
    assert unauthenticated.value.code == 530
    smtp.accept_logins()
    assert (await channel.check_sender(sender)).healthy
    assert smtp.messages == []


@pytest.mark.parametrize(
    ("code", "reply", "retry_after"),
    [
        (421, "4.7.0 Service not available, closing transmission channel", None),
        (450, "4.2.1 Mailbox busy, try again in 2 minutes", 120.0),
        (451, "4.7.1 Greylisted, retry after 30 seconds", 30.0),
        (452, "4.5.3 Too many recipients", None),
    ],
)
async def test_throttling_replies_are_rate_limits(
    channel: EmailChannel,
    smtp: LoopbackSMTPServer,
    code: int,
    reply: str,
    retry_after: float | None,
) -> None:
    smtp.fail_next(code, reply)

    with pytest.raises(RateLimited) as caught:
        await channel.perform(action(), mailbox(smtp))

    assert (caught.value.code, caught.value.retry_after) == (code, retry_after)
    assert smtp.messages == []


async def test_after_a_421_the_next_send_goes_through(
    channel: EmailChannel, smtp: LoopbackSMTPServer
) -> None:
    smtp.fail_next(421, "4.7.0 Too busy")
    with pytest.raises(RateLimited):
        await channel.perform(action(), mailbox(smtp))

    await channel.perform(action(), mailbox(smtp))

    assert len(smtp.messages) == 1


async def test_a_5xx_saying_too_many_is_a_rate_limit_not_a_bounce(
    channel: EmailChannel, smtp: LoopbackSMTPServer
) -> None:
    smtp.fail_next(550, "5.4.5 Daily user sending limit exceeded", at="DATA")

    with pytest.raises(RateLimited) as caught:
        await channel.perform(action(), mailbox(smtp))

    assert caught.value.code == 550


@pytest.mark.parametrize(
    ("code", "reply"),
    [
        (550, "5.1.1 <bob@example.com>: Recipient address rejected: User unknown"),
        (551, "5.1.6 User not local; please try <bob@example.org>"),
        (553, "5.1.3 Mailbox name not allowed"),
    ],
)
async def test_an_unknown_or_rejected_recipient_is_undeliverable(
    channel: EmailChannel, smtp: LoopbackSMTPServer, code: int, reply: str
) -> None:
    smtp.fail_next(code, reply)

    with pytest.raises(Undeliverable) as caught:
        await channel.perform(action(), mailbox(smtp))

    assert caught.value.code == code
    assert reply in str(caught.value)


async def test_another_5xx_is_permanent(channel: EmailChannel, smtp: LoopbackSMTPServer) -> None:
    smtp.fail_next(554, "5.7.1 Message rejected as spam", at="DATA")

    with pytest.raises(PermanentChannelError) as caught:
        await channel.perform(action(), mailbox(smtp))

    assert type(caught.value) is PermanentChannelError
    assert caught.value.code == 554


async def test_a_refused_sender_address_parks_the_mailbox(
    channel: EmailChannel, smtp: LoopbackSMTPServer
) -> None:
    smtp.fail_next(553, "5.7.1 Sender address rejected: not owned by user", at="MAIL")

    with pytest.raises(IdentityExpired) as caught:
        await channel.perform(action(), mailbox(smtp))

    assert caught.value.code == 553


async def test_an_invalid_address_is_undeliverable_without_touching_the_server(
    channel: EmailChannel, smtp: LoopbackSMTPServer
) -> None:
    with pytest.raises(Undeliverable, match="not an email address"):
        await channel.perform(action(to="bob at example"), mailbox(smtp))

    assert smtp.connections == 0


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"subject": None}, "needs a subject"),
        ({"subject": " \n "}, "needs a subject"),
        ({"text": None}, "needs a text"),
        ({"type": "linkedin_message"}, "cannot perform 'linkedin_message'"),
    ],
)
async def test_an_incomplete_action_is_refused_without_touching_the_server(
    channel: EmailChannel, smtp: LoopbackSMTPServer, fields: dict[str, Any], match: str
) -> None:
    with pytest.raises(PermanentChannelError, match=match):
        await channel.perform(action(**fields), mailbox(smtp))

    assert smtp.connections == 0


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({}, "no smtp_host"),
        ({"smtp_host": "127.0.0.1", "smtp_port": "twenty-five"}, "not a number"),
        ({"smtp_host": "127.0.0.1", "starttls": "yes"}, "must be true or false"),
        ({"smtp_host": "127.0.0.1", "starttls": True, "use_tls": True}, "choose one"),
    ],
)
async def test_unusable_mailbox_settings_park_the_mailbox(
    channel: EmailChannel, settings: dict[str, Any], match: str
) -> None:
    with pytest.raises(IdentityExpired, match=match):
        await channel.perform(action(), SenderIdentity("email", MAILBOX, settings))


# --- lost connections -------------------------------------------------------------------------


async def test_a_connection_dropped_after_data_is_transient_and_uncertain(
    channel: EmailChannel, smtp: LoopbackSMTPServer
) -> None:
    smtp.drop_connection_next()

    with pytest.raises(TransientChannelError, match="may have accepted") as caught:
        await channel.perform(action(), mailbox(smtp))

    assert (caught.value.http_status, caught.value.code) == (None, None)
    # The uncertain case: the server did take it, and a retry repeats the same Message-ID.
    retry = await channel.perform(action(), mailbox(smtp))
    assert [m.message["Message-ID"] for m in smtp.messages] == [retry.provider_id] * 2


async def test_a_refused_connection_is_transient(channel: EmailChannel) -> None:
    sender = SenderIdentity("email", MAILBOX, {"smtp_host": "127.0.0.1", "smtp_port": free_port()})

    with pytest.raises(TransientChannelError, match="nothing was sent") as caught:
        await channel.perform(action(), sender)

    assert caught.value.http_status is None


async def test_a_server_that_never_greets_times_out_as_transient(channel: EmailChannel) -> None:
    with socket.socket() as silent:  # accepts TCP connections, never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        settings = {"smtp_host": "127.0.0.1", "smtp_port": silent.getsockname()[1], "timeout": 0.3}

        with pytest.raises(TransientChannelError) as caught:
            await channel.perform(action(), SenderIdentity("email", MAILBOX, settings))

    assert caught.value.http_status is None


# --- the conversational send ------------------------------------------------------------------


async def test_conversational_send_without_a_mailbox_is_refused(channel: EmailChannel) -> None:
    with pytest.raises(PermanentChannelError, match="reply through outreach actions"):
        await channel.send(LEAD, OutboundMessage("Hello"), client_ref="c-1")


async def test_conversational_send_mails_from_the_configured_mailbox(
    smtp: LoopbackSMTPServer,
) -> None:
    channel = EmailChannel(EmailConfig(conversation_sender=mailbox(smtp)))

    message_id = await channel.send(LEAD, OutboundMessage("What's your name?"), client_ref="c-1")

    [received] = smtp.messages
    assert message_id == received.message["Message-ID"] == "<c-1@parley.example>"
    assert received.message["Subject"] == DEFAULT_CONVERSATION_SUBJECT
    assert received.text.strip() == "What's your name?"


async def test_conversational_send_refuses_buttons(smtp: LoopbackSMTPServer) -> None:
    channel = EmailChannel(EmailConfig(conversation_sender=mailbox(smtp)))

    with pytest.raises(PermanentChannelError, match="no reply buttons"):
        await channel.send(LEAD, OutboundMessage("Pick", (("a", "A"),)), client_ref="c-1")

    assert smtp.connections == 0


# --- classification and ids without a server ------------------------------------------------


@pytest.mark.parametrize(
    ("code", "reply", "kind"),
    [
        (534, "5.7.9 Application-specific password required", IdentityExpired),
        (454, "4.7.0 Temporary authentication failure", TransientChannelError),
        (554, "5.1.1 Recipient address rejected", Undeliverable),
        (552, "5.2.2 Mailbox full", PermanentChannelError),
        (-1, "Malformed SMTP response", TransientChannelError),
    ],
)
def test_replies_are_classified_by_code_then_text(
    code: int, reply: str, kind: type[ChannelError]
) -> None:
    error = error_from_reply(code, reply)

    assert type(error) is kind
    assert error.code == (code if code > 0 else None)


@pytest.mark.parametrize(
    ("reply", "seconds"),
    [
        ("Try again in 45 seconds", 45.0),
        ("please retry after 5 min", 300.0),
        ("try again in 1 hour", 3600.0),
        ("Try again later", None),
    ],
)
def test_retry_hints_are_read_from_the_reply_text(reply: str, seconds: float | None) -> None:
    assert retry_after_of(reply) == seconds


@pytest.mark.parametrize(
    "client_ref",
    ["plain", "conv-42:step-3", "a.b..c.", "ünïcödé ref", "100%", "<x@y>"],
)
def test_every_client_ref_makes_a_valid_message_id_that_decodes_back(client_ref: str) -> None:
    message_id = message_id_for(client_ref, "Parley.Example")

    local = message_id[1:-1].rpartition("@")[0]
    assert message_id.endswith("@parley.example>")
    assert local.isascii() and "." not in local and ":" not in local
    assert client_ref_of(message_id, "parley.example") == client_ref


# --- standalone -------------------------------------------------------------------------------


async def test_the_server_runs_standalone(channel: EmailChannel) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "devkit.fakes.smtp_server", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        port = int(banner.rsplit(":", 1)[1])
        sender = SenderIdentity("email", MAILBOX, {"smtp_host": "127.0.0.1", "smtp_port": port})

        result = await channel.perform(action(), sender)

        assert result.provider_id == "<conv-42%3Astep-3@parley.example>"
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
