"""pushdown_join_predicates: a filter above a semantic join moves into the side it reads."""

from __future__ import annotations

import polars as pl

from semframe.optimizer import optimize, pushdown_join_predicates
from semframe.plan.expr import PlExpr
from semframe.plan.join import SemJoin, join_template
from semframe.plan.nodes import Filter, Scan, Source

from .plans import classify

LEFT = Source.from_data(pl.DataFrame({"ticket": ["a"], "year": [2020], "id": [1]}))
RIGHT = Source.from_data(pl.DataFrame({"product": ["p"], "price": [9.5], "id": [7]}))


def left() -> Scan:
    return Scan(LEFT)


def right() -> Scan:
    return Scan(RIGHT)


def join(a, b, how="inner") -> SemJoin:
    return SemJoin(a, b, join_template("Is {ticket} about {product}?", a.columns, b.columns), how=how)


YEAR = PlExpr(pl.col("year") > 2000)
PRICE = PlExpr(pl.col("price") < 10)


def test_left_column_filter_moves_into_the_left_side():
    before = Filter(join(left(), right()), YEAR)
    assert pushdown_join_predicates(before) == join(Filter(left(), YEAR), right())


def test_right_column_filter_moves_into_the_right_side_of_an_inner_join():
    before = Filter(join(left(), right()), PRICE)
    assert pushdown_join_predicates(before) == join(left(), Filter(right(), PRICE))


def test_right_column_filter_stays_above_a_left_join():
    # Above a left join the filter also drops the unmatched rows (price is null there).
    before = Filter(join(left(), right(), how="left"), PRICE)
    assert pushdown_join_predicates(before) == before


def test_left_column_filter_moves_below_a_left_join():
    before = Filter(join(left(), right(), how="left"), YEAR)
    assert pushdown_join_predicates(before) == join(Filter(left(), YEAR), right(), how="left")


def test_filter_reading_both_sides_stays():
    both = PlExpr((pl.col("year") > 2000) & (pl.col("price") < 10))
    before = Filter(join(left(), right()), both)
    assert pushdown_join_predicates(before) == before


def test_filter_on_a_renamed_right_column_stays():
    # "id_right" is the right side's "id" under another name: not moved (it would need a rename).
    before = Filter(join(left(), right()), PlExpr(pl.col("id_right") == 7))
    assert pushdown_join_predicates(before) == before
    # "id" is the left one
    moved = Filter(join(left(), right()), PlExpr(pl.col("id") == 1))
    assert pushdown_join_predicates(moved) == join(Filter(left(), PlExpr(pl.col("id") == 1)), right())


def test_aggregate_predicate_stays():
    mean = PlExpr(pl.col("year") > pl.col("year").mean())
    before = Filter(join(left(), right()), mean)
    assert pushdown_join_predicates(before) == before


def test_moved_filter_keeps_sinking_below_the_sides_semantic_steps():
    # The left side has a classify on it: the filter passes the join and then the classify.
    side = classify(Scan(Source.from_data(pl.DataFrame({"title": ["a"], "year": [1], "ticket": ["t"]}))))
    before = Filter(join(side, right()), PlExpr(pl.col("year") > 0))
    after = pushdown_join_predicates(before)
    assert after == join(classify(Filter(side.child, PlExpr(pl.col("year") > 0))), right())


def test_the_full_optimizer_moves_a_filter_from_above_a_classify_over_the_join():
    before = Filter(classify_over_join(), YEAR)
    after = optimize(before)
    assert isinstance(after.child, SemJoin)
    assert after.child.left == Filter(left(), YEAR)
    assert after.schema == before.schema


def classify_over_join():
    from semframe.plan.semantic import SemClassify
    from semframe.plan.spec import ChoiceSpec
    from semframe.plan.template import Template

    return SemClassify(join(left(), right()), Template.for_column("ticket"), None, ChoiceSpec(("YES", "NO")), "eu")
