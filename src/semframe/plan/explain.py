"""Render a plan as text: the root first, each child indented below it (read bottom-up)."""

from __future__ import annotations

from semframe.plan.nodes import Node, SemanticStep


def render(plan: Node, indent: str = "  ") -> str:
    lines: list[str] = []
    node: Node | None = plan
    depth = 0
    while node is not None:
        pad = indent * depth
        lines.append(pad + node.describe())
        if isinstance(node, SemanticStep):
            lines.extend(pad + indent + "  " + detail for detail in node.detail_lines())
        node = node.children[0] if node.children else None
        depth += 1
    return "\n".join(lines)
