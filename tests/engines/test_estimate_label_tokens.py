"""Estimates count one output token per label where the vLLM engine decodes labels in one step
(issue 17): ``Engine.label_output_tokens`` says so from the tokenizer alone (vLLM is not
started), the row operators' estimate uses it, and it matches what the run spends exactly."""

from __future__ import annotations

import polars as pl
import pytest

import semframe as sf
from semframe.accounting.tokens import output_tokens
from semframe.plan.spec import ChoiceSpec

pytestmark = pytest.mark.vllm

TITLES = ["Battle of Waterloo", "Banana bread recipe", "Treaty of Versailles", "Knitting for beginners",
          "Fall of Rome", "Battle of Waterloo", None, "Stock markets rally", "Napoleon crowned emperor"]
YES_NO = ("YES", "NO")


@pytest.fixture
def titles() -> pl.DataFrame:
    return pl.DataFrame({"title": TITLES})


def _classify(df: pl.DataFrame):
    return df.lazy().semantic.classify("title", list(YES_NO), name="eu",
                                       instruction="Is the title related to the history of Europe?")


def test_the_engine_says_one_token_from_its_tokenizer_without_starting(tiny_model_dir, titles):
    from semframe.engines.vllm import VLLMEngine

    engine = VLLMEngine(str(tiny_model_dir), kv_cache_memory_bytes=32 << 20, max_model_len=256)
    grammar = VLLMEngine(str(tiny_model_dir), choice_decoding="grammar", kv_cache_memory_bytes=32 << 20,
                         max_model_len=256)
    try:
        assert engine.label_output_tokens(YES_NO, 8) == 1
        assert engine.label_output_tokens(("alpha one", "alpha two"), 8) is None  # shared first token: grammar
        longest = engine.label_table(YES_NO).longest
        assert engine.label_output_tokens(YES_NO, longest) is None  # no room for the grammar path: not one step
        assert grammar.label_output_tokens(YES_NO, 8) is None
        step = _classify(titles).estimate(engine).steps[0]
        assert step.output_tokens_per_call == (1, 1.0, 1)
        assert not engine.started and not grammar.started  # the tokenizer was enough
    finally:
        engine.close()
        grammar.close()


def test_the_estimate_of_a_yes_no_classify_matches_the_run(tiny_vllm_engine, titles):
    engine = tiny_vllm_engine
    plan = _classify(titles)
    est = plan.estimate(engine, cache=False)
    (step,) = est.steps
    assert step.output_tokens_per_call == (1, 1.0, 1)  # one per call, not the labels' spelled tokens
    spelled = output_tokens(ChoiceSpec(YES_NO), 8, engine.count_tokens)
    assert spelled.high >= 1  # (what the estimate said before: the labels' own token counts)
    assert step.calls_low == step.calls_high == 7 and step.rows_exact  # 7 distinct titles (a repeat, a null)
    run = plan.run(engine, cache=False)
    metrics = run.step_metrics[0]
    assert metrics.engine_requests == 7
    assert metrics.output_tokens == 7  # one decode step per call
    assert est.output_tokens == (metrics.output_tokens, metrics.output_tokens)  # exactly
    lineage = run.lineage.filter(pl.col("source") == "engine")
    assert lineage["output_tokens"].to_list() == [1] * 7
    assert set(run.df["eu"].drop_nulls().to_list()) <= set(YES_NO)


def test_a_filter_is_estimated_at_one_token_per_call_too(tiny_vllm_engine, titles):
    plan = titles.lazy().semantic.filter("Is {title} about a war?")
    est = plan.estimate(tiny_vllm_engine, cache=False)
    assert est.steps[0].output_tokens_per_call == (1, 1.0, 1)
    run = plan.run(tiny_vllm_engine, cache=False)
    assert run.step_metrics[0].output_tokens == run.step_metrics[0].engine_requests == est.steps[0].calls_high
