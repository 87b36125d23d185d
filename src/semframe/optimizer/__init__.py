"""The optimizer: a tuple of rewrite rules, each a pure function ``Node -> Node``.

``optimize`` applies them in order. Every rule lives in its own module, named by what it does,
with a before/after example in its docstring.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from semframe.optimizer.dedupe_prompts import dedupe_prompts
from semframe.optimizer.pushdown_limit import pushdown_limit
from semframe.optimizer.pushdown_predicates import pushdown_predicates
from semframe.optimizer.pushdown_projections import pushdown_projections
from semframe.optimizer.shape_prompts import shape_prompts
from semframe.plan.nodes import Node

Rule = Callable[[Node], Node]

RULES: tuple[Rule, ...] = (
    pushdown_predicates,
    pushdown_projections,
    pushdown_limit,
    dedupe_prompts,
    shape_prompts,
)


def optimize_traced(plan: Node, rules: Sequence[Rule] = RULES) -> tuple[Node, list[str]]:
    """Optimize ``plan``; also return the names of the rules that changed it, in order."""
    applied = []
    for rule in rules:
        new = rule(plan)
        if new != plan:
            applied.append(rule.__name__)
        plan = new
    return plan, applied


def optimize(plan: Node, rules: Sequence[Rule] = RULES) -> Node:
    """Apply ``rules`` to ``plan`` in order and return the rewritten plan."""
    return optimize_traced(plan, rules)[0]


__all__ = [
    "RULES",
    "dedupe_prompts",
    "optimize",
    "optimize_traced",
    "pushdown_limit",
    "pushdown_predicates",
    "pushdown_projections",
    "shape_prompts",
]
