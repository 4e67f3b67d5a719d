"""Placeholders in campaign texts: ``{name}`` (a conversation variable), ``{env.NAME}`` (a value
the campaign declares under ``env:``, overridden by the process environment) and
``{secret.name}`` (a Prefect Secret block, only in http headers, resolved at send time).

Substitution is a single regex pass so a value that itself contains braces is inserted verbatim
and never re-read as a placeholder: answers come from strangers and must not steer rendering.
In URLs, variables are percent-encoded: an answer can never change a host or a path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from urllib.parse import quote

from parley.campaign.names import ENV_PATTERN, SECRET_PATTERN, VARIABLE_PATTERN

_TOKEN = re.compile(
    r"\{\{|\}\}"
    r"|\{(" + VARIABLE_PATTERN + r")\}"
    r"|\{env\.(" + ENV_PATTERN + r")\}"
    r"|\{secret\.(" + SECRET_PATTERN + r")\}"
    r"|[{}]"
)


def render(
    template: str, variables: Mapping[str, object], env: Mapping[str, str] | None = None
) -> str:
    """Fill placeholders; a missing variable renders empty because validation already flagged it.

    A brace that is neither an escape (``{{``/``}}``) nor part of a placeholder is kept as written;
    validation reports it too, so rendering never has a reason to raise. Secrets are left as
    written: only ``render_secrets`` at send time fills them.
    """
    return _substitute(template, variables, env or {}, lambda value: value)


def render_url(
    template: str, variables: Mapping[str, object], env: Mapping[str, str] | None = None
) -> str:
    """Like ``render``, but every variable is percent-encoded (``/``, ``?``, ``#``, ``@``
    included); ``env`` values are configuration and go in as written."""
    return _substitute(template, variables, env or {}, lambda value: quote(value, safe=""))


def render_secrets(template: str, secrets: Mapping[str, str]) -> str:
    def substitute(match: re.Match[str]) -> str:
        name = match.group(3)
        return secrets.get(name, "") if name else match.group(0)

    return _TOKEN.sub(substitute, template)


def _substitute(
    template: str,
    variables: Mapping[str, object],
    env: Mapping[str, str],
    encode: Callable[[str], str],
) -> str:
    def substitute(match: re.Match[str]) -> str:
        variable, env_name = match.group(1), match.group(2)
        if variable is not None:
            value = variables.get(variable)
            return "" if value is None else encode(str(value))
        if env_name is not None:
            return env.get(env_name, "")
        if match.group(3) is not None:
            return match.group(0)
        return match.group(0)[0]

    return _TOKEN.sub(substitute, template)


def placeholders(template: str) -> list[str]:
    """Variable names the template reads, in order of appearance (repeats included)."""
    return [match.group(1) for match in _TOKEN.finditer(template) if match.group(1)]


def env_names(template: str) -> list[str]:
    return [match.group(2) for match in _TOKEN.finditer(template) if match.group(2)]


def secret_names(template: str) -> list[str]:
    return [match.group(3) for match in _TOKEN.finditer(template) if match.group(3)]


def has_stray_braces(template: str) -> bool:
    """True for a brace that is neither escaped nor a placeholder, e.g. a mistyped ``{ name }``."""
    return any(match.group(0) in ("{", "}") for match in _TOKEN.finditer(template))
