"""What the fake LinkedIn gateway checks of a file before sending it, as a real one would: it
downloads the URL (over real HTTP), and refuses a file LinkedIn would not take — too large, of a
type LinkedIn does not send, a voice message longer than a minute — and a like of a URL that is
no LinkedIn post.

A voice message's length is measured for WAV files (``wave``, standard library); other audio
types are taken at their word, as decoding them would need a codec the fake does not carry.
"""

from __future__ import annotations

import contextlib
import io
import re
import urllib.error
import urllib.request
import wave
from dataclasses import dataclass
from typing import Final

from parley.channels.base import JSONDict
from parley.channels.linkedin.client import (
    ATTACHMENT_TYPES,
    MAX_ATTACHMENT_BYTES,
    MAX_VOICE_SECONDS,
    VOICE_TYPES,
    file_name,
)

DOWNLOAD_TIMEOUT: Final = 5.0
POST_URL: Final = re.compile(
    r"^https://(www\.)?linkedin\.com/"
    r"(posts/[^/?#\s]+|feed/update/urn:li:(activity|share|ugcPost):\d+)/?([?#].*)?$"
)
MEDIA_ENDPOINTS: Final = frozenset({"attachments", "voice-messages"})


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    type: str
    message: str


def like_problem(body: JSONDict) -> Refusal | None:
    post = str(body.get("post") or "")
    if POST_URL.match(post):
        return None
    return Refusal(422, "not_a_post", f"{post!r} is not the URL of a LinkedIn post")


def media_problem(
    endpoint: str, body: JSONDict, max_bytes: int = MAX_ATTACHMENT_BYTES
) -> Refusal | None:
    """Why LinkedIn would not send this file, or None; downloads it."""
    voice = endpoint == "voice-messages"
    kind = "voice_rejected" if voice else "attachment_rejected"
    url = str(body.get("url") or "")
    extension = file_name(url).rsplit(".", 1)[-1].lower() if "." in file_name(url) else ""
    allowed = VOICE_TYPES if voice else ATTACHMENT_TYPES
    if extension not in allowed:
        what = "voice message" if voice else "attachment"
        return Refusal(
            415,
            kind,
            f"unsupported {what} type {extension or '(none)'!r}; "
            f"LinkedIn takes {', '.join(sorted(allowed))}",
        )
    content = _download(url, max_bytes)
    if content is None:
        return Refusal(422, kind, f"could not download {url!r}")
    if len(content) > max_bytes:
        return Refusal(413, kind, f"the file is larger than {max_bytes} bytes")
    if voice and extension == "wav":
        seconds = wav_seconds(content)
        if seconds is None:
            return Refusal(415, kind, "the file is not a readable WAV file")
        if seconds > MAX_VOICE_SECONDS:
            return Refusal(
                413,
                kind,
                f"a voice message lasts at most {MAX_VOICE_SECONDS} s, got {seconds:.1f} s",
            )
    return None


def wav_seconds(content: bytes) -> float | None:
    with contextlib.suppress(wave.Error, EOFError), wave.open(io.BytesIO(content)) as audio:
        frames, rate = int(audio.getnframes()), int(audio.getframerate() or 1)
        return frames / rate
    return None


def _download(url: str, max_bytes: int) -> bytes | None:
    """At most one byte more than allowed: enough to know it is too large."""
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response:
            return bytes(response.read(max_bytes + 1))
    except (urllib.error.URLError, OSError, ValueError):
        return None
