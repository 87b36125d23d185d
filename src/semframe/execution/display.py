"""Drawing plans: a tree of operators as HTML (for Jupyter) or text, and small bar charts.

Used by the drawn plan of ``SemLazyFrame._repr_html_`` (operators with their estimates) and by
``RunResult.profile()`` (operators with what they did). Plain HTML with inline styles: no
JavaScript, no stylesheet, no graphviz, so it renders in Jupyter, VS Code and nbconvert alike.

A physical operator is read through its public face only (``describe()``, ``detail_lines()``,
``inputs``), so this module needs nothing of :mod:`semframe.physical`. A leaf operator (a polars
query) shows the relational subtree it runs.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from semframe.plan.explain import render as render_logical

#: Background / border colours of a box, by kind of operator.
_COLOURS = {
    "semantic": ("#f3effb", "#9b87d4"),
    "query": ("#eef5fc", "#7aa7d9"),
    "relational": ("#f2f4f6", "#a3adb8"),
}
_FONT = "font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px"


@dataclass
class DrawNode:
    """One box of a drawn plan.

    ``title`` is the operator (``SEMANTIC CLASSIFY -> eu``), ``tag`` a short label beside it
    (``step 0``), ``options`` the choices the planner made, ``details`` lines under it (the
    template, a polars query's relational subtree), ``figures`` ``(name, value)`` pairs.
    """

    title: str
    kind: str = "relational"
    tag: str = ""
    options: str = ""
    details: list[str] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)
    children: list[DrawNode] = field(default_factory=list)
    op: Any = None

    def walk(self, depth: int = 0) -> Any:
        yield self, depth
        for c in self.children:
            yield from c.walk(depth + 1)


def split_describe(text: str) -> tuple[str, str, str]:
    """``"SEMANTIC CLASSIFY -> eu (step 0) [one of ...; dedupe]"`` -> title, tag, options."""
    head, sep, rest = text.partition(" [")
    options = rest[:-1] if sep and rest.endswith("]") else ""
    if not sep:
        head = text
    tag = ""
    if head.endswith(")") and " (step " in head:
        head, _, t = head.rpartition(" (")
        tag = t[:-1]
    return head.replace(" -> ", " → "), tag, options


def from_physical(op: Any, figures: Callable[[Any], list[tuple[str, str]]] = lambda op: []) -> DrawNode:
    """The drawn tree of a physical operator tree (``figures(op)`` gives each box its numbers)."""
    index = getattr(op, "index", None)
    if index is not None:  # a semantic step: its options in brackets, its step number
        kind = "semantic"
        title, tag, options = split_describe(op.describe())
    else:
        kind = "query" if not op.inputs else "relational"
        title, tag, options = op.describe(), "", ""
    details = list(op.detail_lines())
    if not op.inputs and getattr(op, "node", None) is not None:  # a polars query: its relational subtree
        details.extend(render_logical(op.node).splitlines())
    return DrawNode(title, kind, tag, options, details, figures(op),
                    [from_physical(c, figures) for c in op.inputs], op)


# --------------------------------------------------------------------------- HTML


def _chip(name: str, value: str) -> str:
    return (f"<span style='display:inline-block;margin:2px 4px 0 0;padding:0 5px;border:1px solid #d5d5d5;"
            f"border-radius:3px;background:#fff'><span style='color:#777'>{html.escape(name)}</span> "
            f"<b>{html.escape(value)}</b></span>")


def _box(node: DrawNode) -> str:
    bg, border = _COLOURS.get(node.kind, _COLOURS["relational"])
    parts = [f"<b>{html.escape(node.title)}</b>"]
    if node.tag:
        parts.append(f" <span style='color:#fff;background:{border};border-radius:3px;padding:0 4px'>"
                     f"{html.escape(node.tag)}</span>")
    lines = ["".join(parts)]
    if node.options:
        lines.append(f"<div style='color:#555'>{html.escape(node.options)}</div>")
    if node.details:
        text = "\n".join(node.details)
        lines.append(f"<pre style='margin:2px 0 0 0;padding:0;background:none;color:#444;{_FONT}'>"
                     f"{html.escape(text)}</pre>")
    if node.figures:
        lines.append("<div>" + "".join(_chip(k, v) for k, v in node.figures) + "</div>")
    box = (f"<div style='display:inline-block;text-align:left;border:1px solid {border};background:{bg};"
           f"border-radius:6px;padding:4px 8px;margin:3px 0'>{''.join(lines)}</div>")
    if not node.children:
        return f"<div>{box}</div>"
    kids = "".join(_box(c) for c in node.children)
    return (f"<div>{box}<div style='margin-left:16px;padding-left:12px;border-left:2px solid #c8c8c8'>"
            f"{kids}</div></div>")


def tree_html(root: DrawNode, header: str, *, subtitle: str = "", footer: str = "") -> str:
    """The drawn tree: ``header`` (e.g. ``PLAN (optimized; rewrites: none)``), the root on top and
    each operator's inputs below it (data flows up)."""
    sub = f"<div style='color:#666'>{html.escape(subtitle)}</div>" if subtitle else ""
    return (f"<div class='semframe-plan' style='{_FONT}'><div><b>{html.escape(header)}</b></div>{sub}"
            f"{_box(root)}{footer}</div>")


def bars_html(title: str, items: Sequence[tuple[str, float, str]], *, colour: str = "#3b7dd8") -> str:
    """A small horizontal bar chart: one ``(label, value, text)`` row per item, bars scaled to the largest."""
    top = max((v for _, v, _ in items), default=0.0)
    rows = []
    for label, value, text in items:
        width = 0 if top <= 0 else max(0.5, 100.0 * value / top) if value > 0 else 0
        bar = (f"<div style='width:220px;height:10px;background:#eee;border-radius:2px'>"
               f"<div style='width:{width:.1f}%;height:10px;background:{colour};border-radius:2px'></div></div>")
        rows.append(f"<tr><td style='padding:1px 8px 1px 0;text-align:left;white-space:nowrap'>{html.escape(label)}</td>"
                    f"<td style='padding:1px 8px 1px 0'>{bar}</td>"
                    f"<td style='padding:1px 0;text-align:left;white-space:nowrap'>{html.escape(text)}</td></tr>")
    return (f"<div style='display:inline-block;vertical-align:top;margin:6px 24px 0 0'><div><b>{html.escape(title)}</b>"
            f"</div><table style='border-collapse:collapse'>{''.join(rows)}</table></div>")


# --------------------------------------------------------------------------- text


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def tree_labels(root: DrawNode, width: int = 64) -> list[tuple[str, DrawNode | None]]:
    """One text label per line of the tree (``└─`` connectors), with the box it belongs to;
    a polars query's subtree lines follow its box with None. Labels are cut to ``width``."""
    out: list[tuple[str, DrawNode | None]] = []

    def visit(node: DrawNode, prefix: str, last: bool, top: bool) -> None:
        joint = "" if top else ("└─ " if last else "├─ ")
        tag = f" ({node.tag})" if node.tag else ""
        out.append((prefix + joint + _cut(node.title, max(16, width - len(prefix) - len(tag))) + tag, node))
        inner = prefix + ("" if top else ("   " if last else "│  "))
        for d in node.details:
            out.append((inner + "     " + _cut(d, max(16, width - len(inner) - 5)), None))
        for i, c in enumerate(node.children):
            visit(c, inner, i == len(node.children) - 1, False)

    visit(root, "", True, True)
    return out


def table_text(header: Sequence[str], rows: Sequence[Sequence[str]], *, left: int = 1) -> str:
    """A plain text table: the first ``left`` columns left-aligned, the rest right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def fmt(r: Sequence[str]) -> str:
        cells = [str(c).ljust(w) if i < left else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        return "  ".join(cells).rstrip()

    return "\n".join([fmt(header), *[fmt(r) for r in rows]])


def bars_text(title: str, items: Sequence[tuple[str, float, str]], width: int = 24) -> str:
    """The text form of :func:`bars_html`."""
    top = max((v for _, v, _ in items), default=0.0)
    pad = max((len(label) for label, _, _ in items), default=0)
    lines = [title]
    for label, value, text in items:
        n = 0 if top <= 0 else round(width * value / top)
        n = max(n, 1) if value > 0 else 0
        lines.append(f"  {label.ljust(pad)}  {'█' * n}{'░' * (width - n)}  {text}")
    return "\n".join(lines)
