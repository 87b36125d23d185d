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
    # The row's own text: the last message's first paragraph under either prompt layout.
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
    """An engine whose answer is a hash of the row's own text, whatever prompt surrounds it.

    The optimizer no longer changes prompts (the layout is a planning option, the same for an
    optimized run and ``optimize=False``: see
    ``test_optimized_and_unoptimized_runs_send_the_same_prompts``, which uses a plain engine).
    This engine is kept because it makes expectations easy to state: a row's answer depends on
    its text alone, so an expected frame built from another run (an eager verb, other steps
    around it, any ``prompt_layout``) holds for the plan under test too, and a labelled answer
    can be told from a malformed one at a glance.
    """
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


# --------------------------------------------------------------------------- elementwise or not


@pytest.mark.parametrize("step", [
    pytest.param(lambda lf: lf.sort("n", descending=True).filter(pl.col("n").cum_sum() < 40), id="cum_sum in a comparison"),
    pytest.param(lambda lf: lf.sort("n", descending=True).filter(pl.col("n") + pl.col("n").shift(1) > 45),
                 id="shift inside a sum"),
    pytest.param(lambda lf: lf.sort("n", descending=True).with_columns(r=pl.col("n").rank().cast(pl.Int64)).head(2),
                 id="rank under a cast"),
    pytest.param(lambda lf: lf.with_columns(m=pl.col("n").map_batches(lambda s: s - s.min(), return_dtype=pl.Int64)),
                 id="map_batches sees every row"),
    pytest.param(lambda lf: lf.with_columns(m=pl.col("n").map_elements(lambda x: x * 2, return_dtype=pl.Int64)),
                 id="map_elements"),
    pytest.param(lambda lf: lf.filter(pl.col("n") > pl.col("n").cum_sum().shift(1).fill_null(0) / 3),
                 id="window-like predicate after a semantic filter"),
    pytest.param(lambda lf: lf.select(pl.lit(1).alias("one")), id="select of a literal is one row"),
    pytest.param(lambda lf: lf.select(one=1, two=pl.lit("x")), id="select of literals is one row"),
])
@pytest.mark.filterwarnings("ignore::polars.exceptions.PolarsInefficientMapWarning")
def test_steps_that_need_every_row_see_every_row(frame, layout_free_engine, step):
    semantic = frame.lazy().semantic.filter("Is {title} good?")
    plan = step(semantic)
    kept = frame.semantic.filter("Is {title} good?", engine=layout_free_engine, cache=False)
    expected = step(kept.lazy()).collect()
    assert_frame_equal(plan.collect(engine=layout_free_engine, cache=False, batch_size=2), expected)
    assert_frame_equal(plan.collect(engine=layout_free_engine, cache=False, batch_size=2, optimize=False), expected)


# --------------------------------------------------------------------------- random plans

_STEPS = {
    "classify": lambda lf, k: lf.semantic.classify("title", ["YES", "NO"], name=f"c{k}"),
    "classify_year": lambda lf, k: lf.semantic.classify("{title} {year}", ["A", "B", "C"], name=f"c{k}"),
    "sem_filter": lambda lf, k: lf.semantic.filter("Is {title} good?"),
    "map": lambda lf, k: lf.semantic.map("Say {title}", name=f"m{k}"),
    "extract": lambda lf, k: lf.semantic.extract("title", {"x": int}, name=f"e{k}"),
    "filter_year": lambda lf, k: lf.filter(pl.col("year") > 2),
    "filter_agg": lambda lf, k: lf.filter(pl.col("year") >= pl.col("year").median()),
    "filter_window": lambda lf, k: lf.filter(pl.col("n") == pl.col("n").max().over("title")),
    "filter_cum": lambda lf, k: lf.filter(pl.col("n").cum_sum() < 150),
    "overwrite_year": lambda lf, k: lf.with_columns(year=pl.col("n") // 10),
    "year_from_rank": lambda lf, k: lf.with_columns(year=pl.col("n").rank("ordinal").cast(pl.Int64)),
    "title_upper": lambda lf, k: lf.with_columns(pl.col("title").str.to_uppercase()),
    "sort_year": lambda lf, k: lf.sort("year", descending=True),
    "sort_title": lambda lf, k: lf.sort("title", "n"),
    "head": lambda lf, k: lf.head(3),
    "head0": lambda lf, k: lf.head(0),
    "rename": lambda lf, k: lf.rename({"year": "yr"}).with_columns(year=pl.col("yr")).drop("yr"),
    "swap": lambda lf, k: lf.rename({"year": "n", "n": "year"}),
    "select": lambda lf, k: lf.select(pl.all()),
    "drop_n": lambda lf, k: lf.drop("n").with_columns(n=pl.col("year") * 7),
    "selector_math": lambda lf, k: lf.with_columns(cs.by_name("year", "n") + 1),
    "selector_filter": lambda lf, k: lf.filter(pl.all_horizontal(cs.by_name("year", "n") > 1)),
    "title_from_n": lambda lf, k: lf.with_columns(title=pl.col("n").cast(pl.String).str.slice(0, 1)),
    "renamed_filter": lambda lf, k: lf.rename({"n": "nn"}).filter(pl.col("nn") > 20).rename({"nn": "n"}),
    "sort_then_head_filter": lambda lf, k: lf.sort("n").head(8).filter(pl.col("year") < 7),
}


@pytest.mark.parametrize("seed", range(80))
def test_random_plans_give_the_same_result_optimized_or_not(seed, layout_free_engine):
    import random

    rng = random.Random(seed)
    df = pl.DataFrame({
        "title": [rng.choice("abcdefg") for _ in range(12)],
        "year": [rng.randint(0, 9) for _ in range(12)],
        "n": [rng.randint(0, 90) for _ in range(12)],
    })
    plan = sf.SemLazyFrame.from_data(df)
    names = []
    for k in range(rng.randint(1, 6)):
        name = rng.choice(list(_STEPS))
        names.append(name)
        plan = _STEPS[name](plan, k)
    batch = rng.choice([1, 2, 5, 512])
    opt = plan.run(layout_free_engine, cache=False, batch_size=batch)
    raw = plan.run(layout_free_engine, cache=False, optimize=False, batch_size=batch)
    assert_frame_equal(opt.df, raw.df, check_column_order=True), names
    assert opt.row_ids.to_list() == raw.row_ids.to_list(), names


# --------------------------------------------------------------------------- prompts and rewrites


@pytest.mark.parametrize("layout", ["shared_first", "inline"])
def test_optimized_and_unoptimized_runs_send_the_same_prompts(frame, layout):
    """A rewrite changes which rows are asked, never what a row is asked: byte for byte."""
    plan = (frame.lazy().semantic.classify("title", ["YES", "NO"], name="c", instruction="Is it old?")
                 .semantic.extract("{title} in {year}", {"x": int}, name="e")
                 .filter(pl.col("year") > 2)                      # moves below both steps
                 .semantic.map("Say {title}", name="unread")      # nobody reads it: dropped
                 .semantic.filter("Is {title} good?")
                 .drop("unread")
                 .head(3))
    opt_engine, raw_engine = sf.DeterministicEngine(), sf.DeterministicEngine()
    opt = plan.run(opt_engine, cache=False, prompt_layout=layout)
    raw = plan.run(raw_engine, cache=False, optimize=False, prompt_layout=layout)

    def asked(run) -> dict[tuple, str]:
        cells = run.lineage_with_prompts().filter(pl.col("source") != "skipped")
        return {(op, col, row): prompt for op, col, row, prompt
                in cells.select("operator", "column", "row_id", "prompt").iter_rows()}

    opt_asked, raw_asked = asked(opt), asked(raw)
    assert opt.engine_requests < raw.engine_requests  # the rewrites did save requests
    assert opt_asked.keys() < raw_asked.keys()
    assert {(op, col) for op, col, _ in opt_asked} == {("classify", "c"), ("extract", "e"), ("filter", None)}
    for cell, prompt in opt_asked.items():
        assert prompt.encode("utf-8") == raw_asked[cell].encode("utf-8"), cell
    # The requests themselves (messages, spec, decoding settings) are the same objects' worth.
    sent = {json.dumps(r.to_dict(), sort_keys=True).encode("utf-8") for b in opt_engine.batches for r in b}
    also = {json.dumps(r.to_dict(), sort_keys=True).encode("utf-8") for b in raw_engine.batches for r in b}
    assert sent and sent <= also
    # So even a plain engine, whose answer hashes the whole request, gives the same result.
    assert_frame_equal(opt.df, raw.df)
    assert opt.row_ids.to_list() == raw.row_ids.to_list()


@pytest.mark.parametrize("semantic", [False, True])
def test_projection_pushdown_keeps_the_place_of_an_overwritten_column(frame, layout_free_engine, semantic):
    base = frame.drop("s")
    lf = (base.lazy().semantic.classify("year", ["YES", "NO"], name="c") if semantic
          else sf.SemLazyFrame.from_data(base))
    plan = lf.with_columns(title=pl.col("n").cast(pl.String)).drop("n")
    start = (base.semantic.classify("year", ["YES", "NO"], name="c", engine=layout_free_engine, cache=False)
             if semantic else base)
    expected = start.with_columns(title=pl.col("n").cast(pl.String)).drop("n")
    assert plan.columns == expected.columns
    _check(plan, expected, layout_free_engine if semantic else None)


def test_sort_takes_the_keywords_of_polars_sort(frame):
    plan = sf.SemLazyFrame.from_data(frame).sort("title", maintain_order=True, multithreaded=False)
    _check(plan, frame.sort("title", maintain_order=True), None)


# --------------------------------------------------------------------------- caches


def test_explain_says_the_cache_is_off_when_the_process_turned_it_off(frame, layout_free_engine):
    sf.configure(cache=False)
    plan = frame.lazy().semantic.classify("title", ["YES", "NO"], name="c", cache=True)
    assert "exact cache off" in plan.explain(estimate=False)
    assert plan.run(layout_free_engine).lineage["source"].to_list().count("exact_cache") == 0
    plan.run(layout_free_engine)
    assert "exact_cache" not in sf.last_run().lineage["source"].to_list()
