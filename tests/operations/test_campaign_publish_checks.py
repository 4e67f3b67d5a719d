"""Publishing checks what a campaign needs from this installation: a LinkedIn action needs a
gateway (the settings' or a seat's own), and every ``{secret.x}`` a Prefect Secret block — a
missing one refuses the publish with its node id (exit 2 / 422), a Prefect that cannot be
reached lets it through with a warning. Secrets are checked against the session's real
Prefect server; databases are SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect.blocks.system import Secret
from prefect.settings import PREFECT_API_URL, temporary_settings
from typer.testing import CliRunner

from devkit.stack.processes import free_port
from parley.campaign import publishing
from parley.campaign.installation import Installation, configured_channels
from parley.cli import app
from parley.db import Database, queries
from parley.errors import CampaignInvalid
from parley.settings import Settings
from prefect_adapter.composition import publish_installation
from prefect_adapter.secret_names import PrefectSecretNames
from tests.operator_api import API_KEY, operator_api
from webhook.routes import campaigns as campaign_routes

runner = CliRunner()
NO_GATEWAY = Settings(linkedin_gateway_url=None, api_keys=API_KEY)

LINKEDIN = """
name: li-check
channel: linkedin
start: visit
nodes:
  - {id: visit, type: send, action: linkedin_profile_visit}
  - {id: mail, type: send, action: email, subject: "Hi", text: "Hello"}
  - {id: done, type: end}
edges:
  - {from: visit, to: mail}
  - {from: mail, to: done}
"""


def _with_secrets(*names: str) -> str:
    headers = ", ".join(f'"X-{i}": "{{secret.{n}}}"' for i, n in enumerate(names))
    return f"""
name: crm-check
channel: whatsapp
start: register
env:
  CRM_URL: http://127.0.0.1:9
nodes:
  - id: register
    type: http
    url: "{{env.CRM_URL}}/contacts"
    send: []
    headers: {{{headers}}}
    result_var: crm
  - {{id: done, type: end}}
edges:
  - {{from: register, to: done}}
"""


async def test_a_linkedin_action_without_a_gateway_is_refused_naming_its_node(
    db: Database,
) -> None:
    installation = Installation(configured_channels(NO_GATEWAY))

    with pytest.raises(CampaignInvalid) as refused:
        await publishing.publish(db, LINKEDIN, installation=installation)

    [(node, message)] = refused.value.problems
    assert node == "visit" and "PARLEY_LINKEDIN_GATEWAY_URL" in message
    assert await publishing.list_campaigns(db) == []  # nothing stored


async def test_a_gateway_in_the_settings_or_a_seats_own_serves_linkedin_actions(
    db: Database,
) -> None:
    with_gateway = Settings(linkedin_gateway_url="http://127.0.0.1:9/gateway")
    assert (
        await publishing.publish(
            db, LINKEDIN, installation=Installation(configured_channels(with_gateway))
        )
    ).version == 1
    async with db.transaction() as session:
        seat = await queries.identities.ensure_identity(session, "linkedin", "seat-1")
        seat.settings = {"gateway_url": "http://127.0.0.1:9/seat-gateway"}
    edited = LINKEDIN.replace('text: "Hello"', 'text: "Hello again"')
    published = await publishing.publish(
        db, edited, installation=Installation(configured_channels(NO_GATEWAY))
    )
    assert published.version == 2


async def test_the_cli_and_the_rest_api_refuse_an_unserved_action_with_its_node(
    cli_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PARLEY_LINKEDIN_GATEWAY_URL", raising=False)
    path = tmp_path / "li.yaml"
    path.write_text(LINKEDIN)

    refused = await asyncio.to_thread(runner.invoke, app, ["campaign", "publish", str(path)])
    async with operator_api(cli_db, campaign_routes.router, settings=NO_GATEWAY) as api:
        answered = await api.post("/api/campaigns", content=LINKEDIN)

    assert refused.exit_code == 2, refused.output
    assert "visit" in refused.output and "linkedin" in refused.output
    assert answered.status_code == 422
    assert [p["node"] for p in answered.json()["problems"]] == ["visit"]


async def test_a_missing_secret_block_is_refused_and_an_existing_one_passes(
    db: Database, prefect_server: str
) -> None:
    present = f"crm-token-{uuid.uuid4().hex[:8]}"
    absent = f"crm-absent-{uuid.uuid4().hex[:8]}"
    await Secret(value="s3cret").save(present)
    installation = publish_installation(Settings())

    with pytest.raises(CampaignInvalid) as refused:
        await publishing.publish(db, _with_secrets(present, absent), installation=installation)
    published = await publishing.publish(db, _with_secrets(present), installation=installation)

    [(node, message)] = refused.value.problems
    assert node == "register" and absent in message
    assert (published.version, published.warnings) == (1, [])
    assert await PrefectSecretNames().missing([present, absent]) == [absent]


@pytest.fixture
def prefect_is_down() -> Any:
    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{free_port()}/api"}):
        yield


@pytest.mark.usefixtures("prefect_is_down")
async def test_with_prefect_unreachable_the_publish_goes_through_with_a_warning(
    db: Database,
) -> None:
    published = await publishing.publish(
        db, _with_secrets("crm-token"), installation=publish_installation(Settings())
    )

    assert published.version == 1
    [warning] = published.warnings
    assert "not checked" in warning and "unreachable" in warning
    assert json.loads(json.dumps(published.as_dict()))["warnings"] == [warning]
