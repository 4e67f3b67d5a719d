"""``retry`` of a failed conversation over the REST API, on a real stack: the conversation gets
a flow run of its own, which runs at once — not its failed run back (that idempotency key
is spent), which would leave it waiting a lease for the dispatcher."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.conftest import API_KEY, E2EStack

pytestmark = pytest.mark.e2e

ERROR_TEXT = "Sorry, something went wrong on our side. We'll get back to you shortly."


async def test_a_failed_conversation_retried_over_the_api_runs_a_new_run_at_once(
    pg_stack: E2EStack,
) -> None:
    user = pg_stack.user("Retry")
    await user.say("Hi")
    await user.say("Ada")
    email = f"retry-{user.phone}@example.com"
    await user.say(email)
    pg_stack.crm.fail_next(400)  # the CRM refuses: the http node fails for good
    assert await user.press("pro", "Pro") == [ERROR_TEXT]
    failed = await pg_stack.wait_for_status(user, "failed")
    failed_run = failed["flow_run_id"]
    assert failed_run

    base = pg_stack.webhook_url.removesuffix("/webhooks/whatsapp")
    async with httpx.AsyncClient(timeout=60) as client:
        response = await client.post(
            f"{base}/api/conversations/{failed['id']}/retry",
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
    assert response.status_code == 200, response.text
    assert response.json()["run"] == "start" and response.json()["run_reached"] is True
    new_run = (await pg_stack.conversation_of(user))["flow_run_id"]
    assert new_run not in (None, failed_run)  # its own run, not the failed one back

    assert await user.wait_for_bot(1, timeout=60) == ["Thanks Ada, you're on Pro."]
    done = await pg_stack.wait_for_status(user, "completed")
    assert done["flow_run_id"] == new_run  # the run the API started finished it
    mine = [r["answered"] for r in pg_stack.crm.requests if (r["json"] or {}).get("email") == email]
    assert mine == [400, 201]  # refused once, then registered by the retry
