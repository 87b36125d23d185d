"""The optimizer: a tuple of rewrite rules, each a pure function ``Node -> Node``.

``optimize`` applies them in order. Every rule lives in its own module, named by what it does,
with a before/after example in its docstring. Rules only make rewrites that preserve results:
how prompts are laid out or repeats collapsed is a planning option
(:mod:`semframe.physical.planner`), not a rewrite. After each rule the root's schema is checked
(as DataFusion's optimizer does): a rule that changed it is a bug, and fails loudly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from semframe.errors import SemframeError
from semframe.optimizer.limit_rankings import limit_rankings
from semframe.optimizer.pushdown_join_predicates import pushdown_join_predicates
from semframe.optimizer.pushdown_limit import pushdown_limit
from semframe.optimizer.pushdown_predicates import pushdown_predicates
from semframe.optimizer.pushdown_projections import pushdown_projections
from semframe.plan.nodes import Node

Rule = Callable[[Node], Node]

RULES: tuple[Rule, ...] = (
    pushdown_predicates,
    pushdown_join_predicates,
    pushdown_projections,
    pushdown_limit,
    limit_rankings,
)


class OptimizerError(SemframeError, AssertionError):
    """A rule changed the plan's result schema (a bug in the rule)."""


def optimize_traced(plan: Node, rules: Sequence[Rule] = RULES) -> tuple[Node, list[str]]:
    """Optimize ``plan``; also return the names of the rules that changed it, in order."""
    applied = []
    schema = plan.schema
    for rule in rules:
        new = rule(plan)
        if new != plan:
            if new.schema != schema:
                raise OptimizerError(
                    f"optimizer rule {rule.__name__} changed the plan's schema from {dict(schema)} to "
                    f"{dict(new.schema)}; run with optimize=False and report this plan")
            applied.append(rule.__name__)
        plan = new
    return plan, applied


def optimize(plan: Node, rules: Sequence[Rule] = RULES) -> Node:
    """Apply ``rules`` to ``plan`` in order and return the rewritten plan."""
    return optimize_traced(plan, rules)[0]


__all__ = [
    "RULES",
    "OptimizerError",
    "optimize",
    "optimize_traced",
    "pushdown_limit",
    "pushdown_predicates",
    "pushdown_projections",
]
