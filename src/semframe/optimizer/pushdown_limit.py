"""Move ``head(n)`` below row-preserving semantic steps: ask the engine about n rows, not all.

``head`` moves below steps that keep every row in order without looking at other rows:
classify, extract and map, column projections, drops, renames and elementwise
``with_columns``. It stops at anything that changes which rows exist or their order (filters,
semantic filters, sorts). Two stacked heads become one.

Example::

    before: HEAD 10                               after: SEMANTIC CLASSIFY -> eu
              SEMANTIC CLASSIFY -> eu                     HEAD 10
                SCAN [title]                                SCAN [title]
"""

from __future__ import annotations

from semframe.plan.nodes import push_down, Drop, Head, Node, Rename, Select, SemanticStep, WithColumns


def pushdown_limit(plan: Node) -> Node:
    return push_down(plan, Head, _push)


def _passes(node: Node) -> bool:
    if isinstance(node, SemanticStep):
        return node.row_preserving
    if isinstance(node, (Drop, Rename)):
        return True
    if isinstance(node, Select):
        return node.is_projection
    if isinstance(node, WithColumns):
        return node.is_elementwise
    return False


def _push(node: Head) -> Node | None:
    below = node.child
    if isinstance(below, Head):
        return Head(below.child, min(node.n, below.n))
    if _passes(below):
        return below.with_child(Head(below.child, node.n))  # type: ignore[attr-defined]
    return None
