"""The ``http`` node's call: POST a few variables as JSON to a URL the campaign names.

The step's idempotency key travels as ``Idempotency-Key`` so a receiver can drop the repeat a
crash-and-replay may cause; 5xx and timeouts are transient (the task retries), 4xx is final.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from parley.errors import PermanentChannelError, TransientChannelError

MAX_STORED_BODY = 4096


async def post_json(
    url: str,
    body: dict[str, Any],
    *,
    idempotency_key: str,
    timeout: float,
    headers: dict[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> dict[str, Any]:
    headers = {**(headers or {}), "Idempotency-Key": idempotency_key, "User-Agent": "parley"}
    try:
        async with httpx.AsyncClient(timeout=timeout, transport=transport) as client:
            response = await client.post(url, json=body, headers=headers)
    except (httpx.TimeoutException, httpx.TransportError) as exc:
        raise TransientChannelError(f"POST {url} failed: {exc!r}") from exc
    if response.status_code >= 500 or response.status_code == 429:
        raise TransientChannelError(
            f"POST {url} answered {response.status_code}", http_status=response.status_code
        )
    if response.status_code >= 400:
        raise PermanentChannelError(
            f"POST {url} answered {response.status_code}: {response.text[:200]}",
            http_status=response.status_code,
        )
    return {"status": response.status_code, "body": _small_body(response)}


def _small_body(response: httpx.Response) -> Any:
    """Keep the stored result small (docs/architecture.md, rule 5): JSON bodies up to 4 KiB,
    otherwise nothing."""
    if len(response.content) > MAX_STORED_BODY:
        return None
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
