"""cluster and dedup on real vLLM (CPU build), the tiny random model: answers are random, so what
must hold is the plumbing -- every verification parses as YES/NO, entity ids are a valid closure
of the YES pairs, the number of requests is what the algorithm says, and a rerun asks nothing."""

from __future__ import annotations

import json
import zlib

import numpy as np
import polars as pl
import pytest

import semframe as sf

pytestmark = pytest.mark.vllm


class Trigrams:
    def embed(self, texts):
        out = np.zeros((len(texts), 128), dtype=np.float32)
        for row, text in enumerate(texts):
            padded = f"  {text.lower()} "
            for i in range(len(padded) - 2):
                out[row, zlib.crc32(padded[i:i + 3].encode()) % 128] += 1.0
        return out


RECORDS = ["John Smith, Sydney", "Jon Smith, Sydney", "Mary Jones, Perth", "Mary Jones, Perth WA",
           "Peter Brown, Hobart", None]


def test_dedup_on_vllm(tiny_vllm_engine):
    df = pl.DataFrame({"who": RECORDS})
    before = tiny_vllm_engine.usage.requests
    out = df.semantic.dedup("who", candidates=2, embedder=Trigrams(), engine=tiny_vllm_engine)
    asked = tiny_vllm_engine.usage.requests - before
    lineage = sf.last_run().lineage
    assert asked == lineage.height and 5 <= asked <= 10  # n*c/2 .. n*c distinct pairs of 5 records
    assert set(lineage["value"].drop_nulls()) <= {"YES", "NO"}
    entity = out["entity"].to_list()
    assert entity[5] is None and all(entity[e] == e for e in entity[:5])  # ids are the entities' first rows
    for pair, value in zip(lineage["provenance"], lineage["value"]):
        p = json.loads(pair)
        if value == "YES":
            assert entity[p["left"]] == entity[p["right"]]
    again = df.semantic.dedup("who", candidates=2, embedder=Trigrams(), engine=tiny_vllm_engine)
    assert tiny_vllm_engine.usage.requests - before == asked and again.equals(out)


def test_cluster_on_vllm(tiny_vllm_engine):
    df = pl.DataFrame({"who": RECORDS})
    before = tiny_vllm_engine.usage.requests
    out = df.semantic.cluster("who", k=2, embedder=Trigrams(), engine=tiny_vllm_engine, cache=False)
    assert tiny_vllm_engine.usage.requests - before == 2
    ids = out["cluster"].to_list()
    assert ids[0] == 0 and set(ids[:5]) == {0, 1} and ids[5] is None
    labels = out["cluster_label"].to_list()
    assert all(isinstance(labels[i], str) or labels[i] is None for i in range(5)) and labels[5] is None
    assert len({labels[i] for i in range(5) if ids[i] == 0}) == 1
    assert (sf.last_run().lineage["output_tokens"] <= 16).all()


def test_dedup_smoke_on_smollm2(smollm2_engine):
    """The packaged model through the whole pipeline (its answers are not judged: it is too weak)."""
    df = pl.DataFrame({"who": RECORDS})
    out = df.semantic.dedup("who", candidates=1, canonical=True, embedder=Trigrams(), engine=smollm2_engine,
                            cache=False)
    lineage = sf.last_run().lineage
    pairs = lineage.filter(pl.col("provenance").str.starts_with("{"))
    assert 3 <= pairs.height <= 5 and set(pairs["value"].drop_nulls()) <= {"YES", "NO"}
    entity = out["entity"].to_list()
    assert all(entity[e] == e for e in entity[:5]) and entity[5] is None
    canon = out["entity_canonical"].to_list()
    assert canon[5] is None and all(isinstance(c, str) or c is None for c in canon[:5])
