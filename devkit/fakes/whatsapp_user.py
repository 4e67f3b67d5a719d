"""A simulated WhatsApp user: writes to the real webhook in Meta's signed wire format and
reads the bot's answers where Meta would deliver them (the fake Graph API).

The demo's three users and the end-to-end tests are built from this, so both exercise the
same path a real phone does: signature check, parsing, inbox, wake-up, flow, send.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from devkit.fakes.whatsapp_fake import FakeWhatsAppAPI
from devkit.fakes.whatsapp_payloads import build_button_reply_payload, build_text_message_payload
from parley.channels.whatsapp.wire import sign


@dataclass
class Turn:
    said: str
    answers: list[str]
    latency: float


@dataclass
class WhatsAppUser:
    phone: str
    name: str
    webhook_url: str
    app_secret: str
    phone_number_id: str
    fake: FakeWhatsAppAPI
    turns: list[Turn] = field(default_factory=list)
    _seen: int = 0

    async def post(self, payload: dict[str, Any]) -> httpx.Response:
        raw = json.dumps(payload).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Hub-Signature-256": sign(raw, self.app_secret),
        }
        async with httpx.AsyncClient(timeout=30) as client:
            response = await client.post(self.webhook_url, content=raw, headers=headers)
        response.raise_for_status()
        return response

    async def say(self, text: str, *, expect: int = 1, timeout: float = 60) -> list[str]:
        """Send ``text`` and wait for ``expect`` new bot messages (0: don't wait)."""
        payload = build_text_message_payload(
            phone_number_id=self.phone_number_id,
            from_phone=self.phone,
            text=text,
            contact_name=self.name,
        )
        return await self._exchange(text, payload, expect, timeout)

    async def press(
        self, reply_id: str, title: str, *, expect: int = 1, timeout: float = 60
    ) -> list[str]:
        """Tap an interactive reply button of the bot's last message."""
        last = self._last_bot_wamid()
        payload = build_button_reply_payload(
            phone_number_id=self.phone_number_id,
            from_phone=self.phone,
            reply_id=reply_id,
            title=title,
            context_message_id=last,
            contact_name=self.name,
        )
        return await self._exchange(f"[{title}]", payload, expect, timeout)

    async def _exchange(
        self, said: str, payload: dict[str, Any], expect: int, timeout: float
    ) -> list[str]:
        started = time.perf_counter()
        await self.post(payload)
        answers = await self.wait_for_bot(expect, timeout) if expect else []
        self.turns.append(Turn(said, answers, time.perf_counter() - started))
        return answers

    async def wait_for_bot(self, count: int, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            texts = self.fake.texts_to(self.phone)
            if len(texts) >= self._seen + count:
                new = texts[self._seen : self._seen + count]
                self._seen += count
                return new
            await asyncio.sleep(0.01)
        texts = self.fake.texts_to(self.phone)
        raise TimeoutError(
            f"{self.phone}: expected {count} bot message(s) after {texts[: self._seen]!r}, "
            f"got {texts[self._seen :]!r} within {timeout}s"
        )

    def _last_bot_wamid(self) -> str:
        sent = [m for m in self.fake.received if m.get("to") == self.phone]
        return str(sent[-1]["_wamid"]) if sent else "wamid.unknown"
