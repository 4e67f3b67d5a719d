"""What every peer's process shares: its command line, Meta's wire format in and out, serving.

The peers verify and parse webhooks with Parley's own pure ``wire`` functions and send the same
Graph API bodies Parley's client sends, so the comparison is about the durable-execution
foundations, not about who parses JSON faster.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import httpx

from parley.channels.base import InboundRole
from parley.channels.whatsapp.wire import SIGNATURE_HEADER, parse_webhook, verify_signature
from parley.errors import InvalidSignature, MalformedPayload

JSONDict = dict[str, Any]


@dataclass(frozen=True)
class PeerArgs:
    port: int
    graph_url: str  # the Cloud API base, e.g. http://127.0.0.1:PORT/v21.0
    access_token: str
    phone_number_id: str
    app_secret: str
    database_url: str
    crm_url: str

    def as_argv(self) -> list[str]:
        return [
            f"--port={self.port}",
            f"--graph-url={self.graph_url}",
            f"--access-token={self.access_token}",
            f"--phone-number-id={self.phone_number_id}",
            f"--app-secret={self.app_secret}",
            f"--database-url={self.database_url}",
            f"--crm-url={self.crm_url}",
        ]

    @property
    def messages_url(self) -> str:
        return f"{self.graph_url}/{self.phone_number_id}/messages"


def parse_peer_args(argv: list[str] | None, description: str) -> tuple[PeerArgs, list[str]]:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--graph-url", required=True)
    parser.add_argument("--access-token", required=True)
    parser.add_argument("--phone-number-id", required=True)
    parser.add_argument("--app-secret", required=True)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--crm-url", default="")
    known, rest = parser.parse_known_args(argv)
    return PeerArgs(**{k.replace("-", "_"): v for k, v in vars(known).items()}), rest


@dataclass(frozen=True)
class Answer:
    """One inbound message a bot reads: who, Meta's id (for de-duplication) and the text."""

    phone: str
    wamid: str
    text: str


class Refused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


def read_answers(raw: bytes, headers: Any, app_secret: str) -> list[Answer]:
    """Verify ``X-Hub-Signature-256`` and return the messages (status callbacks are ignored)."""
    try:
        verify_signature(raw, headers.get(SIGNATURE_HEADER), app_secret)
        batch = parse_webhook(raw)
    except InvalidSignature as exc:
        raise Refused(401, str(exc)) from exc
    except MalformedPayload as exc:
        raise Refused(400, str(exc)) from exc
    return [
        Answer(m.contact_address, m.provider_message_id, m.text or "")
        for m in batch.messages
        if m.role is InboundRole.ANSWER
    ]


def text_body(to: str, text: str) -> JSONDict:
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "text",
        "text": {"body": text, "preview_url": False},
    }


def buttons_body(to: str, text: str, buttons: tuple[tuple[str, str], ...]) -> JSONDict:
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "interactive",
        "interactive": {
            "type": "button",
            "body": {"text": text},
            "action": {
                "buttons": [
                    {"type": "reply", "reply": {"id": bid, "title": title}}
                    for bid, title in buttons
                ]
            },
        },
    }


def graph_headers(access_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {access_token}"}


def check_sent(response: httpx.Response) -> str:
    """Meta's message id, or an error the caller's retry/durability machinery handles."""
    response.raise_for_status()
    return str(response.json()["messages"][0]["id"])


def serve(app: Any, port: int) -> None:
    """uvicorn on loopback; its own SIGTERM handling runs the lifespan shutdown."""
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
