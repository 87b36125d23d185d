"""semantic.aggregate on real vLLM (CPU build): a small context window, a reduce of two levels or
more, every request within the window as vLLM itself counts it, and a free rerun.

The tiny model's answers are random text; what must hold anyway is the packing (vLLM rejects a
prompt over ``max_model_len``), the levels, the lineage and the cache.
"""

from __future__ import annotations

import json

import polars as pl
import pytest

import semframe as sf

pytestmark = pytest.mark.vllm

WINDOW = 256  # throwaway_tiny_vllm_engine's max_model_len
MAX_TOKENS = 24


def _level(note: str) -> int:
    return int(note.split("reduce level ")[1].split()[0])


def test_aggregate_packs_to_max_model_len_and_reduces_in_levels(throwaway_tiny_vllm_engine):
    engine = throwaway_tiny_vllm_engine
    assert engine.context_window == WINDOW  # given at construction: known without starting vLLM
    df = pl.DataFrame({
        "topic": ["a", "b"] * 40,
        "title": [f"headline number {i} about the markets and the weather" for i in range(80)],
    })
    plan = df.lazy().semantic.aggregate("Summarize the headlines", "title", by="topic", max_tokens=MAX_TOKENS)
    estimate = plan.estimate(engine).steps[0]
    out = plan.collect(engine=engine)
    assert out.columns == ["topic", "aggregate"] and out["topic"].to_list() == ["a", "b"]

    lin = sf.last_run().lineage
    assert set(lin["source"]) <= {"engine", "dedup"}  # (two levels may ask the same thing)
    levels = lin["note"].map_elements(_level, return_dtype=pl.Int64)
    assert levels.max() >= 2
    # vLLM's own prompt count (chat template included): every request left room for max_tokens
    assert (lin["prompt_tokens"] + MAX_TOKENS <= WINDOW).all()
    assert not lin["error"].drop_nulls().str.contains("max_model_len").any()
    # the estimate packs level 1 exactly as the run did (same tokenizer, same chat template)
    level1 = int((levels == 1).sum())
    assert estimate.calls_low <= lin.height <= estimate.calls_high
    assert level1 >= 4
    # the final answers name every row of their group (unless a partial answer failed: then it says so)
    for final in lin.filter(pl.col("note").str.contains("final")).iter_rows(named=True):
        rows = json.loads(final["provenance"])
        assert len({df["topic"][r] for r in rows}) == 1
        assert len(rows) == 40 or "failed" in final["note"]

    before = engine.usage.requests
    again = plan.collect(engine=engine)
    assert engine.usage.requests == before  # every level answered from the exact cache
    assert again.equals(out)


@pytest.mark.smollm2
def test_smollm2_summarizes_headlines_in_two_levels(smollm2_engine):
    from semframe.datasets import bbc_news

    df = bbc_news().group_by("topic", maintain_order=True).head(25).sort("id")
    out = df.semantic.aggregate("Summarize the news of this topic in one sentence.", "title", by="topic",
                                max_tokens=32, context_window=256, engine=smollm2_engine, cache=False)
    assert out.height == 5 and out["aggregate"].null_count() == 0
    lin = sf.last_run().lineage
    assert lin["note"].map_elements(_level, return_dtype=pl.Int64).max() >= 2
    assert (lin["prompt_tokens"] + 32 <= 256).all()
    finals = lin.filter(pl.col("note").str.contains("final"))
    if not finals["note"].str.contains("failed").any():  # (an empty partial answer is a failed one)
        assert sorted(i for p in finals["provenance"] for i in json.loads(p)) == list(range(125))
