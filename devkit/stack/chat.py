"""``parley chat``: be the contact. Type messages into a running ``parley dev`` stack.

Each line goes to the real webhook as a signed WhatsApp payload (exactly what Meta would send);
the bot's answers are read where the Cloud API stand-in received them. When the bot offers reply
buttons, typing a button's number or title taps it. ``/quit`` (or Ctrl-D) leaves.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
from rich.console import Console
from rich.markup import escape

from devkit.fakes.whatsapp_payloads import build_button_reply_payload, build_text_message_payload
from parley.channels.base import JSONDict
from parley.channels.whatsapp.wire import SIGNATURE_HEADER, sign
from parley.settings import Settings

console = Console()
QUIET_SECONDS = 1.5  # after the last answer, wait this long for more before prompting again
ANSWER_TIMEOUT = 30.0


@dataclass
class ChatSession:
    settings: Settings
    phone: str
    name: str = "You"
    _seen: int = 0
    _buttons: list[tuple[str, str]] = field(default_factory=list)
    _last_wamid: str = "wamid.unknown"

    @property
    def fake_url(self) -> str:
        parts = urlsplit(self.settings.whatsapp_api_url)
        return f"{parts.scheme}://{parts.netloc}"

    def say(self, line: str) -> list[JSONDict]:
        """Send one line (a tap if it names a button) and return the bot's answers."""
        self._post(self._payload_for(line.strip()))
        return self.wait_for_answers()

    def _payload_for(self, line: str) -> JSONDict:
        button = self._button_named(line)
        common: dict[str, Any] = {
            "phone_number_id": self.settings.whatsapp_phone_number_id,
            "from_phone": self.phone,
            "contact_name": self.name,
        }
        if button is None:
            return build_text_message_payload(text=line, **common)
        return build_button_reply_payload(
            reply_id=button[0], title=button[1], context_message_id=self._last_wamid, **common
        )

    def _button_named(self, line: str) -> tuple[str, str] | None:
        if line.isdigit() and 1 <= int(line) <= len(self._buttons):
            return self._buttons[int(line) - 1]
        folded = line.casefold()
        return next((b for b in self._buttons if b[1].casefold() == folded), None)

    def _post(self, payload: JSONDict) -> None:
        raw = json.dumps(payload).encode()
        secret = self.settings.whatsapp_app_secret.get_secret_value()
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(raw, secret)}
        url = f"{self.settings.webhook_url}/webhooks/whatsapp"
        httpx.post(url, content=raw, headers=headers, timeout=10).raise_for_status()

    def wait_for_answers(self, timeout: float = ANSWER_TIMEOUT) -> list[JSONDict]:
        """Answers arrive one by one (a resumed run takes a moment): collect until quiet."""
        answers: list[JSONDict] = []
        deadline = time.monotonic() + timeout
        quiet_until = deadline
        while time.monotonic() < min(deadline, quiet_until):
            new = self._new_messages()
            if new:
                answers.extend(new)
                quiet_until = time.monotonic() + QUIET_SECONDS
            time.sleep(0.1)
        return answers

    def _new_messages(self) -> list[JSONDict]:
        received = httpx.get(f"{self.fake_url}/_fake/messages", timeout=5).json()
        mine = [m for m in received if m.get("to") == self.phone]
        new, self._seen = mine[self._seen :], len(mine)
        for message in new:
            self._remember(message)
        return new

    def _remember(self, message: JSONDict) -> None:
        self._last_wamid = str(message.get("_wamid", self._last_wamid))
        buttons = message.get("interactive", {}).get("action", {}).get("buttons", [])
        self._buttons = [(b["reply"]["id"], b["reply"]["title"]) for b in buttons]


def text_of(message: JSONDict) -> str:
    if message.get("type") == "interactive":
        body = str(message["interactive"]["body"]["text"])
        buttons = message["interactive"]["action"]["buttons"]
        labels = "  ".join(f"[{i}] {b['reply']['title']}" for i, b in enumerate(buttons, 1))
        return f"{body}\n      {labels}"
    return str(message.get("text", {}).get("body", f"<{message.get('type')}>"))


def run_chat(settings: Settings, phone: str | None, read_line: Callable[[str], str] = input) -> int:
    session = ChatSession(settings, phone or f"3460{secrets.randbelow(10**7):07d}")
    console.print(
        f"[dim]chatting as {session.phone} with {settings.webhook_url}; type /quit to leave[/]"
    )
    while True:
        try:
            line = read_line("you> ")
        except (EOFError, KeyboardInterrupt):
            return 0
        if line.strip() in ("/quit", "/exit"):
            return 0
        if not line.strip():
            continue
        try:
            answers = session.say(line)
        except httpx.HTTPError as exc:
            console.print(f"[red]{exc}: is `parley dev` running?[/]")
            continue
        for message in answers:
            console.print(f"[cyan]bot>[/] {escape(text_of(message))}")
        if not answers:
            console.print("[dim](no answer yet)[/]")
