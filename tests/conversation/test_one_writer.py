"""``parley.conversation.row`` is the one writer of the conversation row.

Read from the source (``ast``), not from a run: every assignment to a conversation column and
every ``update(Conversation)`` outside ``parley/conversation/row.py`` fails this test, named by
file and line. A column only the conversation has (``lease_until``, ``wake_requested_at``…)
counts on any object; one other tables share (``status``, ``attempts``, ``updated_at``…) counts
on an object whose name says it is a conversation (``row``, ``conv``, ``conversation``…).
Database migrations and tests are not product code and are not read.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from parley.db.models import Base, Conversation

ROOT = Path(__file__).resolve().parents[2]
ALLOWED = {Path("parley/conversation/row.py")}
READ = ("parley", "tasks", "flows", "webhook", "deployments", "prefect_adapter", "devkit", "bench")
NOT_READ = (Path("parley/db/migrations"),)

COLUMNS = frozenset(Conversation.__table__.columns.keys())
SHARED = frozenset(
    column.key
    for table in Base.metadata.tables.values()
    if table is not Conversation.__table__
    for column in table.columns
)
CONVERSATION_ONLY = COLUMNS - SHARED


def _names_a_conversation(node: ast.expr) -> bool:
    if isinstance(node, ast.Attribute):  # self.row, change.conversation
        return _names_a_conversation(ast.Name(node.attr))
    if not isinstance(node, ast.Name):
        return False
    name = node.id.lower()
    return name in {"row", "conv", "c"} or "conversation" in name or name.startswith("conv_")


def _targets(node: ast.AST) -> Iterator[ast.expr]:
    if isinstance(node, ast.Assign):
        for target in node.targets:
            yield from _flattened(target)
    elif isinstance(node, ast.AugAssign | ast.AnnAssign):
        yield from _flattened(node.target)


def _flattened(target: ast.expr) -> Iterator[ast.expr]:
    if isinstance(target, ast.Tuple | ast.List):
        for element in target.elts:
            yield from _flattened(element)
    elif isinstance(target, ast.Starred):
        yield from _flattened(target.value)
    else:
        yield target


def _writes_column(target: ast.expr) -> str | None:
    if not isinstance(target, ast.Attribute) or target.attr not in COLUMNS:
        return None
    if target.attr in CONVERSATION_ONLY or _names_a_conversation(target.value):
        return target.attr
    return None


def _is_conversation(node: ast.expr) -> bool:
    return (isinstance(node, ast.Name) and node.id == "Conversation") or (
        isinstance(node, ast.Attribute) and node.attr == "Conversation"
    )


def writes_of(source: str, filename: str) -> list[str]:
    """Every write of a conversation column in ``source``: ``file:line: what``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        for target in _targets(node):
            if column := _writes_column(target):
                found.append(f"{filename}:{target.lineno}: assigns {column}")
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        if called == "update" and node.args and _is_conversation(node.args[0]):
            found.append(f"{filename}:{node.lineno}: update(Conversation)")
        if (
            called == "setattr"
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value in COLUMNS
            and (node.args[1].value in CONVERSATION_ONLY or _names_a_conversation(node.args[0]))
        ):
            found.append(f"{filename}:{node.lineno}: setattr {node.args[1].value}")
    return found


def _product_sources() -> Iterator[Path]:
    for top in READ:
        for path in sorted((ROOT / top).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if relative in ALLOWED or any(relative.is_relative_to(p) for p in NOT_READ):
                continue
            yield relative


def test_only_the_row_module_writes_the_conversation_row() -> None:
    found = [
        write
        for relative in _product_sources()
        for write in writes_of((ROOT / relative).read_text(), str(relative))
    ]
    assert not found, (
        "the conversation row is written only by parley/conversation/row.py; add a verb "
        "there and call it:\n" + "\n".join(found)
    )


def test_the_rule_sees_each_kind_of_write() -> None:
    """The reader is no blind eye: each way of writing a column is found, a shared column only
    on a conversation, and other tables' columns are left alone."""
    source = "\n".join(
        [
            "row.status = Status.RUNNING",
            "conv.flow_run_id, conv.handed_over_at = run_id, now",
            "row.step += 1",
            "anything.wake_requested_at = now",
            "conversation.variables: dict = {}",
            "setattr(row, 'lease_until', None)",
            "stmt = update(Conversation).values(status='failed')",
            "action.status = 'queued'",
            "message.updated_at = now",
            "row.unknown_attribute = 1",
        ]
    )
    assert writes_of(source, "x.py") == [
        "x.py:1: assigns status",
        "x.py:2: assigns flow_run_id",
        "x.py:2: assigns handed_over_at",
        "x.py:3: assigns step",
        "x.py:4: assigns wake_requested_at",
        "x.py:5: assigns variables",
        "x.py:6: setattr lease_until",
        "x.py:7: update(Conversation)",
    ]
    assert {"lease_until", "wake_requested_at", "flow_run_id"} <= CONVERSATION_ONLY
    assert {"status", "attempts", "updated_at"} <= SHARED
