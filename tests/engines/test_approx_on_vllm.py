"""A model cascade on real vLLM (CPU build): the tiny model is the oracle, a second tiny engine
the proxy, its label probabilities the score.

The tiny model's answers are random; what must hold anyway: every row is answered by exactly one
of calibration, cascade or oracle, cascade rows score at or above the certified threshold, the
in-process engine's label probabilities reach the step, and a rerun asks neither engine again.
"""

from __future__ import annotations

import polars as pl
import pytest

import semframe as sf

pytestmark = pytest.mark.vllm

LABELS = ["positive", "negative"]


def test_cascade_on_two_tiny_engines(tiny_vllm_engine, throwaway_tiny_vllm_engine):
    texts = [f"review number {i}: {'great' if i % 2 else 'bad'} product" for i in range(80)]
    df = pl.DataFrame({"review": texts})
    plan = df.lazy().semantic.classify("review", LABELS, instruction="What is the sentiment?", name="s",
                                       approx=sf.Target(accuracy=0.6, confidence=0.8, sample=40),
                                       proxy=throwaway_tiny_vllm_engine)
    assert "cascade (engine vllm:" in plan.explain()
    oracle_before = tiny_vllm_engine.usage.requests
    result = plan.run(tiny_vllm_engine)
    notes = result.step_metrics[0].notes
    lineage = result.lineage.sort("row_id")
    sources = lineage["source"].to_list()
    assert set(sources) <= {"calibration", "cascade", "engine", "dedup", "exact_cache"}
    assert sources.count("calibration") == 40
    assert set(result.df["s"].to_list()) <= set(LABELS) and result.df["s"].null_count() == 0
    # The in-process engine gives label probabilities: every row has a proxy score in [0, 1].
    assert lineage["similarity"].is_between(0.0, 1.0).all()
    t = notes["approx"]["threshold"]
    cascade = lineage.filter(pl.col("source") == "cascade")
    if t is None:
        assert cascade.is_empty() and notes["approx"]["fallback"]
    else:
        assert cascade.height == 40 - sources.count("engine") and (cascade["similarity"] >= t).all()
    oracle_calls = tiny_vllm_engine.usage.requests - oracle_before
    assert oracle_calls == 40 + sources.count("engine")
    assert notes["cascade"]["engine_requests"] + notes["cascade"]["reused"] == 80
    # A rerun: the oracle's answers and the proxy's come from the exact cache.
    again = plan.run(tiny_vllm_engine)
    assert tiny_vllm_engine.usage.requests - oracle_before == oracle_calls
    assert again.metrics["engine_requests"][0] == 0 and again.step_metrics[0].notes["cascade"]["engine_requests"] == 0
    assert again.df.equals(result.df)
