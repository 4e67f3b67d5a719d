"""``parley.campaign.installation.SecretNames`` over Prefect's blocks API: which of a
campaign's ``{secret.x}`` have no Secret block, asked at publish time.

One ``GET /block_types/slug/secret/block_documents/name/{name}`` per name with
``include_secrets=False``: the answer says the block exists without carrying its value.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from prefect.client.orchestration import PrefectClient, get_client
from prefect.exceptions import ObjectNotFound

from parley.campaign.installation import SecretStoreUnreachable
from prefect_adapter.client import unreachable

SECRET_BLOCK_TYPE = "secret"
LOOKUP_SECONDS = 10.0
"""A Prefect that does not answer in this long counts as unreachable: the publish goes on."""


class PrefectSecretNames:
    """A client of its own per call (publishing is rare; the CLI has no shared client)."""

    async def missing(self, names: Sequence[str]) -> list[str]:
        try:
            async with asyncio.timeout(LOOKUP_SECONDS), get_client() as client:
                return [name for name in names if not await _exists(client, name)]
        except Exception as exc:
            if unreachable(exc):
                raise SecretStoreUnreachable(f"the Prefect API is unreachable ({exc!r})") from exc
            raise


async def _exists(client: PrefectClient, name: str) -> bool:
    try:
        await client.read_block_document_by_name(name, SECRET_BLOCK_TYPE, include_secrets=False)
    except ObjectNotFound:
        return False
    return True
