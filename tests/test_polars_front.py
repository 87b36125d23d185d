"""The four verbs through polars, eager and lazy, on the deterministic engine."""


import duckdb
import polars as pl
import pyarrow as pa
import pytest

import semframe as sf


def yes_if(word):
    return sf.DeterministicEngine(responder=lambda r: "YES" if word in r.messages[-1].content else "NO")


def test_eager_verbs_return_dataframes(titles, engine):
    out = titles.semantic.classify("title", ["YES", "NO"], instruction="Is it about European history?",
                                   name="eu", engine=engine)
    assert out.columns == ["title", "year", "body", "eu"]
    assert set(out["eu"].to_list()) <= {"YES", "NO"}
    kept = titles.semantic.filter("Is {title} about a war?", engine=yes_if("Battle"))
    assert kept["title"].to_list() == ["Battle of Waterloo", "Battle of Waterloo"]
    facts = titles.semantic.extract("title", {"place": str, "year": int}, name="facts", engine=engine)
    assert facts.schema["facts"] == pl.Struct({"place": pl.String, "year": pl.Int64})
    assert facts["facts"].struct.field("year").dtype == pl.Int64
    gist = titles.semantic.map("Summarize {title} in five words.", name="gist", max_tokens=32, engine=engine)
    assert gist["gist"][0].startswith("echo:")


def test_lazy_plan_runs_only_on_collect(titles):
    eng = yes_if("Battle")
    plan = (titles.lazy()
            .semantic.filter("Is {title} about a war?")
            .semantic.classify("title", ["YES", "NO"], name="eu")
            .filter(pl.col("year") > 1800)
            .head(10))
    assert isinstance(plan, sf.SemLazyFrame)
    assert eng.requests_seen == 0
    out = plan.collect(engine=eng)
    assert out["title"].to_list() == ["Battle of Waterloo", "Battle of Waterloo"]
    assert out["eu"].to_list() == ["YES", "YES"]


def test_identical_prompts_reach_the_engine_once_and_fan_out(titles, engine):
    out = titles.semantic.classify("title", ["YES", "NO"], engine=engine)
    assert engine.requests_seen == 5  # 6 rows, "Battle of Waterloo" twice
    assert out["classify"][0] == out["classify"][3]
    lineage = sf.last_run().lineage
    assert lineage.filter(pl.col("row_id") == 3)["source"].item() == "dedup"
    assert lineage.filter(pl.col("row_id") == 3)["source_row_id"].item() == 0


def test_dedupe_spans_batches(engine):
    df = pl.DataFrame({"t": ["a", "b", "c"] * 20})
    df.semantic.classify("t", ["x", "y"], engine=engine, batch_size=4)
    assert engine.requests_seen == 3
    assert len(engine.batches) == 1  # later batches were all answered by the memo


def test_head_limits_engine_calls(engine):
    df = pl.DataFrame({"t": [f"row {i}" for i in range(1000)]})
    out = df.lazy().semantic.classify("t", ["x", "y"]).head(10).collect(engine=engine)
    assert out.height == 10
    assert engine.requests_seen == 10


def test_head_after_semantic_filter_stops_pulling_batches():
    df = pl.DataFrame({"t": [f"row {i}" for i in range(1000)]})
    eng = sf.DeterministicEngine(responder=lambda r: "YES")
    out = df.lazy().semantic.filter("Keep {t}?").head(3).collect(engine=eng, batch_size=50)
    assert out["t"].to_list() == ["row 0", "row 1", "row 2"]
    assert eng.requests_seen == 50  # one batch, not 1000 rows


def test_relational_filter_runs_before_the_engine(titles, engine):
    titles.lazy().semantic.classify("title", ["YES", "NO"]).filter(pl.col("year") > 1900).collect(engine=engine)
    asked = [r.messages[-1].content for b in engine.batches for r in b]
    assert sorted(asked) == ["Banana bread recipe", "Knitting for beginners", "Treaty of Versailles"]


def test_unread_semantic_step_makes_no_engine_call(titles, engine):
    out = titles.lazy().semantic.map("Summarize {title}", name="gist").select("title").collect(engine=engine)
    assert out.columns == ["title"]
    assert engine.requests_seen == 0


def test_relational_steps_between_semantic_steps(titles, engine):
    out = (titles.lazy()
           .with_columns(decade=(pl.col("year") // 10) * 10)
           .semantic.classify("{title} ({decade}s)", ["A", "B"], name="c")
           .sort("year", descending=True)
           .rename({"c": "label"})
           .drop("body")
           .with_columns(rank=pl.col("year").rank())   # not elementwise: runs on the whole result
           .semantic.map("Why {label}?", name="why")
           .collect(engine=engine))
    assert out.columns == ["title", "year", "decade", "label", "rank", "why"]
    assert out["year"].to_list() == sorted(titles["year"].to_list(), reverse=True)
    assert out["rank"].to_list() == [6.0, 5.0, 4.0, 2.5, 2.5, 1.0]


def test_lineage_row_ids_survive_sort_filter_and_head(titles, engine):
    run = (sf.SemLazyFrame.from_data(titles).sort("year").filter(pl.col("year") > 500)
           .semantic.classify("title", ["A", "B"], name="c").head(2).run(engine=engine))
    assert run.df["title"].to_list() == ["Battle of Waterloo", "Battle of Waterloo"]
    assert run.row_ids.to_list() == [0, 3]
    assert set(run.lineage["row_id"].to_list()) == {0, 3}


def test_explain_shows_plan_before_and_after(titles):
    plan = titles.lazy().semantic.classify("title", ["YES", "NO"], name="eu").filter(pl.col("year") > 1900).head(3)
    raw = plan.explain(optimized=False)
    opt = plan.explain()
    assert raw.splitlines()[1] == "HEAD 3"
    assert "rewrites: pushdown_predicates, pushdown_limit" in opt
    lines = opt.splitlines()
    assert lines[1].startswith("SEMANTIC CLASSIFY -> eu (step 0) [one of YES, NO")
    assert "dedupe, shared prefix first, exact cache" in lines[1]
    assert "template: '{title}'" in opt and lines[3].strip() == "POLARS QUERY"
    assert lines[4].strip() == "HEAD 3" and "FILTER" in lines[5] and "SCAN" in lines[6]


def test_process_default_engine_and_per_call_override(titles):
    default = sf.DeterministicEngine(responder=lambda r: "NO")
    sf.configure(engine=default)
    assert titles.semantic.classify("title", ["YES", "NO"])["classify"].unique().to_list() == ["NO"]
    override = sf.DeterministicEngine(responder=lambda r: "YES")
    assert titles.lazy().semantic.classify("title", ["YES", "NO"]).collect(engine=override)["classify"].unique().to_list() == ["YES"]


def test_inputs_from_files_arrow_and_duckdb(tmp_path, titles, engine):
    titles.write_parquet(tmp_path / "t.parquet")
    titles.write_csv(tmp_path / "t.csv")
    titles.write_ndjson(tmp_path / "t.ndjson")
    frames = [
        pl.scan_parquet(tmp_path / "t.parquet"),
        pl.scan_csv(tmp_path / "t.csv"),
        pl.scan_ndjson(tmp_path / "t.ndjson"),
        pl.from_arrow(pa.table(titles.to_arrow())).lazy(),
        duckdb.sql("select * from titles where year > 0").pl().lazy(),
    ]
    expected = titles.semantic.classify("title", ["A", "B"], engine=engine)
    for lf in frames:
        out = lf.semantic.classify("title", ["A", "B"]).collect(engine=engine)
        assert out.equals(expected)


def test_streaming_file_source_in_small_batches(tmp_path, engine):
    pl.DataFrame({"t": [f"r{i}" for i in range(2500)]}).write_parquet(tmp_path / "big.parquet")
    run = pl.scan_parquet(tmp_path / "big.parquet").semantic.classify("t", ["A", "B"]).run(engine=engine, batch_size=300)
    assert run.df.height == 2500
    assert run.row_ids.to_list() == list(range(2500))
    assert max(len(b) for b in engine.batches) == 300
    assert len(engine.batches) == 9


def test_lazy_steps_reject_run_options(titles, engine):
    with pytest.raises(TypeError, match="collect"):
        titles.lazy().semantic.classify("title", ["A", "B"], batch_size=4)
    # engine= on a lazy step is the step's own engine (a model per step), not a run option.
    step = titles.lazy().semantic.classify("title", ["A", "B"], engine=engine)
    assert step.collect(cache=False).height == titles.height and engine.requests_seen


def test_empty_input(engine):
    df = pl.DataFrame({"t": []}, schema={"t": pl.String})
    out = df.semantic.extract("t", {"n": int}, name="x", engine=engine)
    assert out.height == 0 and out.schema["x"] == pl.Struct({"n": pl.Int64})
    assert engine.requests_seen == 0
