"""Move relational filters below semantic steps, so the engine never sees rows they drop.

A filter moves below a semantic step when it does not read the step's output column, and
either the step keeps every row (classify, extract, map) or the filter's predicate is
elementwise (a semantic filter changes which rows exist, so ``x > mean(x)`` must stay above
it). It also moves through the relational steps that cannot change its answer (column
projections, drops, elementwise ``with_columns`` that it does not read, sorts), to reach
semantic steps further down.

Example::

    before: FILTER col("year") > 1900            after: SEMANTIC CLASSIFY -> eu
              SEMANTIC CLASSIFY -> eu                     FILTER col("year") > 1900
                SCAN [title, year]                          SCAN [title, year]
"""

from __future__ import annotations

from semframe.plan.nodes import push_down, Drop, Filter, Node, Select, SemanticStep, Sort, WithColumns


def pushdown_predicates(plan: Node) -> Node:
    return push_down(plan, Filter, _push)


def _push(node: Filter) -> Node | None:
    """``Filter(X(child))`` -> ``X(Filter(child))`` where that gives the same rows; else None."""
    pred = node.predicate
    below = node.child
    if pred.selects_all:
        return None
    if isinstance(below, SemanticStep):
        if below.name in pred.root_names:
            return None
        if not (below.row_preserving or pred.is_elementwise):
            return None
    elif isinstance(below, (Drop, Sort)) or (isinstance(below, Select) and below.is_projection):
        if isinstance(below, Sort) and not pred.is_elementwise:
            return None
    elif isinstance(below, WithColumns):
        outputs = {e.expr.meta.output_name(raise_if_undetermined=False) for e in below.exprs}
        if not below.is_elementwise or None in outputs or outputs & pred.root_names:
            return None
    else:
        return None
    return below.with_child(Filter(below.child, pred))  # type: ignore[attr-defined]
