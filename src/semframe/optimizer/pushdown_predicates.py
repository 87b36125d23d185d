"""Move relational filters below the steps that cannot change their answer.

A filter moves below a node with one input when the columns it reads pass through that node
unchanged (:attr:`Node.unchanged`), and

- the node keeps every row in order and is elementwise (``rows == "aligned"``: classify,
  extract, map, projections, elementwise ``with_columns``) -- any predicate; or
- the node keeps or reorders rows one by one (``rows`` ``"subset"`` or ``"permutation"``: a
  semantic filter, a sort) and the predicate is elementwise (``x > mean(x)`` must stay above a
  step that changes which rows exist).

So the engine never sees a row the filter drops. Nothing moves through a head, a join, an
aggregate or any polars method semframe does not know.

Example::

    before: FILTER col("year") > 1900            after: SEMANTIC CLASSIFY -> eu
              SEMANTIC CLASSIFY -> eu                     FILTER col("year") > 1900
                SCAN [title, year]                          SCAN [title, year]
"""

from __future__ import annotations

from semframe.plan.expr import reads
from semframe.plan.nodes import Filter, Node, push_down


def pushdown_predicates(plan: Node) -> Node:
    return push_down(plan, Filter, _push)


def _push(node: Filter) -> Node | None:
    """``Filter(X(child))`` -> ``X(Filter(child))`` where that gives the same rows; else None."""
    below = node.child
    read = reads(node.expressions)
    if read is None or isinstance(below, Filter) or len(below.children) != 1 or not read <= below.unchanged:
        return None  # (two filters in a row stay in their order: swapping them would never end)
    if below.rows == "aligned" and below.elementwise:
        pass
    elif below.rows == "subset" and below.elementwise or below.rows == "permutation":
        if not node.predicate.is_elementwise:
            return None
        # A permutation by a key that depends on position (a cum_sum) reorders differently
        # once rows are gone.
        if below.rows == "permutation" and not all(e.is_elementwise for e in getattr(below, "expressions", ())):
            return None
    else:
        return None
    return below.with_children((Filter(below.children[0], node.predicate),))
