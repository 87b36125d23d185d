import polars as pl

from semframe.optimizer import pushdown_limit
from semframe.plan.expr import PlExpr
from semframe.plan.nodes import Filter, Head, Rename, Select, Sort, WithColumns

from .plans import classify, extract, scan, sem_filter, smap


def test_head_moves_below_row_preserving_steps():
    before = Head(smap(extract(classify(scan()))), 10)
    assert pushdown_limit(before) == smap(extract(classify(Head(scan(), 10))))


def test_head_stops_at_semantic_filter_filter_and_sort():
    for stop in (sem_filter(scan()), Filter(scan(), PlExpr(pl.col("year") > 1)),
                 Sort(scan(), (PlExpr(pl.col("year")),), (False,))):
        before = Head(classify(stop), 5)
        assert pushdown_limit(before) == classify(Head(stop, 5))


def test_head_passes_projection_rename_and_elementwise_with_columns_only():
    elementwise = WithColumns(classify(scan()), (PlExpr(pl.col("year") + 1),))
    assert pushdown_limit(Head(elementwise, 3)) == WithColumns(classify(Head(scan(), 3)), (PlExpr(pl.col("year") + 1),))
    windowed = WithColumns(classify(scan()), (PlExpr(pl.col("year").cum_sum()),))
    assert pushdown_limit(Head(windowed, 3)) == Head(windowed, 3)
    renamed = Rename(Select(classify(scan()), (PlExpr(pl.col("eu")),)), (("eu", "label"),))
    assert pushdown_limit(Head(renamed, 2)) == Rename(Select(classify(Head(scan(), 2)), (PlExpr(pl.col("eu")),)), (("eu", "label"),))


def test_stacked_heads_merge_to_the_smaller():
    assert pushdown_limit(Head(Head(scan(), 10), 3)) == Head(scan(), 3)
    assert pushdown_limit(Head(classify(Head(scan(), 2)), 5)) == classify(Head(scan(), 2))
