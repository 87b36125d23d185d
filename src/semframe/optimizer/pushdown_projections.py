"""Read only the columns the plan uses, and drop semantic steps whose output nobody reads.

Walks the plan from the top with the set of columns still needed; each node says which columns
it needs from each input for that (:meth:`Node.columns_needed`). At a scan, unused columns are
not read. A step that may be dropped when unread (a row-preserving semantic step: classify,
extract, map) and whose output no step above reads is removed: its answers could never be seen,
so they are never asked for.

Example::

    before: SELECT [title, eu]                    after: SELECT [title, eu]
              SEMANTIC MAP -> gist                        SEMANTIC CLASSIFY -> eu
                SEMANTIC CLASSIFY -> eu                     SCAN [title] (projected 1 columns)
                  SCAN [title, body, year]
"""

from __future__ import annotations

from dataclasses import replace

from semframe.plan.nodes import Needed, Node, Scan


def pushdown_projections(plan: Node) -> Node:
    return _prune(plan, None)


def _prune(node: Node, needed: Needed) -> Node:
    if isinstance(node, Scan):
        if needed is None or set(node.columns) <= needed:
            return node
        return replace(node, columns_read=tuple(c for c in node.columns if c in needed))
    produced = node.produces
    if (node.removable_if_unread and needed is not None and produced is not None
            and not (produced & needed)):
        (child,) = node.children
        return _prune(child, needed)
    below = node.columns_needed(needed)
    return node.with_children([_prune(c, n) for c, n in zip(node.children, below)])
