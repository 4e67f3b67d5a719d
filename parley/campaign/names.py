"""Constrained strings shared by the campaign model and its templates.

Variable names are restricted to identifiers because they must be writable as ``{name}`` in a
template; anything looser could never be referenced and would only hide a typo.
"""

from __future__ import annotations

import re
from typing import Annotated, Final

from pydantic import AfterValidator

from parley.vocabulary import NODE_ID_MAX_LENGTH

VARIABLE_PATTERN: Final = r"[A-Za-z_][A-Za-z0-9_]*"
ENV_PATTERN: Final = r"[A-Z_][A-Z0-9_]*"
SECRET_PATTERN: Final = r"[a-z0-9]+(?:-[a-z0-9]+)*"

_VARIABLE = re.compile(VARIABLE_PATTERN)
_ENV = re.compile(ENV_PATTERN)
_NODE_ID = re.compile(r"[A-Za-z0-9_-]+")
_SLUG = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


def _check_variable_name(value: str) -> str:
    if not _VARIABLE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid variable name: use letters, digits and '_', "
            "not starting with a digit"
        )
    return value


def _check_node_id(value: str) -> str:
    if not _NODE_ID.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid node id: use letters, digits, '_' and '-'")
    if len(value) > NODE_ID_MAX_LENGTH:
        raise ValueError(
            f"node id {value[:20]!r}... has {len(value)} characters; at most "
            f"{NODE_ID_MAX_LENGTH} can be stored"
        )
    return value


def _check_slug(value: str) -> str:
    if not _SLUG.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid campaign name: use lowercase letters, digits and "
            "single dashes, e.g. 'spring-onboarding'"
        )
    return value


def _check_env_name(value: str) -> str:
    if not _ENV.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid env name: use upper-case letters, digits and '_', "
            "e.g. CRM_URL"
        )
    return value


VariableName = Annotated[str, AfterValidator(_check_variable_name)]
EnvName = Annotated[str, AfterValidator(_check_env_name)]
NodeId = Annotated[str, AfterValidator(_check_node_id)]
Slug = Annotated[str, AfterValidator(_check_slug)]
