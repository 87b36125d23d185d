"""Fold ``head(n)`` into the semantic ranking below it: rank only the rows the head keeps.

``head(n)`` over ``semantic.topk(k)`` becomes ``topk(min(n, k))``, and ``head(n)`` over
``semantic.sort`` becomes ``topk(n)``: finding the best n rows takes about ``2N + 2n ln n``
comparisons where a full order of N rows takes about ``2N ln N``. The head itself goes: a top-n
yields at most n rows, best first, which is what the head kept. (``pushdown_limit`` runs first,
so a head above row-wise steps over a ranking has already sunk onto it.)

Example::

    before: HEAD 5                                after: SEMANTIC TOPK 5 -> rank
              SEMANTIC SORT -> rank                        SCAN [title]
                SCAN [title]
"""

from __future__ import annotations

from dataclasses import fields

from semframe.plan.nodes import Head, Node, transform_up
from semframe.plan.ranking import SemSort, SemTopK


def limit_rankings(plan: Node) -> Node:
    return transform_up(plan, _fold)


def _fold(node: Node) -> Node:
    if not isinstance(node, Head):
        return node
    below = node.child
    if isinstance(below, SemTopK):
        return below if below.k <= node.n else SemTopK(**{**_init_fields(below), "k": node.n})  # type: ignore[operator]
    if isinstance(below, SemSort):
        # a sort's head also shows the rows it could not rank (null or blank items), last
        return SemTopK(**{**_init_fields(below), "k": node.n, "keep_unranked": True})
    return node


def _init_fields(node: Node) -> dict:
    return {f.name: getattr(node, f.name) for f in fields(node) if f.init}
