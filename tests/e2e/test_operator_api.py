"""The operators' surface of a running stack: the REST API only answers with a key, the
webhook refuses bodies no provider would send, and the Prefect UI reads like the campaign."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from devkit.stack.demo import GREETING
from tests.e2e.conftest import API_KEY, NEXT_API_KEY, E2EStack

pytestmark = pytest.mark.e2e


def _base(stack: E2EStack) -> str:
    return stack.webhook_url.removesuffix("/webhooks/whatsapp")


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer not-a-key"}, {"Authorization": f"Basic {API_KEY}"}],
    ids=["no key", "wrong key", "wrong scheme"],
)
async def test_the_rest_api_answers_401_without_a_valid_key(
    pg_stack: E2EStack, headers: dict[str, str]
) -> None:
    async with httpx.AsyncClient() as client:
        listed = await client.get(f"{_base(pg_stack)}/api/conversations", headers=headers)
        one = await client.get(f"{_base(pg_stack)}/api/conversations/1", headers=headers)
    for response in (listed, one):
        assert response.status_code == 401
        assert "API key is required" in response.json()["detail"]
        assert response.headers["www-authenticate"] == "Bearer"


async def test_both_keys_of_a_rotation_are_accepted(pg_stack: E2EStack) -> None:
    async with httpx.AsyncClient() as client:
        for key in (API_KEY, NEXT_API_KEY):
            response = await client.get(
                f"{_base(pg_stack)}/api/conversations",
                headers={"Authorization": f"Bearer {key}"},
            )
            assert response.status_code == 200, key


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def test_a_webhook_body_over_the_limit_is_refused_with_413(pg_stack: E2EStack) -> None:
    """Meta's payloads are a few KB; a public URL must not read megabytes into memory. Both a
    declared Content-Length and a chunked body without one are cut off."""
    big = b'{"object": "whatsapp_business_account", "pad": "' + b"x" * 300_000 + b'"}'
    async with httpx.AsyncClient() as client:
        declared = await client.post(pg_stack.webhook_url, content=big)
        chunked = await client.post(pg_stack.webhook_url, content=_chunks(big, 16_384))
    assert (declared.status_code, chunked.status_code) == (413, 413)
    assert "larger than" in declared.json()["detail"]


async def _task_run_names(flow_run_id: str) -> list[str]:
    async with get_client() as client:
        runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)])),
            limit=200,
        )
    return [run.name for run in runs]


async def test_task_runs_are_named_for_the_campaign_nodes(pg_stack: E2EStack) -> None:
    user = pg_stack.user("Quinn")
    assert await user.say("Hi") == [GREETING]
    detail: dict[str, Any] = await pg_stack.conversation_of(user)
    names: list[str] = []
    for _ in range(50):  # task runs are recorded asynchronously
        names = await _task_run_names(detail["flow_run_id"])
        if "step-0 ask_name" in names and "wait-for-reply-1" in names:
            break
        await asyncio.sleep(0.2)
    assert "step-0 ask_name" in names, names
    assert "wait-for-reply-1" in names, names
