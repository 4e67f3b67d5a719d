"""What a newcomer's machine needs to install Parley."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_python_newer_than_3_11_is_not_refused() -> None:
    """CI runs 3.11; nothing is known to break after it, so no upper bound."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11"
