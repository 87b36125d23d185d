"""Render a logical plan as text: the root first, each child indented below it (read bottom-up)."""

from __future__ import annotations

from semframe.plan.nodes import Node


def render(plan: Node, indent: str = "  ") -> str:
    lines: list[str] = []

    def visit(node: Node, depth: int) -> None:
        pad = indent * depth
        lines.append(pad + node.describe())
        lines.extend(pad + indent + "  " + detail for detail in node.detail_lines())
        for child in node.children:
            visit(child, depth + 1)

    visit(plan, 0)
    return "\n".join(lines)
