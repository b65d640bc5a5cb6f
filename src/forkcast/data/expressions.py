"""Rule expressions of the declaration: small formulas over a row's columns, true where the row is valid.

    workingday == ((weekday >= 1) & (weekday <= 5) & (holiday == 0))
    total == casual + registered
    ~((weekday >= 5) & (WorkDay == 1))

The same expression runs on pandas columns (validation) and on numpy arrays of a request's records (the service),
element by element. Only arithmetic, comparisons, `in (...)` and logic on names and constants are allowed: the
expression is parsed and walked here, never passed to `eval`.
"""

from __future__ import annotations

import ast
import functools
import operator
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np


class ExpressionError(ValueError):
    """The expression cannot be parsed, or uses something a rule may not."""


_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.BitAnd: np.logical_and,  # `&` and `|` are logic here, as in pandas
    ast.BitOr: np.logical_or,
}
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}


@functools.cache
def parse(expression: str) -> ast.expr:
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"cannot parse '{expression}': {exc.msg}") from exc
    _check(tree.body, expression)
    return tree.body


def names(expression: str) -> set[str]:
    """The column names an expression reads."""
    return {node.id for node in ast.walk(parse(expression)) if isinstance(node, ast.Name)}


def evaluate(expression: str, columns: Mapping[str, Any]) -> Any:
    """The expression over `columns` (pandas Series, numpy arrays or lists, all of one length): a boolean per row."""
    return np.asarray(_evaluate(parse(expression), columns), dtype=bool)


def _check(node: ast.AST, expression: str) -> None:
    allowed = (
        ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Compare, ast.Name, ast.Constant, ast.Tuple, ast.List, ast.Load,
        ast.And, ast.Or, ast.Not, ast.Invert, ast.USub, ast.UAdd, ast.In, ast.NotIn, *_BINARY, *_COMPARE,
    )  # fmt: skip
    for child in ast.walk(node):
        if not isinstance(child, allowed):
            raise ExpressionError(
                f"'{expression}' uses {type(child).__name__}: a rule may only use column names, numbers, text, "
                "arithmetic, comparisons, `in (...)` and &, |, ~ (and, or, not)"
            )
    listed = [  # a list of values may only follow `in`, and `in` only a list of constants
        comparator
        for child in ast.walk(node)
        if isinstance(child, ast.Compare)
        for op, comparator in zip(child.ops, child.comparators, strict=True)
        if isinstance(op, ast.In | ast.NotIn)
    ]
    lists = [child for child in ast.walk(node) if isinstance(child, ast.Tuple | ast.List)]
    constant = all(isinstance(element, ast.Constant) for values in lists for element in values.elts)
    if not constant or len(lists) != len(listed) or not all(isinstance(c, ast.Tuple | ast.List) for c in listed):
        raise ExpressionError(
            f"'{expression}': `in` takes a list of constants, e.g. x in (1, 2), and only `in` does (& and | bind "
            "before comparisons: write (x in (1, 2)) & (y > 0))"
        )


def _evaluate(node: ast.expr, columns: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Name):
        values = columns[node.id]
        return np.asarray(values) if isinstance(values, list | tuple) else values
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.BoolOp):
        combine = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
        return functools.reduce(combine, (_evaluate(value, columns) for value in node.values))
    if isinstance(node, ast.UnaryOp):
        return _unary(node.op, _evaluate(node.operand, columns))
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_evaluate(node.left, columns), _evaluate(node.right, columns))
    assert isinstance(node, ast.Compare)  # _check lets nothing else through
    return _compare(node, columns)


def _unary(op: ast.unaryop, operand: Any) -> Any:
    if isinstance(op, ast.Not | ast.Invert):
        return np.logical_not(operand)
    return -operand if isinstance(op, ast.USub) else operand


def _compare(node: ast.Compare, columns: Mapping[str, Any]) -> Any:
    """`a < b`, chains such as `0 <= a < b` (each pair, and-ed), and `a in (1, 2)`."""
    left, result = _evaluate(node.left, columns), None
    for op, comparator in zip(node.ops, node.comparators, strict=True):
        if isinstance(comparator, ast.Tuple | ast.List):  # only ever after `in` (see _check)
            right = [_evaluate(element, columns) for element in comparator.elts]
        else:
            right = _evaluate(comparator, columns)
        if isinstance(op, ast.In | ast.NotIn):
            found = np.isin(np.asarray(left, dtype=object), np.asarray(right, dtype=object))
            outcome = found if isinstance(op, ast.In) else np.logical_not(found)
        else:
            outcome = _COMPARE[type(op)](left, right)
        result = outcome if result is None else np.logical_and(result, outcome)
        left = right
    return result
