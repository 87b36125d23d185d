"""Move a relational filter above a two-input node (a semantic join) into the input it reads.

A ``Filter`` whose predicate is elementwise and reads only columns that one input passes
through unchanged moves into that input, when the node says that gives the same rows
(``node.input_for(columns)`` returns the input's position; a semantic join allows either side of
an inner join, only the left side of a left join). The filter then keeps sinking inside that
input as :func:`~semframe.optimizer.pushdown_predicates.pushdown_predicates` moves it. So the
model is never asked about a pair the filter would drop: with the filter on a side of ``n``
rows keeping ``k``, the join asks ``k/n`` of the pairs.

Example::

    before: FILTER col("year") > 1900                   after: SEMANTIC JOIN [how=inner]
              SEMANTIC JOIN [how=inner]                          FILTER col("year") > 1900
                SCAN [ticket, year]                                SCAN [ticket, year]
                SCAN [product]                                   SCAN [product]
"""

from __future__ import annotations

from semframe.optimizer.pushdown_predicates import pushdown_predicates
from semframe.plan.expr import reads
from semframe.plan.nodes import Filter, Node, push_down


def pushdown_join_predicates(plan: Node) -> Node:
    moved = push_down(plan, Filter, _push)
    return moved if moved is plan else pushdown_predicates(moved)


def _push(node: Filter) -> Node | None:
    """``Filter(J(a, b))`` -> ``J(Filter(a), b)`` (or into ``b``) where that gives the same rows; else None."""
    below = node.child
    input_for = getattr(below, "input_for", None)
    if input_for is None or len(below.children) != 2 or not node.predicate.is_elementwise:
        return None
    read = reads(node.expressions)
    if read is None:
        return None
    side = input_for(read)
    if side is None:
        return None
    children = list(below.children)
    children[side] = Filter(children[side], node.predicate)
    return below.with_children(children)
