"""semantic.join on real vLLM (CPU build), with the tiny random model: the answers are random,
what must hold is the plumbing -- every pair asked once, answers that parse (YES/NO, and the
classify algorithm's JSON list of item numbers under constrained decoding), output rows that
are exactly the YES pairs, and a rerun that never reaches the engine."""

from __future__ import annotations

import json

import polars as pl
import pytest

import semframe as sf

pytestmark = pytest.mark.vllm

TICKETS = pl.DataFrame({"ticket": ["my phone will not charge", "the blender is loud", "kettle leaks"]})
PRODUCTS = pl.DataFrame({"product": ["phone", "blender", "kettle"]})
TEMPLATE = "Is {left.ticket} about {right.product}?"


def test_nested_loop_join_on_vllm(tiny_vllm_engine):
    before = tiny_vllm_engine.usage.requests
    out = TICKETS.semantic.join(PRODUCTS, TEMPLATE, algorithm="nested_loop", engine=tiny_vllm_engine)
    run = sf.last_run()
    assert tiny_vllm_engine.usage.requests - before == 9
    lineage = run.lineage
    assert set(lineage["value"].to_list()) <= {"YES", "NO"}
    yes = [json.loads(p) for p, v in zip(lineage["provenance"], lineage["value"]) if v == "YES"]
    assert run.row_ids.to_list() == yes  # the output is exactly the YES pairs, in (left, right) order
    assert out.height == len(yes)
    # rerun: every pair from the exact cache
    again = TICKETS.semantic.join(PRODUCTS, TEMPLATE, algorithm="nested_loop", engine=tiny_vllm_engine)
    assert tiny_vllm_engine.usage.requests - before == 9
    assert again.equals(out)


def test_classify_join_answers_parse_under_constrained_decoding(tiny_vllm_engine):
    out = TICKETS.semantic.join(PRODUCTS, TEMPLATE, algorithm="classify", how="left", engine=tiny_vllm_engine,
                                cache=False)
    lineage = sf.last_run().lineage
    assert lineage.height == 3
    # The schema bounds the answer (at most 3 numbers, each 1..3): it always finishes and parses.
    assert lineage["finish_reason"].to_list() == ["stop"] * 3
    for value in lineage["value"]:
        matches = json.loads(value)["matches"]
        assert all(1 <= k <= 3 for k in matches)
    assert out.height >= 3  # a left join keeps every ticket
    assert set(out["ticket"]) == set(TICKETS["ticket"])


def test_blocking_join_on_smollm2(smollm2_engine, monkeypatch):
    # The real default model through blocking (a hashing embedder keeps the test fast): every
    # candidate pair and audit pair asked once, answers YES/NO, the output exactly the YES pairs.
    import zlib

    import numpy as np

    from semframe.physical import join as join_physical

    class Letters:
        def embed(self, texts, store=None):
            out = np.zeros((len(texts), 64), dtype=np.float32)
            for i, t in enumerate(texts):
                for k in range(len(t) - 2):
                    out[i, zlib.crc32(t[k:k + 3].encode()) % 64] += 1.0
            return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)

    embedder = Letters()
    monkeypatch.setattr(join_physical, "default_embedder", lambda: embedder)
    products = pl.DataFrame({"product": ["phone", "blender", "kettle", "laptop", "camera"]})
    before = smollm2_engine.usage.requests
    TICKETS.semantic.join(products, TEMPLATE, algorithm="blocking", candidates=2, audit=3, engine=smollm2_engine,
                          cache=False)
    run = sf.last_run()
    assert smollm2_engine.usage.requests - before == 3 * 2 + 3
    lineage = run.lineage
    assert set(lineage["value"].to_list()) <= {"YES", "NO"}
    yes = sorted((json.loads(p)["left"], json.loads(p)["right"]) for p, v in zip(lineage["provenance"], lineage["value"])
                 if v == "YES")
    assert [(r["left"], r["right"]) for r in run.row_ids.to_list()] == yes
    assert run.step_metrics[0].notes["audit_pairs"] == 3
