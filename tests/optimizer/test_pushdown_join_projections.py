"""pushdown_projections through a semantic join: each side reads only what is needed
(SemJoin.columns_needed), and the output's names do not change."""

from __future__ import annotations

import polars as pl

from semframe.optimizer import pushdown_projections
from semframe.plan.expr import PlExpr
from semframe.plan.join import SemJoin, join_template
from semframe.plan.nodes import Scan, Select, Source

LEFT = Source.from_data(pl.DataFrame({"ticket": ["a"], "year": [2020], "id": [1], "body": ["b"]}))
RIGHT = Source.from_data(pl.DataFrame({"product": ["p"], "price": [9.5], "id": [7], "notes": ["n"]}))


def join(a, b) -> SemJoin:
    return SemJoin(a, b, join_template("Is {ticket} about {product}?", a.columns, b.columns))


def select(child, *names):
    return Select(child, tuple(PlExpr(pl.col(n)) for n in names))


def test_each_side_reads_the_template_columns_and_what_is_selected():
    before = select(join(Scan(LEFT), Scan(RIGHT)), "year", "price")
    after = pushdown_projections(before)
    assert after == select(join(Scan(LEFT, columns_read=("ticket", "year")),
                                Scan(RIGHT, columns_read=("product", "price"))), "year", "price")
    assert after.schema == before.schema


def test_a_suffixed_right_column_keeps_its_clashing_left_column():
    # id_right is only named so while the left side has "id": the left keeps reading it.
    before = select(join(Scan(LEFT), Scan(RIGHT)), "ticket", "id_right")
    after = pushdown_projections(before)
    j = after.child
    assert j.left.columns == ("ticket", "id") and j.right.columns == ("product", "id")
    assert after.schema == before.schema


def test_nothing_is_pruned_when_everything_is_needed():
    before = join(Scan(LEFT), Scan(RIGHT))
    assert pushdown_projections(before) == before
