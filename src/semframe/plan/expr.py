"""Polars expressions inside plan nodes: compared and hashed by structure, analysed once.

:class:`PlExpr` wraps a ``pl.Expr`` so that plan nodes holding expressions stay hashable and
compare by what the expression is (its serialized form), and answers the questions the optimizer
asks about it: which columns it reads, whether it expands against the schema (selectors,
wildcards), and whether it is elementwise.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import polars as pl

from semframe.errors import PlanError


@dataclass(frozen=True, eq=False)
class PlExpr:
    """A polars expression that compares and hashes by structure."""

    expr: pl.Expr

    @cached_property
    def _key(self) -> bytes:
        return self.expr.meta.serialize()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlExpr) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __str__(self) -> str:
        return str(self.expr)

    @cached_property
    def root_names(self) -> frozenset[str]:
        return frozenset(self.expr.meta.root_names())

    @cached_property
    def selects_all(self) -> bool:
        """True if a wildcard, regex or selector appears anywhere in it: the columns it reads are not named.

        This covers ``pl.col("a", "b")``, ``pl.first()``, ``pl.exclude(...)`` and
        ``pl.sum_horizontal(cs.numeric())`` too: polars expands them against the frame's schema.
        """
        meta = self.expr.meta
        return meta.has_multiple_outputs() or meta.is_regex_projection()

    @cached_property
    def is_elementwise(self) -> bool:
        """True if each output row depends only on the same input row.

        Such an expression gives the same answer on any split of the rows into batches, so it
        can run per batch and commute with row-removing steps. Conservative: polars'
        ``is_row_separable`` holds for every sub-expression (polars only looks at the top node:
        it calls ``cum_sum() < 5`` separable), there is no aggregation, length or window
        anywhere in the tree, and anything polars cannot analyse (selectors, Python UDFs) is
        not elementwise.
        """
        if self.selects_all:
            return False  # polars cannot analyse an expression before expanding it (it raises)
        tree = self._tree
        return tree is not None and _elementwise_tree(tree)

    @cached_property
    def is_elementwise_per_column(self) -> bool:
        """:attr:`is_elementwise` for each column an expanding expression (``pl.all().abs()``,
        ``cs.integer() + 1``) stands for: its selectors read as one plain column each."""
        if not self.selects_all:
            return self.is_elementwise
        tree = self._tree
        return tree is not None and _elementwise_tree(_without_selectors(tree))

    @cached_property
    def keeps_length(self) -> bool:
        """True if the expression gives one value per input row (or a literal, broadcast):
        ``drop_nulls``, ``filter``, ``explode`` and aggregates do not."""
        tree = self._tree
        if tree is None:
            return False
        try:
            expr = pl.Expr.deserialize(io.StringIO(json.dumps(_without_selectors(tree))), format="json")
            return expr.meta.is_length_preserving() or expr.meta.is_literal()
        except (Exception, pl.exceptions.PanicException):
            return False

    @cached_property
    def _tree(self) -> Any:
        try:
            return json.loads(self.expr.meta.serialize(format="json"))
        except (pl.exceptions.PolarsError, ValueError, TypeError):
            return None

    @classmethod
    def of(cls, value: Any, where: str) -> PlExpr:
        if isinstance(value, str):
            return cls(pl.col(value))
        if isinstance(value, pl.Expr):
            return cls(value)
        raise PlanError(f"{where}: expected a column name or a polars expression, got {type(value).__name__}")

    def __reduce__(self):  # pickle via polars' own serialization (for Ray and subprocesses)
        return (_plexpr_from_bytes, (self._key,))


def _plexpr_from_bytes(blob: bytes) -> PlExpr:
    return PlExpr(pl.Expr.deserialize(io.BytesIO(blob)))


#: Functions whose later inputs are read as whole columns (a lookup set), not row by row.
_LOOKUPS = ("Replace", "ReplaceStrict", "IsIn", "IndexOf", "SearchSorted")


def _elementwise_tree(tree: Any) -> bool:
    if _contains_key(tree, {"Agg", "Len", "Over", "Window", "Rolling"}) or _looks_up_columns(tree):
        return False
    return all(_row_separable(sub) for sub in _subexpressions(tree))


def _looks_up_columns(tree: Any) -> bool:
    """True if a lookup function (``replace``, ``is_in`` ...) takes a column, not literals, to look in."""
    if isinstance(tree, dict):
        fn = tree.get("Function")
        if isinstance(fn, dict) and any(name in json.dumps(fn.get("function")) for name in _LOOKUPS):
            if any(not (isinstance(i, dict) and "Literal" in i) for i in fn.get("input", [])[1:]):
                return True
        return any(_looks_up_columns(v) for v in tree.values())
    if isinstance(tree, list):
        return any(_looks_up_columns(v) for v in tree)
    return False


def _without_selectors(tree: Any) -> Any:
    if isinstance(tree, dict):
        if "Selector" in tree and len(tree) == 1:
            return {"Column": "__sf_any"}
        return {k: _without_selectors(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_without_selectors(v) for v in tree]
    return tree


def _subexpressions(tree: Any):
    """Every node of a serialized expression tree that is itself an expression (as pl.Expr)."""
    if isinstance(tree, dict):
        try:
            yield pl.Expr.deserialize(io.StringIO(json.dumps(tree)), format="json")
        except (Exception, pl.exceptions.PanicException):  # not an expression (options, values)
            pass
        for value in tree.values():
            yield from _subexpressions(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _subexpressions(value)


def _row_separable(expr: pl.Expr) -> bool:
    try:
        return expr.meta.is_row_separable()
    except (Exception, pl.exceptions.PanicException):  # polars cannot analyse it: not elementwise
        return False


def _contains_key(tree: Any, keys: set[str]) -> bool:
    if isinstance(tree, dict):
        return any(k in keys or _contains_key(v, keys) for k, v in tree.items())
    if isinstance(tree, list):
        return any(_contains_key(v, keys) for v in tree)
    return tree in keys if isinstance(tree, str) else False


def reads(exprs: tuple[PlExpr, ...]) -> frozenset[str] | None:
    """The columns some expressions read; None when one expands against the schema (unknown)."""
    if any(e.selects_all for e in exprs):
        return None
    return frozenset().union(*(e.root_names for e in exprs))


def output_names(exprs: tuple[PlExpr, ...]) -> frozenset[str] | None:
    """The columns some expressions write; None when one's name is only known from the schema."""
    names = set()
    for e in exprs:
        if e.selects_all:
            return None
        name = e.expr.meta.output_name(raise_if_undetermined=False)
        if name is None:
            return None
        names.add(name)
    return frozenset(names)
