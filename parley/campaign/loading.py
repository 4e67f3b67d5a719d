"""Reading campaign YAML: from a file, from text, and the digest that versions it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError

from parley.campaign.model import Campaign
from parley.campaign.schema import build_campaign
from parley.errors import CampaignInvalid, NotFound

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _CampaignLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys.

    PyYAML keeps the last of two equal keys, so a second ``nodes:`` section would silently drop
    the first half of a graph.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            key = (key_node.tag, key_node.value)
            if key in seen:
                raise ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key_node.value!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_campaign(path: str | Path) -> Campaign:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotFound(f"campaign file not found: {path}") from None
    return parse_campaign(text, source=str(path))


def parse_campaign(text: str, *, source: str = "<string>") -> Campaign:
    """``source`` names the text in syntax-error messages, typically the file path."""
    return build_campaign(_read_document(text, source))


def campaign_digest(text: str) -> str:
    """SHA-256 of the campaign's content, blind to comments, key order and formatting.

    Editing a comment therefore does not make a new campaign version. The text must be a valid
    campaign (else ``CampaignInvalid``): a digest of a broken graph could never be run anyway.
    """
    document = _read_document(text, "<string>")
    build_campaign(document)
    canonical = json.dumps(document, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _read_document(text: str, source: str) -> object:
    try:
        return yaml.load(text, Loader=_CampaignLoader)  # a SafeLoader: no arbitrary objects
    except yaml.MarkedYAMLError as error:
        raise CampaignInvalid([(None, _describe_yaml_error(error, source))]) from None
    except yaml.YAMLError as error:
        raise CampaignInvalid([(None, f"{source}: not valid YAML: {error}")]) from None


def _describe_yaml_error(error: yaml.MarkedYAMLError, source: str) -> str:
    problem = error.problem or str(error)
    mark = error.problem_mark or error.context_mark
    if mark is None:
        return f"{source}: YAML syntax error: {problem}"
    return (
        f"{source}: YAML syntax error at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    )
