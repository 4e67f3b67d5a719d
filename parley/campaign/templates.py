"""``{name}`` placeholders in campaign texts.

Substitution is a single regex pass so a value that itself contains braces is inserted verbatim
and never re-read as a placeholder: answers come from strangers and must not steer rendering.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from parley.campaign.names import VARIABLE_PATTERN

_TOKEN = re.compile(r"\{\{|\}\}|\{(" + VARIABLE_PATTERN + r")\}|[{}]")


def render(template: str, variables: Mapping[str, object]) -> str:
    """Fill placeholders; a missing variable renders empty because validation already flagged it.

    A brace that is neither an escape (``{{``/``}}``) nor part of a placeholder is kept as written;
    validation reports it too, so rendering never has a reason to raise.
    """

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return match.group(0)[0]
        value = variables.get(name)
        return "" if value is None else str(value)

    return _TOKEN.sub(substitute, template)


def placeholders(template: str) -> list[str]:
    """Variable names the template reads, in order of appearance (repeats included)."""
    return [match.group(1) for match in _TOKEN.finditer(template) if match.group(1)]


def has_stray_braces(template: str) -> bool:
    """True for a brace that is neither escaped nor a placeholder, e.g. a mistyped ``{ name }``."""
    return any(match.group(0) in ("{", "}") for match in _TOKEN.finditer(template))
