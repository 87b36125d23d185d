"""The whole polars LazyFrame API on a semframe plan, before and after semantic steps.

Methods the optimizer understands build their own nodes; every other ``pl.LazyFrame`` method
builds a generic polars step through one mechanism. Each must give what polars gives on the
same data, and row provenance must follow rows through them (joins name pairs, groups lists).
"""

from __future__ import annotations

import json

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import semframe as sf
from semframe.errors import PlanError


def label_of(text: str) -> str:
    return "YES" if "a" in text else "NO"


@pytest.fixture
def engine() -> sf.DeterministicEngine:
    # The answer depends on the row's own text only.
    return sf.DeterministicEngine(responder=lambda r: label_of(r.messages[-1].content))


@pytest.fixture
def df() -> pl.DataFrame:
    return pl.DataFrame({"t": ["apple", "kiwi", "banana", "fig", "apple"], "k": [1, 2, 1, 3, 2],
                         "tags": [["x", "y"], ["z"], [], ["x"], ["y"]]})


def classified(df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns(c=pl.col("t").map_elements(label_of, return_dtype=pl.String))


@pytest.mark.parametrize("step", [
    lambda lf: lf.unique(subset=["t"], keep="first", maintain_order=True),
    lambda lf: lf.unique(maintain_order=True, keep="first"),
    lambda lf: lf.with_row_index("i"),
    lambda lf: lf.explode("tags"),
    lambda lf: lf.drop_nulls(),
    lambda lf: lf.reverse(),
    lambda lf: lf.tail(2),
    lambda lf: lf.slice(1, 3),
    lambda lf: lf.top_k(2, by=["k", "t"]),
    lambda lf: lf.cast({"k": pl.Int32}),
    lambda lf: lf.fill_null("?"),
    lambda lf: lf.unpivot(index="t", on=["k"]),
    lambda lf: lf.group_by("c", maintain_order=True).agg(pl.col("k").sum()),
    lambda lf: lf.select(pl.struct("t", "k").alias("s")).unnest("s"),
])
def test_polars_methods_after_a_semantic_step_match_polars(df, engine, step):
    plan = step(df.lazy().semantic.classify("t", ["YES", "NO"], name="c"))
    assert isinstance(plan, sf.SemLazyFrame)
    expected = step(classified(df).lazy()).collect()
    assert_frame_equal(plan.collect(engine=engine, cache=False), expected)
    assert_frame_equal(plan.collect(engine=engine, cache=False, batch_size=2, optimize=False), expected)


def test_row_ids_follow_rows_through_polars_methods(df, engine):
    plan = (df.lazy().semantic.classify("t", ["YES", "NO"], name="c")
              .unique(subset=["t"], keep="first", maintain_order=True).explode("tags").reverse())
    run = plan.run(engine, cache=False)
    expected = (classified(df).with_row_index("id").unique(subset=["t"], keep="first", maintain_order=True)
                .explode("tags").reverse())
    assert run.row_ids.to_list() == expected["id"].to_list() == [3, 1, 0, 0]  # banana's [] explodes to nothing
    assert_frame_equal(run.df, expected.drop("id"))


def test_join_with_a_polars_frame_and_with_another_plan(df, engine):
    prices = pl.DataFrame({"t": ["apple", "fig", "plum"], "price": [3, 5, 7]})
    left = df.lazy().semantic.classify("t", ["YES", "NO"], name="c")
    out = left.join(prices, on="t", how="inner", maintain_order="left")
    expected = classified(df).join(prices, on="t", how="inner", maintain_order="left")
    assert_frame_equal(out.collect(engine=engine, cache=False), expected)

    right = prices.lazy().semantic.map("Describe {t}", name="d")
    both = left.join(right, on="t", how="left", maintain_order="left")
    run = both.run(engine, cache=False)
    assert run.df.height == df.height and run.df.columns == ["t", "k", "tags", "c", "price", "d"]
    pairs = run.row_ids.to_list()
    assert pairs[0] == {"left": 0, "right": 0} and pairs[1] == {"left": 1, "right": None}
    assert pairs[3] == {"left": 3, "right": 1}
    steps = run.metrics.select("step", "operator", "rows_in").rows()
    assert steps == [(0, "classify", 5), (1, "map", 3)]


def test_lineage_names_the_pair_behind_a_cell_after_a_join(df, engine):
    other = pl.DataFrame({"k": [1, 2], "name": ["one", "two"]})
    plan = sf.SemLazyFrame.from_data(df).join(other.lazy(), on="k").semantic.map("{t} is {name}", name="m")
    run = plan.run(engine, cache=False)
    lineage = run.lineage
    assert lineage["row_id"].null_count() == lineage.height  # a pair is not one row
    pairs = [json.loads(p) for p in lineage["provenance"]]
    assert pairs == run.row_ids.to_list()  # the cells' pairs are the result rows' pairs
    keys = df["k"].to_list()
    assert all(keys[p["left"]] == other["k"][p["right"]] for p in pairs) and len(pairs) == 4


def test_group_by_agg_keeps_every_input_row(df, engine):
    plan = (df.lazy().semantic.classify("t", ["YES", "NO"], name="c")
              .group_by("c", maintain_order=True).agg(pl.len().alias("n"))
              .semantic.map("{c} has {n}", name="m"))
    run = plan.run(engine, cache=False)
    assert run.df["n"].to_list() == [3, 2]
    assert [sorted(ids) for ids in run.row_ids.to_list()] == [[0, 2, 4], [1, 3]]
    cell = run.lineage.filter(pl.col("operator") == "map")["provenance"].to_list()
    assert sorted(json.loads(cell[0])) == [0, 2, 4]


def test_pipe_and_sink(df, engine, tmp_path):
    plan = df.lazy().pipe(lambda lf: lf.semantic.classify("t", ["YES", "NO"], name="c")).drop("tags")
    path = tmp_path / "out.parquet"
    result = plan.sink_parquet(path, engine=engine, cache=False)
    assert result.engine_requests == 4  # "apple" twice is asked once
    assert_frame_equal(pl.read_parquet(path), classified(df).drop("tags"))
    plan.sink_csv(tmp_path / "out.csv", engine=engine, cache=False)
    assert pl.read_csv(tmp_path / "out.csv").height == 5


def test_extract_then_unnest_gives_columns(df, engine):
    plan = df.lazy().semantic.extract("t", {"name": str, "n": int}, name="facts").unnest("facts")
    out = plan.collect(engine=sf.DeterministicEngine(), cache=False)
    assert out.columns == ["t", "k", "tags", "name", "n"]


def test_unknown_and_eager_methods_say_what_to_do(df):
    plan = df.lazy().semantic.classify("t", ["YES", "NO"], name="c")
    with pytest.raises(AttributeError, match="no attribute 'frobnicate'"):
        plan.frobnicate()
    with pytest.raises(AttributeError, match=r"Run the plan with \.collect\(\)"):
        plan.collect_async()
    with pytest.raises(PlanError, match="explode"):
        plan.explode("nope")
    assert "group_by" in dir(plan) and "join" in dir(plan)


def test_optimizer_treats_unknown_methods_as_barriers(df, engine):
    plan = (df.lazy().semantic.classify("t", ["YES", "NO"], name="c")
              .with_row_index("i").filter(pl.col("i") > 2))
    text = plan.explain()
    assert text.index("FILTER") < text.index("POLARS .with_row_index") < text.index("SEMANTIC")
    assert plan.collect(engine=engine, cache=False)["i"].to_list() == [3, 4]


def test_duckdb_lazy_input_with_progress_shown(tmp_path, capsys):
    duckdb = pytest.importorskip("duckdb")
    con = duckdb.connect()
    con.execute("CREATE TABLE t AS SELECT i AS id, 'review ' || i AS review FROM range(30) r(i)")
    lf = con.sql("SELECT id, review FROM t").pl(lazy=True)
    out = lf.semantic.classify("review", ["pos", "neg"]).collect(engine=sf.DeterministicEngine(), progress=True,
                                                                 cache=False)
    assert out.height == 30  # counting rows for progress never fails a run (nor reads the source twice)
