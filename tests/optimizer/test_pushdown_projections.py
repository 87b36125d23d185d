import polars as pl

from semframe.optimizer import pushdown_projections
from semframe.plan.expr import PlExpr
from semframe.plan.nodes import Drop, Filter, Rename, Select

from .plans import classify, extract, scan, sem_filter, smap


def test_scan_reads_only_needed_columns():
    before = Select(classify(scan()), (PlExpr(pl.col("eu")),))
    after = pushdown_projections(before)
    assert after == Select(classify(scan(columns_read=("title",))), (PlExpr(pl.col("eu")),))
    assert after.children[0].children[0].columns == ("title",)


def test_unread_semantic_output_is_never_computed():
    before = Select(smap(classify(scan())), (PlExpr(pl.col("title")), PlExpr(pl.col("eu"))))
    assert pushdown_projections(before) == Select(classify(scan(columns_read=("title",))),
                                                  (PlExpr(pl.col("title")), PlExpr(pl.col("eu"))))


def test_semantic_filter_is_kept_even_when_nothing_reads_a_column_from_it():
    before = Select(sem_filter(scan()), (PlExpr(pl.col("year")),))
    assert pushdown_projections(before) == Select(sem_filter(scan(columns_read=("title", "year"))), (PlExpr(pl.col("year")),))


def test_filter_and_rename_keep_their_columns():
    before = Select(Rename(Filter(extract(scan()), PlExpr(pl.col("year") > 1)), (("facts", "f"),)), (PlExpr(pl.col("f")),))
    after = pushdown_projections(before)
    assert after == Select(Rename(Filter(extract(scan(columns_read=("body", "year"))), PlExpr(pl.col("year") > 1)),
                                  (("facts", "f"),)), (PlExpr(pl.col("f")),))


def test_drop_and_wildcards():
    # The dropped column is not read at all; the drop stays (it is a no-op on the pruned scan).
    assert pushdown_projections(Drop(scan(), ("body",))) == Drop(scan(columns_read=("title", "year")), ("body",))
    wildcard = Select(classify(scan()), (PlExpr(pl.all()),))
    assert pushdown_projections(wildcard) == wildcard


def test_without_projection_nothing_changes():
    plan = smap(classify(scan()))
    assert pushdown_projections(plan) == plan
