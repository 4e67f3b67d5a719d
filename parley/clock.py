"""Time, as every part of Parley sees it: the flow, the dispatcher and the storage.

Production uses the system clock. A **driven clock** (``PARLEY_CLOCK_FILE``) adds an offset read
from a file every process on the machine shares, so a test — or an operator rehearsing a
campaign — moves time for the worker, the dispatcher and the webhook at once: a conversation
that waits 3 days resumes once the offset passes 3 days, never by sleeping. Only "now" moves;
how long the processes themselves wait between polls does not.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware (UTC)."""


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class DrivenClock:
    """The system clock plus an offset in seconds kept in ``path`` (a float, as text).

    The file is re-read only when it changes, so asking for the time stays cheap; a missing or
    unreadable file means no offset.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._offset = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset()

    def offset(self) -> timedelta:
        try:
            stat = os.stat(self.path)
        except OSError:
            return timedelta(0)
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            self._offset = _read_offset(self.path)
            self._stamp = stamp
        return self._offset

    def advance(self, by: timedelta) -> datetime:
        """Move every process's time forward; returns the new now."""
        self.set_offset(self.offset() + by)
        return self.now()

    def set_offset(self, offset: timedelta) -> None:
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(f"{offset.total_seconds():.6f}")
        temporary.replace(self.path)  # atomic: readers see the old or the new offset


def _read_offset(path: Path) -> timedelta:
    try:
        return timedelta(seconds=float(path.read_text().strip() or 0))
    except (OSError, ValueError):
        return timedelta(0)


def clock_from(path: str | Path | None) -> Clock:
    return DrivenClock(Path(path)) if path else SystemClock()
