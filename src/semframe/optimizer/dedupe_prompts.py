"""Ask the engine each distinct request once per step; fan the answer out to every row.

Applies to greedy steps (temperature 0), where identical requests have one answer. With a
temperature above 0 every row is its own sample, so such steps are left alone. Repeats are
collapsed across all batches of a step, not only within one batch.

Example::

    before: SEMANTIC CLASSIFY -> eu [one of YES, NO; max_tokens=5]
    after:  SEMANTIC CLASSIFY -> eu [one of YES, NO; max_tokens=5, dedupe]
"""

from __future__ import annotations

from dataclasses import replace

from semframe.plan.nodes import Node, SemanticStep, transform_up


def dedupe_prompts(plan: Node) -> Node:
    def rule(node: Node) -> Node:
        if isinstance(node, SemanticStep) and not node.dedupe and node.temperature == 0:
            return replace(node, dedupe=True)
        return node

    return transform_up(plan, rule)
