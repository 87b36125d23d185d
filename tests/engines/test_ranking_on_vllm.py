"""semantic.topk / semantic.sort on real vLLM (CPU build), on the tiny random model.

Its answers are random, so what must hold is the plumbing: every comparison answer is A or B
(constrained decoding), the result is k input rows with ranks 1..k, each round is one engine
batch, and a rerun never reaches the engine.
"""

from __future__ import annotations

import json

import polars as pl
import pytest

import semframe as sf

pytestmark = pytest.mark.vllm

COMPLAINTS = ["The app crashes when I pay", "Font is a bit small", "I was charged twice",
              "My account was hacked", "Dark mode please"]


def test_topk_on_the_tiny_model(tiny_vllm_engine):
    df = pl.DataFrame({"text": COMPLAINTS, "id": list(range(5))})
    before = tiny_vllm_engine.usage.requests
    out = df.semantic.topk(2, "Which complaint is more urgent: {a} or {b}?", column="text",
                           engine=tiny_vllm_engine)
    asked = tiny_vllm_engine.usage.requests - before
    assert out.columns == ["text", "id", "rank"] and out["rank"].to_list() == [1, 2]
    assert set(out["text"].to_list()) <= set(COMPLAINTS) and out["id"].n_unique() == 2
    run = sf.last_run()
    records = run.lineage.filter(pl.col("operator") == "topk")
    assert set(records["value"].to_list()) <= {"A", "B"}
    assert records.height == asked and asked % 2 == 0  # both orders, each asked by the engine once
    assert all(set(json.loads(p)) == {"a", "b"} for p in records["provenance"].to_list())
    assert run.metrics["engine_batches"][0] >= 1
    # A rerun: every comparison from the exact cache.
    again = df.semantic.topk(2, "Which complaint is more urgent: {a} or {b}?", column="text",
                             engine=tiny_vllm_engine)
    assert tiny_vllm_engine.usage.requests - before == asked
    assert again.equals(out)


@pytest.mark.smollm2
def test_sort_on_smollm2(smollm2_engine):
    # A real (weak) model: whatever it prefers, the order is a permutation of the rows, every
    # answer is A or B, and a tie (the two orders disagreeing) is recorded as such.
    df = pl.DataFrame({"text": COMPLAINTS})
    out = df.semantic.sort("Which complaint is more urgent: {a} or {b}?", column="text", engine=smollm2_engine,
                           cache=False)
    assert sorted(out["text"].to_list()) == sorted(COMPLAINTS) and out["rank"].to_list() == [1, 2, 3, 4, 5]
    records = sf.last_run().lineage.filter(pl.col("operator") == "sort")
    assert set(records["value"].to_list()) <= {"A", "B"}
    assert all(n.startswith("winner: ") for n in records["note"].to_list())
