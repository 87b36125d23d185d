"""explain() and estimate(): calls after dedup, tokens, time and cost, before running."""

from __future__ import annotations

import subprocess
import sys

import polars as pl
import pytest

import semframe as sf


def test_estimate_matches_the_run_for_known_rows(reviews):
    engine = sf.DeterministicEngine()
    plan = reviews.lazy().semantic.classify("text", ["good", "bad"], name="label")
    est = plan.estimate(engine)
    run = plan.run(engine, cache=False)
    s = est.steps[0]
    assert (s.rows_high, s.skipped, s.calls_low, s.calls_high, s.rows_exact) == (12, 2, 4, 4, True)
    assert s.calls_high == run.engine_requests
    # Same tokenizer, every distinct prompt sampled: the prompt estimate is exact.
    assert est.prompt_tokens[0] == pytest.approx(run.cost.prompt_tokens)
    lo, hi = est.output_tokens
    assert lo <= run.cost.output_tokens <= hi
    assert "deterministic-v1's tokenizer" in str(est)


def test_explain_says_when_it_uses_the_heuristic(reviews):
    text = reviews.lazy().semantic.classify("text", ["good", "bad"]).explain(estimate=True)
    assert "ESTIMATE (before running; tokens by heuristic (~4 characters per token))" in text
    assert "4 engine calls" in text and "2 null/empty skipped" in text
    assert "cost:" in text and "openai/gpt-4o-mini" in text
    assert "ESTIMATE" not in reviews.lazy().semantic.classify("text", ["a", "b"]).explain()  # reads no data


def test_explain_uses_a_configured_engine_but_never_starts_one(reviews):
    sf.configure(engine=sf.DeterministicEngine(model="m-configured"))
    assert "m-configured's tokenizer" in reviews.lazy().semantic.map("Say {text}").explain(estimate=True)
    code = ("import polars as pl, semframe as sf, sys\n"
            "lf = pl.DataFrame({'t': ['a', 'b']}).lazy()\n"
            "print(lf.semantic.classify('t', ['x', 'y']).explain(estimate=True))\n"
            "assert 'vllm' not in sys.modules and 'torch' not in sys.modules\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "heuristic" in out.stdout


def test_unknown_rows_after_a_semantic_filter_give_a_range(reviews):
    plan = (reviews.lazy().semantic.filter("Is {text} positive?")
            .semantic.map("Reply to: {text}", name="reply").head(3))
    est = plan.estimate(sf.DeterministicEngine(), filter_selectivity=0.5)
    f, m = est.steps
    assert (f.calls_low, f.calls_high) == (4, 4)
    assert not m.rows_exact and m.rows_high == 3 and m.calls_high <= 3
    assert est.output_tokens[1] >= 3 * 256  # a map may write up to max_tokens
    lo, hi = est.local_usd
    assert 0 < lo <= hi


def test_templates_reading_model_output_and_relational_filters(reviews):
    plan = (reviews.lazy().semantic.classify("text", ["good", "bad"], name="label")
            .filter(pl.col("label") == "good").semantic.map("Why is it {label}?", name="why"))
    est = plan.estimate()
    c, m = est.steps
    assert c.rows_exact and (m.rows_low, m.rows_high) == (6, 12)
    assert m.prompt_tokens_per_call > 0


def test_file_scans_and_no_semantic_steps(tmp_path, reviews):
    path = tmp_path / "r.parquet"
    reviews.write_parquet(path)
    plan = pl.scan_parquet(path).semantic.classify("text", ["good", "bad"]).filter(pl.col("stars") > 3)
    est = plan.estimate()
    assert est.steps[0].rows_high == 6  # the filter was pushed below the step
    assert "no semantic steps" in str(sf.SemLazyFrame.from_data(reviews).estimate())
    html = plan._repr_html_()
    assert "call .estimate()" in html  # displaying a file-backed plan does not read the file
    # In memory: the drawn plan carries the estimate (per operator, and the totals).
    page = sf.SemLazyFrame.from_data(reviews).semantic.classify("text", ["a", "b"])._repr_html_()
    assert "engine calls" in page and "ESTIMATE" in page and "total: 4 engine calls" in page


def test_selectivity_is_checked(reviews):
    with pytest.raises(ValueError, match="filter_selectivity"):
        reviews.lazy().semantic.classify("text", ["a", "b"]).estimate(filter_selectivity=2)
