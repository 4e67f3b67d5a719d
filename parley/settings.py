"""All of Parley's configuration, read once from the environment (``PARLEY_`` prefix) or ``.env``.

Defaults are the embedded demo: SQLite under ``.parley/``, a loopback fake of the WhatsApp Cloud
API, demo secrets. Every environment refuses an empty secret (an empty app secret would make any
forged webhook "signed"); ``PARLEY_ENVIRONMENT=production`` also refuses the demo secrets, the
embedded SQLite database and loopback provider URLs, so a copy-pasted development config cannot
reach real users.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

from parley.errors import ConfigurationError

DEMO_SECRET_PREFIX = "parley-demo-"
DEFAULT_DATA_DIR = Path(".parley")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
CAMPAIGN_FILE_SUFFIXES = frozenset({".yaml", ".yml", ".json"})
_SECRETS = ("whatsapp_access_token", "whatsapp_app_secret", "whatsapp_verify_token", "api_keys")


def is_loopback(url: str) -> bool:
    return urlsplit(url).hostname in LOOPBACK_HOSTS


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PARLEY_", env_file=".env", extra="ignore")

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Field(default=DEFAULT_DATA_DIR, description="Where embedded state lives.")
    database_url: SecretStr = Field(
        default=SecretStr(""),
        description="SQLAlchemy async URL; empty means a SQLite file under data_dir.",
    )
    db_block: str = Field(
        default="parley-db",
        description="Name of a prefect-sqlalchemy SqlAlchemyConnector block used by deployments "
        "when PARLEY_DATABASE_URL is not set.",
    )

    whatsapp_api_url: str = "http://127.0.0.1:8089/v21.0"
    whatsapp_access_token: SecretStr = SecretStr("parley-demo-access-token")
    whatsapp_phone_number_id: str = "100000000000001"
    whatsapp_app_secret: SecretStr = SecretStr("parley-demo-app-secret")
    whatsapp_verify_token: SecretStr = SecretStr("parley-demo-verify-token")
    whatsapp_timeout_seconds: float = 10.0

    linkedin_gateway_url: str | None = Field(
        default=None,
        description="The LinkedIn gateway (see docs/outreach.md: the gateway contract); unset: no "
        "LinkedIn actions in this process.",
    )
    linkedin_api_key: SecretStr = SecretStr("")
    linkedin_webhook_secret: SecretStr = SecretStr("")
    email_webhook_secret: SecretStr = Field(
        default=SecretStr(""),
        description="Signs the inbound-email webhook (X-Parley-Signature); empty: every "
        "inbound email POST is refused until it is set.",
    )

    database_pool_size: int = Field(
        default=10,
        ge=1,
        description="PostgreSQL connections the webhook and each worker keep open (SQLite: "
        "ignored).",
    )
    database_max_overflow: int = Field(
        default=30,
        ge=0,
        description="Extra connections a process may open under a burst, above the pool; keep "
        "the sum over all processes under PostgreSQL's max_connections.",
    )

    webhook_host: str = "127.0.0.1"
    webhook_port: int = 8000
    webhook_max_body_bytes: int = Field(
        default=256 * 1024,
        ge=1024,
        description="Larger webhook bodies are refused with 413 (Meta's payloads are a few KB).",
    )
    import_max_body_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=1024,
        description="The largest lead import POST /api/conversations/bulk takes (10,000 "
        "leads as CSV are about 1 MB); larger files: `parley leads import`.",
    )
    api_keys: SecretStr = Field(
        default=SecretStr("parley-demo-api-key"),
        description="Bearer keys of the operator REST API, comma-separated (rotate by listing "
        "the new key beside the old one).",
    )

    default_campaign: str = Field(
        default="examples/campaigns/onboarding.yaml",
        description="The campaign new inbound WhatsApp contacts get: the name of a published "
        "campaign, or a campaign file (.yaml/.yml/.json, or any existing file) that the webhook "
        "publishes and activates at startup (the embedded demo).",
    )
    conversation_deployment: str = Field(
        default="conversation/conversation",
        description="flow-name/deployment-name that runs one conversation.",
    )
    dispatcher_deployment: str = Field(
        default="dispatcher/dispatcher",
        description="flow-name/deployment-name of the scheduled dispatcher.",
    )
    dispatcher_limit: str = Field(
        default="parley-dispatcher",
        description="Prefect global concurrency limit (1 slot) that keeps one dispatcher active.",
    )
    identity_limit_prefix: str = Field(
        default="identity-",
        min_length=1,
        description=(
            "Prefix of each identity's one-slot global concurrency limit ({prefix}{id}). Two "
            "Parley installations on one Prefect server (staging beside production) must use "
            "different prefixes, or identity 7 of one blocks identity 7 of the other."
        ),
    )
    dispatcher_interval_seconds: float = Field(
        default=300.0,
        ge=10,
        description="The dispatcher's schedule; each run loops this long, then the next starts.",
    )
    dispatcher_tick_seconds: float = Field(
        default=1.0,
        gt=0,
        description="How often a dispatcher run looks for work (starts, resumes, recoveries).",
    )

    run_starts_per_second: float = Field(
        default=2.0,
        gt=0,
        description="How many flow runs of imported leads' conversations the dispatcher "
        "creates per second on average (at most 5 s worth at once, none while 10 s worth wait "
        "for a worker): a 10,000-lead import reaches the Prefect server at a pace it holds, "
        "not at once. Single starts are not paced. Measured with `make bench-import` "
        "(docs/performance.md).",
    )

    parked_health_check_seconds: float = Field(
        default=300.0,
        gt=0,
        description="How often the dispatcher asks a provider whether a parked queue's account "
        "works again (the gateway's account status, an SMTP login, the WhatsApp token), and "
        "unparks it when it does; at most once per interval per parked queue.",
    )

    worker_concurrency: int = Field(
        default=200, ge=1, description="How many conversation runs one worker process runs at once."
    )
    worker_poll_seconds: float = Field(
        default=0.25, gt=0, description="How often the in-process worker asks Prefect for due runs."
    )
    hot_wait_seconds: float = Field(
        default=20.0,
        ge=0,
        description="How long a run stays in-process waiting for the next message before it "
        "suspends and exits (hot, then cold).",
    )
    hot_poll_seconds: float = Field(default=0.05, gt=0)
    resume_retry_seconds: float = Field(
        default=60.0,
        gt=0,
        description="How long the webhook keeps retrying a resume that finds the run not yet "
        "suspended, before leaving it to the dispatcher.",
    )
    api_run_wait_seconds: float = Field(
        default=10.0,
        gt=0,
        description="How long a REST call waits for Prefect to start or resume the run before "
        "answering run_reached: false (the start or resume goes on in the background).",
    )
    lease_seconds: float = Field(
        default=30.0,
        gt=0,
        description="A running conversation renews its lease this often x3; an expired lease "
        "means its worker died and the dispatcher reschedules the run.",
    )
    send_retry_seconds: float = Field(
        default=300.0,
        ge=0,
        description="How long a step retries what a provider calls temporary (429 with its "
        "retry-after, 5xx, timeouts) before the node has failed for good.",
    )
    infra_retry_seconds: float = Field(
        default=300.0,
        ge=0,
        description="How long a run rides out its database or the Prefect API being "
        "unreachable before it fails (and the dispatcher reschedules it).",
    )
    clock_file: Path | None = Field(
        default=None,
        description="A driven clock: an offset in seconds in this file moves 'now' for every "
        "process (timers only; leases stay on real time). For tests and rehearsals.",
    )
    suspend_delay_seconds: float = Field(
        default=0.0,
        ge=0,
        description="Fault injection for tests and rehearsals: wait this long between marking "
        "a conversation suspended and suspending its run, widening the race the wake-up "
        "handshake must win. 0 in production.",
    )
    send_reconcile_seconds: float = Field(
        default=30.0,
        ge=0,
        description="How long an uncertain send (crashed after the provider call) waits for the "
        "provider's status callback before it is considered not sent and sent again.",
    )
    action_reconcile_seconds: float = Field(
        default=900.0,
        ge=0,
        description="How long an uncertain outreach action (a WhatsApp template or an email "
        "whose call timed out or whose dispatcher died mid-call) waits for the provider's "
        "status callback before it ends failed with an 'uncertain:' reason; never resent.",
    )
    http_timeout_seconds: float = 10.0

    @field_validator("default_campaign", mode="before")
    @classmethod
    def _path_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, Path) else value

    @property
    def default_campaign_file(self) -> Path | None:
        """The default campaign's file when the setting names one; None: a published name."""
        path = Path(self.default_campaign)
        if path.suffix.lower() in CAMPAIGN_FILE_SUFFIXES or path.is_file():
            return path
        return None

    @model_validator(mode="after")
    def _refuse_unsafe_values(self) -> Settings:
        empty = [name for name in _SECRETS if not self._secret(name).strip()]
        if empty:
            raise ConfigurationError(f"{_names(empty)} must not be empty")
        if self.environment == "production":
            self._refuse_in_production()
        return self

    def _refuse_in_production(self) -> None:
        demo = [name for name in _SECRETS if _is_demo(self._secret(name))]
        if demo:
            raise ConfigurationError(f"production refuses the demo value of {_names(demo)}")
        if make_url(self.resolved_database_url).get_backend_name() != "postgresql":
            raise ConfigurationError("production needs PARLEY_DATABASE_URL on PostgreSQL")
        if is_loopback(self.whatsapp_api_url):
            raise ConfigurationError(
                "production refuses the loopback PARLEY_WHATSAPP_API_URL "
                f"{self.whatsapp_api_url!r}; use https://graph.facebook.com/v21.0"
            )

    def _secret(self, name: str) -> str:
        value = getattr(self, name)
        assert isinstance(value, SecretStr)
        return value.get_secret_value()

    @property
    def resolved_database_url(self) -> str:
        if url := self.database_url.get_secret_value():
            return url
        path = (self.data_dir / "parley.db").resolve()
        return f"sqlite+aiosqlite:///{path}"

    @property
    def printable_database_url(self) -> str:
        """For logs and consoles: the password never leaves the process."""
        return make_url(self.resolved_database_url).render_as_string(hide_password=True)

    @property
    def api_key_list(self) -> list[str]:
        return [key.strip() for key in self._secret("api_keys").split(",") if key.strip()]

    @property
    def webhook_url(self) -> str:
        return f"http://{self.webhook_host}:{self.webhook_port}"


def _is_demo(secret: str) -> bool:
    """Any of a comma-separated list (rotated API keys) counts."""
    return any(part.strip().startswith(DEMO_SECRET_PREFIX) for part in secret.split(","))


def _names(fields: list[str]) -> str:
    return ", ".join(f"PARLEY_{name.upper()}" for name in fields)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
