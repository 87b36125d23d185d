"""The rules around cluster and dedup: both keep every row but depend on all of them, so a filter
or a head above them stays above; projections still prune below them and drop them when unread."""

import polars as pl

from semframe.optimizer import optimize, pushdown_limit, pushdown_predicates, pushdown_projections
from semframe.plan.cluster import SemCluster, SemDedup
from semframe.plan.expr import PlExpr
from semframe.plan.nodes import Filter, Head, Select
from semframe.plan.template import Template

from .plans import classify, scan


def dedup(child, **kw):
    return SemDedup(child, Template.for_column("title"), **kw)


def cluster(child, **kw):
    return SemCluster(child, Template.for_column("title"), k=2, **kw)


def test_a_filter_never_moves_below_cluster_or_dedup():
    for step in (dedup, cluster):
        # On an input column: moving it would change the neighbours / centroids of the kept rows.
        before = Filter(step(scan()), PlExpr(pl.col("year") > 1))
        assert pushdown_predicates(before) == before
        # On the step's own output: obviously not.
        name = "entity" if step is dedup else "cluster"
        before = Filter(step(scan()), PlExpr(pl.col(name) == 0))
        assert pushdown_predicates(before) == before


def test_a_filter_below_them_stays_below_and_passes_a_classify_under_them():
    before = dedup(Filter(classify(scan()), PlExpr(pl.col("year") > 1)))
    assert pushdown_predicates(before) == dedup(classify(Filter(scan(), PlExpr(pl.col("year") > 1))))


def test_a_head_never_moves_below_cluster_or_dedup():
    for step in (dedup, cluster):
        before = Head(step(scan()), 3)
        assert pushdown_limit(before) == before
        assert pushdown_limit(Head(step(classify(scan())), 3)) == Head(step(classify(scan())), 3)


def test_projections_prune_below_and_drop_them_when_unread():
    plan = Select(dedup(scan()), (PlExpr(pl.col("entity")),))
    pruned = pushdown_projections(plan)
    assert pruned == Select(dedup(scan(columns_read=("title",))), (PlExpr(pl.col("entity")),))
    unread = Select(cluster(scan()), (PlExpr(pl.col("year")),))
    assert pushdown_projections(unread) == Select(scan(columns_read=("year",)), (PlExpr(pl.col("year")),))


def test_optimize_keeps_the_schema_with_them():
    plan = Head(Filter(dedup(cluster(scan()), canonical=True), PlExpr(pl.col("year") > 1)), 2)
    out = optimize(plan)
    assert out.schema == plan.schema
    assert isinstance(out, Head) and isinstance(out.child, Filter) and isinstance(out.child.child, SemDedup)
