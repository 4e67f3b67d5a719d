"""The one exception family of Parley.

Every error Parley raises on purpose derives from ``ParleyError`` so callers can catch the family
in one place. HTTP status codes are chosen in ``webhook/``, never here: the core does not know it
is being served over HTTP.
"""

from __future__ import annotations


class ParleyError(Exception):
    """Root of every deliberate Parley error."""


class ConfigurationError(ParleyError):
    """Settings that must not be used, e.g. demo secrets in production."""


class NotFound(ParleyError):
    """A conversation, contact, message or campaign that does not exist."""


class ConcurrentUpdate(ParleyError):
    """An optimistic-lock check failed: someone else changed the row first."""


class TransitionNotAllowed(ParleyError):
    """A status change the state machine's table does not allow (resume a completed
    conversation, retry one that did not fail): nothing was changed."""


class Suppressed(TransitionNotAllowed):
    """The lead is on the do-not-contact list (for this identity or installation-wide): it is
    not started, nothing is sent to it."""


class InvalidInput(ParleyError):
    """An operator's input that cannot be applied: a task result that fails the node's model,
    a signal of an unknown kind, a migration without a mapping for a current node."""


class AlreadyExists(ParleyError):
    """Something with the same unique name exists already (an identity's channel and address):
    nothing was created."""


# --- inbound webhooks -------------------------------------------------------------------------


class WebhookError(ParleyError):
    """A provider callback we refuse; nothing from it is stored."""


class InvalidSignature(WebhookError):
    """Missing or wrong HMAC signature: the request did not come from the provider."""


class MalformedPayload(WebhookError):
    """The body is not JSON, or not a payload of the provider we expect."""


# --- campaigns --------------------------------------------------------------------------------


class CampaignInvalid(ParleyError):
    """A campaign graph that fails validation; ``problems`` lists each one with its node id."""

    def __init__(self, problems: list[tuple[str | None, str]]) -> None:
        self.problems = problems
        lines = [f"{node or '<campaign>'}: {message}" for node, message in problems]
        super().__init__("invalid campaign:\n" + "\n".join(lines))


# --- channels (provider clients) --------------------------------------------------------------


class ChannelError(ParleyError):
    """A provider refused or failed a call. ``retryable`` says whether trying again can help."""

    retryable: bool = False

    def __init__(self, message: str, *, code: int | None = None, http_status: int | None = None):
        super().__init__(message)
        self.code = code
        self.http_status = http_status


class TransientChannelError(ChannelError):
    """5xx, timeouts, connection errors: the same call may succeed shortly.

    ``maybe_sent`` says whether the provider may have acted anyway (a timeout after the request
    went out, a 5xx from a proxy after the provider accepted it): such a send is *uncertain*
    and is reconciled before it is repeated. A refused connection never reached anybody.
    """

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        http_status: int | None = None,
        maybe_sent: bool | None = None,
    ) -> None:
        super().__init__(message, code=code, http_status=http_status)
        self.maybe_sent = (
            maybe_sent if maybe_sent is not None else http_status is None or http_status >= 500
        )


class RateLimited(ChannelError):
    """The provider throttles us: retry later, ideally after ``retry_after`` seconds."""

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        http_status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code, http_status=http_status)
        self.retry_after = retry_after


class PairRateLimited(RateLimited):
    """Too many messages from the business to this one recipient (WhatsApp 131056): only
    that business-contact pair waits; the sender's other recipients are not throttled."""


class IdentityExpired(ChannelError):
    """Our credentials for the sending identity are expired or revoked: a human must renew them."""


class OutsideCustomerWindow(ChannelError):
    """WhatsApp 131047: more than 24 h since the user last wrote; only templates may be sent."""


class PermanentChannelError(ChannelError):
    """Any other refusal: sending the same thing again will fail the same way."""


class NotConnected(PermanentChannelError):
    """LinkedIn: the lead is not a connection, so a direct message cannot be sent."""


class CreditsExhausted(ChannelError):
    """LinkedIn InMail credits are used up: park InMails until the account has credits again."""


class NotOnWhatsApp(PermanentChannelError):
    """WhatsApp 131026: the number is no WhatsApp account (or cannot get this message). Not
    ``Undeliverable``: the conversation takes its ``when: error`` edge (another channel), and
    the lead counts as having no WhatsApp from then on."""


class Undeliverable(PermanentChannelError):
    """Bounced, blocked or unknown recipient: the conversation ends with this reason."""
