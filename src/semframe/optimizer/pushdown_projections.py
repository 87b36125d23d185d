"""Read only the columns the plan uses, and drop semantic steps whose output nobody reads.

Walks the plan from the top with the set of columns still needed. At the scan, unused columns
are not read. A row-preserving semantic step (classify, extract, map) whose output column is
projected away is removed: its answers could never be seen, so they are never asked for.
A ``drop`` becomes the projection of the columns it keeps.

Example::

    before: SELECT [title, eu]                    after: SELECT [title, eu]
              SEMANTIC MAP -> gist                        SEMANTIC CLASSIFY -> eu
                SEMANTIC CLASSIFY -> eu                     SCAN [title] (projected 1 columns)
                  SCAN [title, body, year]
"""

from __future__ import annotations

from dataclasses import replace

import polars as pl

from semframe.plan.nodes import (
    Drop,
    Filter,
    Head,
    Node,
    PlExpr,
    Rename,
    Scan,
    Select,
    SemanticStep,
    Sort,
    WithColumns,
)

Needed = frozenset[str] | None  # None: every column of the node's output is needed


def pushdown_projections(plan: Node) -> Node:
    return _prune(plan, None)


def _reads(exprs: tuple[PlExpr, ...]) -> Needed:
    if any(e.selects_all for e in exprs):
        return None
    return frozenset().union(*(e.root_names for e in exprs))


def _union(a: Needed, b: Needed) -> Needed:
    return None if a is None or b is None else a | b


def _prune(node: Node, needed: Needed) -> Node:
    if isinstance(node, Scan):
        if needed is None or set(node.columns) <= needed:
            return node
        return replace(node, columns_read=tuple(c for c in node.columns if c in needed))
    if isinstance(node, SemanticStep):
        if node.row_preserving and needed is not None and node.name not in needed:
            return _prune(node.child, needed)
        below = None if needed is None else (needed - {node.name}) | set(node.template.columns)
    elif isinstance(node, Filter):
        below = _union(needed, _reads((node.predicate,)))
    elif isinstance(node, Select):
        below = _reads(node.exprs)
    elif isinstance(node, WithColumns):
        outputs = {e.expr.meta.output_name(raise_if_undetermined=False) for e in node.exprs}
        if needed is None or None in outputs:
            below = None
        else:
            below = _union(needed - outputs, _reads(node.exprs))
    elif isinstance(node, Sort):
        below = _union(needed, _reads(node.by))
    elif isinstance(node, Head):
        below = needed
    elif isinstance(node, Drop):
        # The same columns as a projection, so the dropped ones need not be read at all.
        keep = tuple(c for c in node.columns if needed is None or c in needed)
        return _prune(Select(node.child, tuple(PlExpr(pl.col(c)) for c in keep)), needed)
    elif isinstance(node, Rename):
        # Every renamed column must exist below (polars refuses to rename a missing one),
        # whether or not anything above reads it.
        back = {new: old for old, new in node.mapping}
        below = None if needed is None else frozenset(back.get(c, c) for c in needed) | set(back.values())
    else:
        below = None
    return node.with_child(_prune(node.child, below))  # type: ignore[attr-defined]
