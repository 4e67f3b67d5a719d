"""Composing an outreach email and sending it over SMTP from the sender's own mailbox.

Every failure leaves as one of the ``ChannelError`` kinds, with the SMTP reply code as ``code``,
so the dispatcher decides park, wait, retry or give up from the type alone:

* 530/534/535 (login refused or required), a server that refuses our sender address, or
  mailbox settings that cannot work: ``IdentityExpired`` — the mailbox is disconnected until a
  human fixes it.
* 421/450/451/452 or a reply saying "too many", "rate limit" or "limit exceeded":
  ``RateLimited``, with ``retry_after`` when the reply says "try again in N seconds/minutes".
* connection refused, reset or timed out: ``TransientChannelError`` with ``http_status=None``.
  When the connection is lost after the login, the message is *uncertain*: the server may have
  accepted it (e.g. it dropped after our final DATA dot but before its 250). SMTP has no way to
  ask, and not every receiving system drops a repeated ``Message-ID``, so the dispatcher does
  not send it again: it waits for a delivery event carrying that Message-ID
(``parley.outreach.dispatch``).
* 550/551/553, or a 5xx with an enhanced status 5.1.x (bad address): ``Undeliverable``.
* any other 4xx: ``TransientChannelError``; any other 5xx: ``PermanentChannelError``.

One connection per send, closed afterwards: every mailbox has its own server and login, sends
per mailbox are minutes apart (outreach limits), and servers drop idle sessions after a few
minutes, so a pool would mostly hold dead connections whose failures look like "uncertain"
sends. A fresh connection keeps each failure attributable to the one message it carried.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formataddr, formatdate
from typing import Any, Final

import aiosmtplib
from email_validator import EmailNotValidError, validate_email

from parley.channels.base import Capabilities, OutreachAction, SenderIdentity
from parley.channels.email.wire import mailbox_domain, message_id_for
from parley.errors import (
    ChannelError,
    IdentityExpired,
    PermanentChannelError,
    RateLimited,
    TransientChannelError,
    Undeliverable,
)

MAX_TEXT_LENGTH: Final = 100_000  # no protocol limit; a sane bound for one plain-text email

CAPABILITIES: Final = Capabilities(
    max_buttons=0,
    max_button_title=0,
    max_button_id=0,
    max_text_length=MAX_TEXT_LENGTH,
    # Bounces carry our Message-ID, which is built from client_ref and decodes back to it.
    echoes_reference=True,
)

DEFAULT_TIMEOUT: Final = 30.0
AUTH_FAILURE_CODES: Final = frozenset({530, 534, 535})
THROTTLE_CODES: Final = frozenset({421, 450, 451, 452})
RECIPIENT_CODES: Final = frozenset({550, 551, 553})
THROTTLE_PHRASES: Final = ("too many", "rate limit", "limit exceeded")
_BAD_ADDRESS_STATUS: Final = re.compile(r"\b5\.1\.\d{1,3}\b")
_RETRY_HINT: Final = re.compile(
    r"(?:retry|try again)\s+(?:after\s+|in\s+)?(\d+)\s*"
    r"(seconds?|secs?|s|minutes?|mins?|m|hours?|h)\b",
    re.IGNORECASE,
)
_UNIT_SECONDS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    """One mailbox's SMTP server and login, read from ``SenderIdentity.settings``."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    starttls: bool | None = None  # None: upgrade when the server offers it (aiosmtplib's rule)
    use_tls: bool = False  # implicit TLS from the first byte (port 465)
    timeout: float = DEFAULT_TIMEOUT

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any]) -> SmtpSettings:
        """Refuse unusable settings as ``IdentityExpired``: no send from this mailbox can work
        until a human fixes them, which is what parking the mailbox is for."""
        host = settings.get("smtp_host")
        if not isinstance(host, str) or not host:
            raise IdentityExpired("the mailbox has no smtp_host setting")
        starttls = _flag(settings, "starttls")
        use_tls = bool(_flag(settings, "use_tls"))
        if starttls and use_tls:
            raise IdentityExpired("the mailbox sets both starttls and use_tls; choose one")
        default_port = 465 if use_tls else 587 if starttls else 25
        return cls(
            host=host,
            port=_port(settings, default_port),
            username=_text(settings, "username"),
            password=_text(settings, "password"),
            starttls=starttls,
            use_tls=use_tls,
            timeout=_number(settings, "timeout", DEFAULT_TIMEOUT),
        )


def _flag(settings: Mapping[str, Any], key: str) -> bool | None:
    value = settings.get(key)
    if value is not None and not isinstance(value, bool):
        raise IdentityExpired(f"the mailbox setting {key!r} must be true or false, not {value!r}")
    return value


def _number(settings: Mapping[str, Any], key: str, default: float) -> float:
    value = settings.get(key, default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise IdentityExpired(f"the mailbox setting {key!r} is not a number: {value!r}") from None
    if isinstance(value, bool) or not number > 0:
        raise IdentityExpired(f"the mailbox setting {key!r} must be positive, not {value!r}")
    return number


def _port(settings: Mapping[str, Any], default: int) -> int:
    port = _number(settings, "smtp_port", default)
    if not port.is_integer() or port > 65535:
        raise IdentityExpired(f"the mailbox setting 'smtp_port' is not a port: {port:g}")
    return int(port)


def _text(settings: Mapping[str, Any], key: str) -> str | None:
    value = settings.get(key)
    if value is not None and not isinstance(value, str):
        raise IdentityExpired(f"the mailbox setting {key!r} must be a string")
    return value or None


# --- composing --------------------------------------------------------------------------------


def compose(action: OutreachAction, sender: SenderIdentity) -> EmailMessage:
    """The RFC 5322 message for ``action``; refuses locally what no server would accept."""
    to = _recipient(action.to)
    subject, text = _content(action)
    domain = _sender_domain(sender.address)
    message = EmailMessage()
    from_name = _one_line(sender.settings.get("from_name") or "")
    message["From"] = formataddr((from_name, sender.address)) if from_name else sender.address
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = message_id_for(action.client_ref, domain)
    message.set_content(text)
    return message


def _recipient(address: str) -> str:
    try:
        return str(validate_email(address, check_deliverability=False).normalized)
    except EmailNotValidError as exc:
        raise Undeliverable(f"not an email address: {address!r} ({exc})") from exc


def _content(action: OutreachAction) -> tuple[str, str]:
    if not action.client_ref:
        raise PermanentChannelError("an email action needs a client_ref for its Message-ID")
    if not _one_line(action.subject or ""):
        raise PermanentChannelError("an email action needs a subject")
    if action.text is None:
        raise PermanentChannelError("an email action needs a text")
    if len(action.text) > MAX_TEXT_LENGTH:
        raise PermanentChannelError(f"email text is longer than {MAX_TEXT_LENGTH} characters")
    return _one_line(action.subject), action.text


def _sender_domain(address: str) -> str:
    try:
        return mailbox_domain(address)
    except EmailNotValidError as exc:
        raise IdentityExpired(f"the mailbox address {address!r} is not valid ({exc})") from exc


def _one_line(value: object) -> str:
    """Header text on one line: a newline in a subject or name must not start a new header."""
    return " ".join(str(value).split())


# --- sending ----------------------------------------------------------------------------------


def _session(settings: SmtpSettings) -> aiosmtplib.SMTP:
    return aiosmtplib.SMTP(
        hostname=settings.host,
        port=settings.port,
        username=settings.username,
        password=settings.password,
        use_tls=settings.use_tls,
        start_tls=settings.starttls,
        timeout=settings.timeout,
    )


async def send_email(message: EmailMessage, settings: SmtpSettings) -> str:
    """Send over a fresh connection and return the server's reply to DATA (often "queued as
    <its id>")."""
    smtp = _session(settings)
    try:
        await _connect(smtp, settings)
        return await _transmit(smtp, message)
    finally:
        await _quit(smtp)


async def check_login(settings: SmtpSettings, mail_from: str) -> str:
    """Whether the mailbox works again, without sending anything: connect, STARTTLS, log in
    and offer ``MAIL FROM`` (a server may take the login but refuse our sender), then ``RSET``.
    Raises what a send would have raised at those steps; returns the server's answer to MAIL."""
    smtp = _session(settings)
    try:
        await _connect(smtp, settings)
        try:
            reply = await smtp.mail(mail_from)
            await smtp.rset()
        except aiosmtplib.SMTPSenderRefused as exc:
            raise _sender_refused(exc) from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise error_from_reply(exc.code, exc.message) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise TransientChannelError(f"the mailbox check was cut off: {exc}") from exc
        return f"{reply.code} {reply.message}"
    finally:
        await _quit(smtp)


async def _connect(smtp: aiosmtplib.SMTP, settings: SmtpSettings) -> None:
    """Greeting, STARTTLS and login: a failure here means nothing was sent."""
    where = f"{settings.host}:{settings.port}"
    try:
        await smtp.connect()
    except aiosmtplib.SMTPResponseException as exc:
        raise error_from_reply(exc.code, f"{exc.message} (from {where})") from exc
    except (aiosmtplib.SMTPTimeoutError, aiosmtplib.SMTPConnectError, OSError) as exc:
        raise TransientChannelError(
            f"could not reach or log in to {where} (nothing was sent): {exc}",
            http_status=None,
            maybe_sent=False,
        ) from exc
    except aiosmtplib.SMTPException as exc:  # e.g. no AUTH or STARTTLS offered
        raise IdentityExpired(f"{where} cannot be used with these settings: {exc}") from exc


async def _transmit(smtp: aiosmtplib.SMTP, message: EmailMessage) -> str:
    """MAIL, RCPT and DATA, with each refusal classified."""
    try:
        _, reply = await smtp.send_message(message)
    except aiosmtplib.SMTPRecipientsRefused as exc:
        refused = exc.recipients[0]
        raise error_from_reply(refused.code, refused.message) from exc
    except aiosmtplib.SMTPSenderRefused as exc:
        raise _sender_refused(exc) from exc
    except aiosmtplib.SMTPResponseException as exc:
        raise error_from_reply(exc.code, exc.message) from exc
    except (aiosmtplib.SMTPTimeoutError, aiosmtplib.SMTPServerDisconnected, OSError) as exc:
        raise TransientChannelError(
            "connection lost while sending; the server may have accepted the message "
            f"(uncertain): {exc}",
            http_status=None,
        ) from exc
    except aiosmtplib.SMTPException as exc:  # e.g. SMTPUTF8 needed but not offered
        raise PermanentChannelError(f"the server cannot take this message: {exc}") from exc
    return reply


async def _quit(smtp: aiosmtplib.SMTP) -> None:
    """Say goodbye politely; a failed QUIT never turns a sent message into an error."""
    if not smtp.is_connected:
        return
    try:
        await smtp.quit()
    except (aiosmtplib.SMTPException, OSError):
        smtp.close()


def _sender_refused(exc: aiosmtplib.SMTPSenderRefused) -> ChannelError:
    error = error_from_reply(exc.code, exc.message)
    if isinstance(error, PermanentChannelError):  # also Undeliverable: it is us, not the lead
        return IdentityExpired(
            f"the server refuses our sender address {exc.sender}: SMTP {exc.code} {exc.message}",
            code=exc.code,
        )
    return error


def error_from_reply(code: int, message: str) -> ChannelError:
    """Classify an SMTP refusal by its reply code, then by what its text says."""
    text = f"SMTP {code} {message}"
    reply_code = code if code > 0 else None  # aiosmtplib uses -1 for unreadable replies
    if code in AUTH_FAILURE_CODES:
        return IdentityExpired(text, code=reply_code)
    if code in THROTTLE_CODES or any(phrase in message.lower() for phrase in THROTTLE_PHRASES):
        return RateLimited(text, code=reply_code, retry_after=retry_after_of(message))
    if code in RECIPIENT_CODES or (code >= 500 and _BAD_ADDRESS_STATUS.search(message)):
        return Undeliverable(text, code=reply_code)
    if code < 500:  # a refusal: the server answered, so it did not take the message
        return TransientChannelError(text, code=reply_code, http_status=None, maybe_sent=False)
    return PermanentChannelError(text, code=reply_code)


def retry_after_of(message: str) -> float | None:
    """Seconds from "try again in 30 seconds" / "retry after 5 min" in a reply, else None."""
    match = _RETRY_HINT.search(message)
    if match is None:
        return None
    return float(match[1]) * _UNIT_SECONDS[match[2][0].lower()]
