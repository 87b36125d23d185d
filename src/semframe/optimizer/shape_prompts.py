"""Lay prompts out so the engine's prefix cache can reuse the part every row shares.

The instruction and answer format go first, in a system message identical for every row of
the step; the row's own text goes last. vLLM's automatic prefix caching then computes the
shared tokens once per batch instead of once per row (see ``benchmarks/prefix_layout.py``).

Example::

    before: user: "<row text>\\n\\n<instruction>\\n<answer format>"
    after:  system: "<instruction>\\n<answer format>"   user: "<row text>"
"""

from __future__ import annotations

from dataclasses import replace

from semframe.plan.nodes import Node, SemanticStep, transform_up


def shape_prompts(plan: Node) -> Node:
    def rule(node: Node) -> Node:
        if isinstance(node, SemanticStep) and node.layout != "shared_first":
            return replace(node, layout="shared_first")
        return node

    return transform_up(plan, rule)
