import polars as pl

from semframe.optimizer import pushdown_predicates
from semframe.plan.expr import PlExpr
from semframe.plan.nodes import Drop, Filter, Head, Select, Sort, WithColumns

from .plans import classify, extract, scan, sem_filter

YEAR = PlExpr(pl.col("year") > 1900)


def test_filter_moves_below_classify():
    before = Filter(classify(scan()), YEAR)
    assert pushdown_predicates(before) == classify(Filter(scan(), YEAR))


def test_filter_on_the_semantic_output_stays():
    pred = PlExpr(pl.col("eu") == "YES")
    before = Filter(classify(scan()), pred)
    assert pushdown_predicates(before) == before


def test_elementwise_filter_moves_below_semantic_filter():
    assert pushdown_predicates(Filter(sem_filter(scan()), YEAR)) == sem_filter(Filter(scan(), YEAR))


def test_aggregate_filter_stays_above_semantic_filter_but_not_above_classify():
    pred = PlExpr(pl.col("year") > pl.col("year").mean())
    above_filter = Filter(sem_filter(scan()), pred)
    assert pushdown_predicates(above_filter) == above_filter
    # classify keeps every row, so the mean is the same below it
    assert pushdown_predicates(Filter(classify(scan()), pred)) == classify(Filter(scan(), pred))


def test_filter_passes_through_projection_drop_sort_and_unrelated_with_columns():
    inner = WithColumns(classify(scan()), (PlExpr((pl.col("year") * 2).alias("y2")),))
    before = Filter(Sort(Drop(Select(inner, (PlExpr(pl.col("title")), PlExpr(pl.col("year")), PlExpr(pl.col("y2")))), ("y2",)),
                         (PlExpr(pl.col("title")),), (False,)), YEAR)
    after = pushdown_predicates(before)
    expected_inner = WithColumns(classify(Filter(scan(), YEAR)), (PlExpr((pl.col("year") * 2).alias("y2")),))
    assert after == Sort(Drop(Select(expected_inner, (PlExpr(pl.col("title")), PlExpr(pl.col("year")), PlExpr(pl.col("y2")))), ("y2",)),
                         (PlExpr(pl.col("title")),), (False,))


def test_filter_reading_a_with_columns_output_stays_above_it():
    wc = WithColumns(classify(scan()), (PlExpr((pl.col("year") * 2).alias("y2")),))
    before = Filter(wc, PlExpr(pl.col("y2") > 10))
    assert pushdown_predicates(before) == before


def test_filter_never_moves_below_head():
    before = Filter(Head(extract(scan()), 3), YEAR)
    assert pushdown_predicates(before) == before


def test_plan_equality_is_structural():
    assert Filter(scan(), YEAR) == Filter(scan(), PlExpr(pl.col("year") > 1900))
    assert hash(classify(scan())) == hash(classify(scan()))
    assert Filter(scan(), YEAR) != Filter(scan(), PlExpr(pl.col("year") > 1901))
