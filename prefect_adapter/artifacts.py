"""The conversation's page in the Prefect UI: a markdown artifact (status, what it waits for,
the transcript, the step history) keyed ``conversation-{id}``, published each time its run
suspends, so whoever opens the run sees where it stands while no process holds it.

Each publication is a new version under the same key (the UI shows the latest). Its size is
bounded: the last ``ARTIFACT_MESSAGES`` messages and steps, read with ``LIMIT`` queries, so a
2,000-message conversation costs what a 50-message one does (docs/architecture.md, rule 5).
The contact's address is masked as in run names; message texts are shown as written.
"""

from __future__ import annotations

import asyncio
from uuid import UUID

from prefect.artifacts import acreate_markdown_artifact

from parley.conversation.operator_views import (
    ARTIFACT_MESSAGES,
    conversation_markdown,
    show_conversation,
)
from prefect_adapter.composition import get_runtime

PUBLISH_TIMEOUT_SECONDS = 10.0
"""The run's row already says suspended when this runs: a slow Prefect API must not hold the
run back from actually suspending for long (webhook resumes retry until it has)."""


def artifact_key(conversation_id: int) -> str:
    """Artifact keys take lowercase letters, digits and dashes only."""
    return f"conversation-{conversation_id}"


async def publish_conversation_artifact(conversation_id: int) -> UUID:
    rt = await get_runtime()
    detail = await show_conversation(rt.db, conversation_id, last_messages=ARTIFACT_MESSAGES)
    markdown = conversation_markdown(detail, limit=ARTIFACT_MESSAGES)
    description = (
        f"Conversation {conversation_id}: {detail['status']} at {detail['current_node']} "
        f"(step {detail['step']}), {detail['messages_total']} messages"
    )
    return await asyncio.wait_for(
        acreate_markdown_artifact(
            key=artifact_key(conversation_id), markdown=markdown, description=description
        ),
        PUBLISH_TIMEOUT_SECONDS,
    )
