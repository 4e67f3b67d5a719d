"""All of Parley's configuration, read once from the environment (``PARLEY_`` prefix) or ``.env``.

Defaults are the embedded demo: SQLite under ``.parley/``, a loopback fake of the WhatsApp Cloud
API, demo secrets. ``PARLEY_ENVIRONMENT=production`` refuses to start with any demo secret so a
copy-pasted development config cannot reach real users.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from parley.errors import ConfigurationError

DEMO_SECRET_PREFIX = "parley-demo-"
DEFAULT_DATA_DIR = Path(".parley")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PARLEY_", env_file=".env", extra="ignore")

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Field(default=DEFAULT_DATA_DIR, description="Where embedded state lives.")
    database_url: str = Field(
        default="",
        description="SQLAlchemy async URL; empty means a SQLite file under data_dir.",
    )
    db_block: str = Field(
        default="parley-db",
        description="Name of a prefect-sqlalchemy SqlAlchemyConnector block used by deployments "
        "when PARLEY_DATABASE_URL is not set.",
    )

    whatsapp_api_url: str = "http://127.0.0.1:8089/v21.0"
    whatsapp_access_token: str = "parley-demo-access-token"
    whatsapp_phone_number_id: str = "100000000000001"
    whatsapp_app_secret: str = "parley-demo-app-secret"
    whatsapp_verify_token: str = "parley-demo-verify-token"
    whatsapp_timeout_seconds: float = 10.0

    webhook_host: str = "127.0.0.1"
    webhook_port: int = 8000

    default_campaign: Path = Path("examples/campaigns/onboarding.yaml")
    conversation_deployment: str = Field(
        default="conversation/conversation",
        description="flow-name/deployment-name that runs one conversation.",
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
        "suspended, before leaving it to the sweep.",
    )
    sweep_interval_seconds: float = Field(default=5.0, gt=0)
    lease_seconds: float = Field(
        default=30.0,
        gt=0,
        description="A running conversation renews its lease this often x3; an expired lease "
        "means its worker died and the sweep reschedules the run.",
    )
    send_reconcile_seconds: float = Field(
        default=30.0,
        ge=0,
        description="How long an uncertain send (crashed after the provider call) waits for the "
        "provider's status callback before it is considered not sent and sent again.",
    )
    http_timeout_seconds: float = 10.0

    @model_validator(mode="after")
    def _refuse_demo_secrets_in_production(self) -> Settings:
        if self.environment != "production":
            return self
        demo = [
            name
            for name in (
                "whatsapp_access_token",
                "whatsapp_app_secret",
                "whatsapp_verify_token",
            )
            if str(getattr(self, name)).startswith(DEMO_SECRET_PREFIX)
        ]
        if demo:
            names = ", ".join(f"PARLEY_{n.upper()}" for n in demo)
            raise ConfigurationError(f"production refuses the demo value of {names}")
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        path = (self.data_dir / "parley.db").resolve()
        return f"sqlite+aiosqlite:///{path}"

    @property
    def webhook_url(self) -> str:
        return f"http://{self.webhook_host}:{self.webhook_port}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
