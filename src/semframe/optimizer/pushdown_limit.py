"""Move ``head(n)`` below the steps that keep every row in order: ask the engine about n rows, not all.

``head`` moves below a node with one input that is elementwise and keeps every row in order
(``rows == "aligned"``): classify, extract and map, projections, drops, renames and elementwise
``with_columns``. It stops at anything that changes which rows exist or their order (filters,
semantic filters, sorts, joins). Two stacked heads become one.

Example::

    before: HEAD 10                               after: SEMANTIC CLASSIFY -> eu
              SEMANTIC CLASSIFY -> eu                     HEAD 10
                SCAN [title]                                SCAN [title]
"""

from __future__ import annotations

from semframe.plan.nodes import Head, Node, push_down


def pushdown_limit(plan: Node) -> Node:
    return push_down(plan, Head, _push)


def _push(node: Head) -> Node | None:
    below = node.child
    if isinstance(below, Head):
        return Head(below.child, min(node.n, below.n))
    if len(below.children) == 1 and below.rows == "aligned" and below.elementwise:
        return below.with_children((Head(below.children[0], node.n),))
    return None
