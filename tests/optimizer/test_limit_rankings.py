"""limit_rankings: head(n) over a semantic ranking becomes a smaller top-k; rankings are barriers
for filters; projections keep the compared column."""

import polars as pl

from semframe.optimizer import RULES, limit_rankings, optimize, pushdown_predicates, pushdown_projections
from semframe.plan.expr import PlExpr
from semframe.plan.nodes import Filter, Head, Select
from semframe.plan.ranking import SemSort, SemTopK
from semframe.plan.template import Template

from .plans import classify, scan

QUESTION = Template.parse("Which is older: {a} or {b}?")


def topk(child, k, **kw):
    return SemTopK(child, QUESTION, Template.for_column("body"), k, **kw)


def ssort(child, **kw):
    return SemSort(child, QUESTION, Template.for_column("body"), **kw)


def test_head_over_topk_becomes_the_smaller_topk():
    assert limit_rankings(Head(topk(scan(), 10), 3)) == topk(scan(), 3)
    assert limit_rankings(Head(topk(scan(), 3), 10)) == topk(scan(), 3)  # at most 3 rows: the head goes
    assert limit_rankings(Head(topk(scan(), 4, both_orders=False, name="r"), 2)) == topk(
        scan(), 2, both_orders=False, name="r")


def test_head_over_sort_becomes_topk():
    before = Head(ssort(scan(), algorithm="score", instruction="Be fair."), 5)
    # the sort's head also shows rows it cannot rank: the top-k keeps them (last, unranked)
    assert limit_rankings(before) == topk(scan(), 5, algorithm="score", instruction="Be fair.", keep_unranked=True)
    assert limit_rankings(ssort(scan())) == ssort(scan())  # no head: nothing to fold


def test_head_above_row_wise_steps_reaches_the_ranking():
    before = Head(classify(ssort(scan())), 4)
    assert optimize(before) == classify(topk(scan(), 4, keep_unranked=True))
    assert RULES.index(limit_rankings) > RULES.index(next(r for r in RULES if r.__name__ == "pushdown_limit"))


def test_a_filter_never_moves_below_a_ranking():
    predicate = PlExpr(pl.col("year") > 1900)
    for ranking in (topk(scan(), 3), ssort(scan())):
        before = Filter(ranking, predicate)
        assert pushdown_predicates(before) == before
        assert optimize(before) == before
    # It still moves below a classify that sits above the ranking, but stops at the ranking.
    before = Filter(classify(topk(scan(), 3)), predicate)
    assert pushdown_predicates(before) == classify(Filter(topk(scan(), 3), predicate))


def test_projection_keeps_the_compared_column():
    before = Select(topk(scan(), 3), (PlExpr(pl.col("title")), PlExpr(pl.col("rank"))))
    after = pushdown_projections(before)
    assert after == Select(topk(scan(columns_read=("title", "body")), 3),
                           (PlExpr(pl.col("title")), PlExpr(pl.col("rank"))))
    # A ranking is never dropped because nothing reads its rank: it chooses the rows.
    only_title = Select(topk(scan(), 3), (PlExpr(pl.col("title")),))
    assert pushdown_projections(only_title) == Select(topk(scan(columns_read=("title", "body")), 3),
                                                      (PlExpr(pl.col("title")),))
