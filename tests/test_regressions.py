"""Regressions found in review: each test names the behaviour a user relies on.

Most compare a plan's result with the same polars steps applied to the semantic step's
output, and the optimized run with ``optimize=False``: a rewrite must never change an answer.
"""

from __future__ import annotations

import hashlib
import json

import polars as pl
import polars.selectors as cs
import pytest
from polars.testing import assert_frame_equal

import semframe as sf
from semframe.plan.spec import ChoiceSpec, JsonSpec


def _row_text(request) -> str:
    # The row's own text under either prompt layout, so answers do not depend on the layout.
    return request.messages[-1].content.split("\n\n")[0]


def _responder(request) -> str:
    h = int(hashlib.sha256(_row_text(request).encode()).hexdigest()[:8], 16)
    spec = request.spec
    if isinstance(spec, ChoiceSpec):
        return spec.labels[h % len(spec.labels)]
    if isinstance(spec, JsonSpec):
        return json.dumps({name: h % 100 if ft.kind == "int" else f"v{h % 7}" for name, ft in spec.fields})
    return "echo " + _row_text(request)


@pytest.fixture
def layout_free_engine() -> sf.DeterministicEngine:
    """Answers depend on the row's text only (not on the prompt layout the optimizer picks)."""
    return sf.DeterministicEngine(responder=_responder)


@pytest.fixture
def frame() -> pl.DataFrame:
    return pl.DataFrame({
        "title": ["a", "b", "c", "d", "a", "e"],
        "year": [1, 5, 3, 4, 2, 6],
        "n": [10, 20, 30, 40, 50, 60],
        "s": [{"year": 100 * i} for i in range(6)],
    })


def _classified(frame: pl.DataFrame, engine) -> pl.DataFrame:
    return frame.semantic.classify("title", ["YES", "NO"], name="c", engine=engine, cache=False)


def _check(plan: sf.SemLazyFrame, expected: pl.DataFrame, engine) -> None:
    assert_frame_equal(plan.collect(engine=engine, cache=False), expected)
    assert_frame_equal(plan.collect(engine=engine, cache=False, optimize=False), expected)


# --------------------------------------------------------------------------- projections


def test_select_len_counts_rows(frame, layout_free_engine):
    plain = sf.SemLazyFrame.from_data(frame).select(pl.len())
    _check(plain, frame.select(pl.len()), None)
    plan = frame.lazy().semantic.classify("title", ["YES", "NO"], name="c").select(pl.len())
    _check(plan, frame.select(pl.len()), layout_free_engine)


def test_rename_of_a_column_nobody_reads_later(frame, layout_free_engine):
    plan = frame.lazy().semantic.classify("title", ["YES", "NO"], name="c").rename({"n": "m"}).select("title", "c")
    _check(plan, _classified(frame, layout_free_engine).select("title", "c"), layout_free_engine)


# --------------------------------------------------------------------------- multi-output expressions


@pytest.mark.parametrize("step", [
    pytest.param(lambda lf: lf.with_columns(pl.col("year", "n") * 10), id="with_columns col(a, b)"),
    pytest.param(lambda lf: lf.with_columns(cs.numeric() * 10), id="with_columns selector"),
    pytest.param(lambda lf: lf.with_columns(pl.col("s").struct.unnest()), id="with_columns unnest"),
    pytest.param(lambda lf: lf.with_columns(pl.col("year", "n") * 10).filter(pl.col("n") > 250),
                 id="filter over with_columns col(a, b)"),
    pytest.param(lambda lf: lf.with_columns(pl.col("s").struct.unnest()).filter(pl.col("year") > 200),
                 id="filter over unnest that overwrites"),
    pytest.param(lambda lf: lf.with_columns(pl.col("year", "n") * 10).head(2), id="head over col(a, b)"),
    pytest.param(lambda lf: lf.select(pl.col("title", "year")), id="select col(a, b)"),
    pytest.param(lambda lf: lf.with_columns(pl.concat_str(pl.all().exclude("s"), separator="|").alias("j")),
                 id="concat_str over all"),
    pytest.param(lambda lf: lf.with_columns(t=pl.sum_horizontal(cs.numeric())), id="sum over numeric"),
    pytest.param(lambda lf: lf.select(pl.first(), pl.last()), id="first and last"),
    pytest.param(lambda lf: lf.select(pl.all().name.suffix("_x")), id="all with suffix"),
    pytest.param(lambda lf: lf.select(cs.numeric().sum()), id="aggregate over a selector"),
    pytest.param(lambda lf: lf.filter(pl.all_horizontal(cs.integer() > 2)), id="filter over a selector"),
    pytest.param(lambda lf: lf.sort(pl.last(), pl.nth(1), descending=[False, True]), id="sort by selectors"),
])
def test_multi_output_expressions_after_a_semantic_step(frame, layout_free_engine, step):
    plan = step(frame.lazy().semantic.classify("title", ["YES", "NO"], name="c"))
    expected = step(_classified(frame, layout_free_engine).lazy()).collect()
    _check(plan, expected, layout_free_engine)


def test_row_ids_survive_steps_with_selectors(frame, layout_free_engine):
    base = frame.lazy().semantic.classify("title", ["YES", "NO"], name="c")
    plan = (base.with_columns(cs.numeric() * 10).filter(pl.all_horizontal(cs.integer() > 20))
                .sort(pl.col("year"), descending=True).select(pl.all().exclude("s")))
    run = plan.run(layout_free_engine, cache=False)
    assert run.df["n"].to_list() == [600, 200, 400, 300]
    assert run.row_ids.to_list() == [5, 1, 3, 2]  # ids are positions in the input, untouched
    assert run.with_row_ids().columns == ["row_id", "title", "year", "n", "c"]
    assert base.select(cs.numeric().sum()).run(layout_free_engine, cache=False).row_ids.to_list() == [None]
