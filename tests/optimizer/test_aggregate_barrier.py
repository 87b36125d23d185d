"""``semantic.aggregate`` is a barrier: no relational filter, head or projection of its input
moves through it (its output has one row per group, not the input's rows)."""

import polars as pl

from semframe.optimizer import optimize, pushdown_limit, pushdown_predicates, pushdown_projections
from semframe.plan.aggregate import SemAggregate
from semframe.plan.expr import PlExpr
from semframe.plan.nodes import Filter, Head, Scan, Select
from semframe.plan.spec import TextSpec
from semframe.plan.template import Template

from .plans import scan


def aggregate(child, by=("year",)):
    return SemAggregate(child, "Summarize", Template.for_column("title"), TextSpec(), by, "summary")


def test_a_filter_on_a_group_key_stays_above_the_aggregate():
    before = Filter(aggregate(scan()), PlExpr(pl.col("year") > 1900))
    assert pushdown_predicates(before) == before


def test_a_filter_on_the_answer_stays_above_the_aggregate():
    before = Filter(aggregate(scan()), PlExpr(pl.col("summary").is_not_null()))
    assert pushdown_predicates(before) == before


def test_the_aggregate_declares_itself_a_barrier():
    node = aggregate(scan())
    assert node.rows == "other" and not node.elementwise and node.unchanged == frozenset()
    assert not node.removable_if_unread


def test_a_head_stays_above_the_aggregate():
    before = Head(aggregate(scan()), 1)
    assert pushdown_limit(before) == before


def test_projection_keeps_what_the_aggregate_reads():
    plan = Select(aggregate(scan()), (PlExpr(pl.col("summary")),))
    after = pushdown_projections(plan)
    scans = [n for n in _walk(after) if isinstance(n, Scan)]
    assert scans and set(scans[0].columns) == {"title", "year"}  # body is pruned, key and text kept
    assert optimize(plan).schema == plan.schema


def _walk(node):
    yield node
    for c in node.children:
        yield from _walk(c)
