"""The planner: a logical plan and the run's options in, a tree of physical operators out.

Every choice that changes *how* a step is asked -- never *what* it answers -- is made here, from
:class:`~semframe.execution.context.RunOptions`: the prompt layout, whether repeats are
collapsed, whether the exact cache is used. Steps are numbered in the order they run (inputs
first, left to right), from their position in the plan, so the same plan always gets the same
numbers and a subtree used twice (a self-join) gets two.

Example::

    logical                                   physical
    SEMANTIC CLASSIFY -> eu                   SEMANTIC CLASSIFY -> eu (step 0) [...; dedupe, shared prefix first, exact cache]
      FILTER col("year") > 1900                 POLARS QUERY
        SCAN [title, year]                        FILTER col("year") > 1900
                                                    SCAN [title, year]
"""

from __future__ import annotations

import itertools

from semframe.errors import PlanError
from semframe.execution.context import RunOptions
from semframe.physical.base import PhysicalOp
from semframe.physical.relational import PolarsQuery, PolarsStep
from semframe.physical.semantic import OPERATORS, RowOperator

# The operator modules register themselves with ``physical_for`` when imported.
from semframe.physical import aggregate, approx, cluster, embedding, join, ranking  # noqa: E402,F401  isort: skip
from semframe.plan.explain import render as render_logical
from semframe.plan.nodes import Head, Node, Relational, Scan, walk
from semframe.plan.semantic import SemanticNode


def is_polars_tree(node: Node) -> bool:
    """True if the subtree is relational down to its scans (one polars query runs it)."""
    return all(isinstance(n, (Scan, Relational)) for n in walk(node))


def plan_physical(plan: Node, options: RunOptions | None = None) -> PhysicalOp:
    """The physical operators that run ``plan`` (optimize it first; see :func:`semframe.optimizer.optimize`)."""
    options = options or RunOptions()
    counter = itertools.count()

    def visit(node: Node, under_head: bool = False) -> PhysicalOp:
        if is_polars_tree(node):
            return PolarsQuery(node)
        # Below a head, a step may be asked to stop after any batch: it sends none ahead.
        inputs = tuple(visit(c, under_head or isinstance(node, Head)) for c in node.children)
        if isinstance(node, SemanticNode):
            op = OPERATORS.get(type(node))
            if op is None:
                raise PlanError(f"no physical operator for {type(node).__name__}; register one with "
                                "semframe.physical.semantic.physical_for")
            made = op(node, inputs, next(counter), options)  # type: ignore[call-arg]
            if under_head and isinstance(made, RowOperator):
                made.reads_on = False
            return made
        if isinstance(node, Relational):
            return PolarsStep(node, inputs)
        raise PlanError(f"no physical operator for {type(node).__name__}")

    return visit(plan)


def render(op: PhysicalOp, indent: str = "  ") -> str:
    """The physical plan as text, root first, each input indented below (read it bottom-up).

    A polars query shows the relational subtree it runs.
    """
    lines: list[str] = []

    def visit(o: PhysicalOp, depth: int) -> None:
        pad = indent * depth
        lines.append(pad + o.describe())
        lines.extend(pad + indent + "  " + d for d in o.detail_lines())
        if isinstance(o, PolarsQuery):
            lines.extend(pad + indent + line for line in render_logical(o.node, indent).splitlines())
            return
        for child in o.inputs:
            visit(child, depth + 1)

    visit(op, 0)
    return "\n".join(lines)
