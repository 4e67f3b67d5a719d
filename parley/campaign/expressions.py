"""Small, safe expressions for ``set: {score: {expr: "score + 1"}}``.

An expression is read with ``ast`` and walked by hand; nothing is ever handed to ``eval``. Only
variable names, literals (numbers, text, True/False/None), arithmetic (``+ - * / // %``), unary
minus, comparisons, ``and``/``or``/``not``, parentheses and calls to a fixed list of functions
are allowed: no attributes, no subscripts, no comprehensions, no lambdas. Campaign files are
written by staff, but the values they compute come from strangers, so a bad value must end in an
``ExpressionError`` (which the planner turns into the node's ``when: error``), never in anything
worse.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from parley.errors import ParleyError

MAX_SOURCE_LENGTH: Final = 500
MAX_TEXT_LENGTH: Final = 100_000
"""No expression may build a longer text: ``"x" * 10**9`` must not exhaust a worker's memory."""


class ExpressionError(ParleyError):
    """An expression failed on the values it was given: unknown variable, wrong type, ``/ 0``."""


def _text_only(name: str, method: Callable[[str], str]) -> Callable[[object], str]:
    def call(value: object) -> str:
        if not isinstance(value, str):
            raise ExpressionError(f"{name}() needs text, got {type(value).__name__}")
        return method(value)

    return call


FUNCTIONS: Final[Mapping[str, Callable[..., Any]]] = {
    "len": len,
    "lower": _text_only("lower", str.lower),
    "upper": _text_only("upper", str.upper),
    "int": int,
    "float": float,
    "str": str,
    "round": round,
}
"""What an expression may call, by name. ``lower(name)`` rather than ``name.lower()``: no
attribute access at all is simpler to prove safe than some."""

_BINARY: Final[Mapping[type[ast.operator], Callable[[Any, Any], Any]]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_COMPARE: Final[Mapping[type[ast.cmpop], Callable[[Any, Any], bool]]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
_UNARY: Final[Mapping[type[ast.unaryop], Callable[[Any], Any]]] = {
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
    ast.Not: operator.not_,
}
_LITERALS: Final = (bool, int, float, str, type(None))
_PLUMBING: Final = (ast.Expression, ast.Load, ast.And, ast.Or, *_BINARY, *_COMPARE, *_UNARY)
_DESCRIPTIONS: Final[Mapping[type[ast.AST], str]] = {
    ast.Attribute: "attribute access (write lower(x), not x.lower())",
    ast.Subscript: "subscripts ([...])",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions",
    ast.Lambda: "lambdas",
    ast.Pow: "'**'",
    ast.IfExp: "'... if ... else ...'",
    ast.NamedExpr: "':='",
    ast.JoinedStr: "f-strings",
    ast.List: "lists",
    ast.Tuple: "tuples",
    ast.Dict: "dicts",
    ast.Set: "sets",
    ast.In: "'in'",
    ast.NotIn: "'not in'",
    ast.Is: "'is'",
    ast.IsNot: "'is not'",
}


@dataclass(frozen=True)
class Expression:
    """A checked expression: ``parse_expression`` refused anything outside the small language."""

    source: str
    names: frozenset[str]
    """The variables it reads: validation checks each is set before the node runs."""
    tree: ast.Expression = field(compare=False, repr=False)

    def evaluate(self, variables: Mapping[str, object]) -> object:
        """The value, or ``ExpressionError`` saying what went wrong with which value."""
        try:
            return _Evaluator(variables).value(self.tree.body)
        except ExpressionError:
            raise
        except (ArithmeticError, TypeError, ValueError, RecursionError, MemoryError) as error:
            raise ExpressionError(f"{self.source!r}: {_reason(error)}") from None


def parse_expression(source: object) -> Expression:
    """Check ``source`` against the allowed language; ``ValueError`` names the first problem."""
    if not isinstance(source, str):
        raise ValueError(f'an expression is text, e.g. "score + 1", not {source!r}')
    text = source.strip()
    if not text:
        raise ValueError("the expression is empty")
    if len(text) > MAX_SOURCE_LENGTH:
        raise ValueError(f"the expression is longer than {MAX_SOURCE_LENGTH} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
        detail = error.msg if isinstance(error, SyntaxError) else "too deeply nested"
        raise ValueError(f"{text!r} is not a valid expression: {detail}") from None
    names = frozenset(_check_tree(tree, text))
    return Expression(text, names, tree)


def _check_tree(tree: ast.Expression, text: str) -> Iterator[str]:
    called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            yield from _check_name(node, text, called=id(node) in called)
        elif isinstance(node, ast.Call):
            _check_call(node, text)
        elif isinstance(node, ast.Constant):
            if not isinstance(node.value, _LITERALS):
                raise ValueError(f"{text!r}: {node.value!r} is not an allowed literal")
        elif not isinstance(node, (*_PLUMBING, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare)):
            raise ValueError(f"{text!r}: expressions may not use {_describe(node)}")


def _check_name(node: ast.Name, text: str, *, called: bool) -> Iterator[str]:
    if called:
        return  # a function's name; the call itself is checked by _check_call
    if node.id in FUNCTIONS:
        raise ValueError(f"{text!r}: {node.id} is a function: call it, e.g. {node.id}(x)")
    yield node.id


def _check_call(node: ast.Call, text: str) -> None:
    if not isinstance(node.func, ast.Name):
        raise ValueError(f"{text!r}: expressions may not use {_describe(node.func)}")
    name = node.func.id
    if name not in FUNCTIONS:
        allowed = ", ".join(FUNCTIONS)
        shown = ast.unparse(node.func)
        raise ValueError(f"{text!r}: unknown function {shown!r}; expressions may call {allowed}")
    if node.keywords or any(isinstance(arg, ast.Starred) for arg in node.args):
        raise ValueError(f"{text!r}: {name}() takes plain arguments, no keywords or '*'")


def _describe(node: ast.AST) -> str:
    return _DESCRIPTIONS.get(type(node), f"'{type(node).__name__}' constructs")


class _Evaluator:
    def __init__(self, variables: Mapping[str, object]) -> None:
        self._variables = variables

    def value(self, node: ast.expr) -> Any:
        method = getattr(self, f"_{type(node).__name__.lower()}", None)
        if method is None:  # parse_expression let nothing else through
            raise ExpressionError(f"unsupported expression {ast.unparse(node)!r}")
        return method(node)

    def _constant(self, node: ast.Constant) -> Any:
        return node.value

    def _name(self, node: ast.Name) -> Any:
        if node.id not in self._variables:
            raise ExpressionError(f"variable {node.id!r} is not set")
        return self._variables[node.id]

    def _binop(self, node: ast.BinOp) -> Any:
        left, right = self.value(node.left), self.value(node.right)
        _refuse_unsafe(node.op, left, right)
        return _BINARY[type(node.op)](left, right)

    def _unaryop(self, node: ast.UnaryOp) -> Any:
        return _UNARY[type(node.op)](self.value(node.operand))

    def _boolop(self, node: ast.BoolOp) -> Any:
        result: Any = None
        for operand in node.values:
            result = self.value(operand)
            if bool(result) is isinstance(node.op, ast.Or):
                return result
        return result

    def _compare(self, node: ast.Compare) -> bool:
        left = self.value(node.left)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = self.value(comparator)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True

    def _call(self, node: ast.Call) -> Any:
        assert isinstance(node.func, ast.Name)
        args = [self.value(arg) for arg in node.args]
        if node.func.id == "str" and args and len(str(args[0])) > MAX_TEXT_LENGTH:
            raise ExpressionError(f"str() would build more than {MAX_TEXT_LENGTH} characters")
        return FUNCTIONS[node.func.id](*args)


def _refuse_unsafe(op: ast.operator, left: object, right: object) -> None:
    if isinstance(op, ast.Mod) and isinstance(left, str):
        # "%999999999d" % 1 would build a gigabyte of spaces: '%' is for numbers only.
        raise ExpressionError("'%' needs numbers, not text")
    if not isinstance(op, (ast.Mult, ast.Add)):
        return
    texts = [value for value in (left, right) if isinstance(value, str | list)]
    counts = [value for value in (left, right) if isinstance(value, int)]
    if isinstance(op, ast.Mult) and len(texts) == 1 and counts:
        size = len(texts[0]) * max(counts[0], 0)
    elif isinstance(op, ast.Add) and len(texts) == 2:
        size = len(texts[0]) + len(texts[1])
    else:
        return
    if size > MAX_TEXT_LENGTH:
        raise ExpressionError(f"the result would be longer than {MAX_TEXT_LENGTH} characters")


def _reason(error: BaseException) -> str:
    if isinstance(error, ZeroDivisionError):
        return "division by zero"
    if isinstance(error, RecursionError | MemoryError):
        return "too deeply nested"
    return str(error)
