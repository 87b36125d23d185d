"""The semantic cache: near-duplicates within a run and across runs, lineage, audits.

Tests marked ``embeddings`` load the real all-MiniLM-L6-v2 model (once per session).
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

import semframe as sf
from semframe.cache import SemanticCache, audit_semantic_cache
from semframe.cache.index import VectorIndex
from semframe.engines.base import Completion

TEXTS = [
    "The stock market fell sharply on Monday after the bank raised rates.",
    "Chelsea won the cup final with a late goal from their striker.",
    "The stock market fell sharply on Monday, after the bank raised rates!",
    "A new phone with a foldable screen goes on sale next week.",
    "Chelsea won the cup final with a late goal from its striker.",
]


def _plan(df, threshold=0.9, **kw):
    return df.lazy().semantic.classify("text", ["business", "sport", "tech"], instruction="Topic?",
                                       semantic_cache=threshold, **kw)


# ---------------------------------------------------------------- without the model


def _unit(rows):
    v = np.array(rows, dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_plan_clusters_within_the_threshold_of_the_representative():
    cache = SemanticCache("k", 0.95, embedder=None)
    vecs = _unit([[1, 0, 0], [1, 0.1, 0], [1, 0.4, 0.4], [0, 1, 0]])
    plan = cache.plan(vecs)
    assert plan.representatives == [0, 2, 3] and set(plan.members) == {1}
    assert plan.members[1][0] == 0 and plan.members[1][1] >= 0.95


def test_added_answers_are_found_later_with_their_row():
    cache = SemanticCache("k", 0.95, embedder=None)
    vecs = _unit([[1, 0, 0], [0, 1, 0]])
    cache.add(vecs, [Completion("A", "A", "stop"), Completion(None, None, "error", error="x")], [7, 8])
    assert len(cache) == 1  # the failed answer is not kept
    plan = cache.plan(_unit([[1, 0.05, 0], [0, 1, 0.01]]))
    assert plan.hits[0].source_row_id == 7 and plan.hits[0].completion.value == "A"
    assert plan.representatives == [1]


def test_vector_index_switches_to_ivf_and_still_finds_near_duplicates():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(0)
    data = rng.standard_normal((3000, 32)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    index = VectorIndex(32, exact_limit=1000)
    index.add(data[:500])
    assert index.kind == "exact"
    index.add(data[500:])
    assert index.kind == "ivf" and len(index) == 3000
    queries = data[:200] + 0.01 * rng.standard_normal((200, 32)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    sims, ids = index.search(queries)
    assert (ids == np.arange(200)).mean() > 0.97 and sims.min() > 0.9


# ---------------------------------------------------------------- with the model


@pytest.mark.embeddings
def test_near_duplicates_in_a_run_go_to_the_engine_once(embedder, engine):
    df = pl.DataFrame({"text": TEXTS})
    result = _plan(df).run(engine, cache=False)
    assert engine.requests_seen == 3
    lin = result.lineage.sort("row_id")
    assert lin["source"].to_list() == ["engine", "engine", "semantic_cache", "engine", "semantic_cache"]
    assert lin["source_row_id"].to_list() == [None, None, 0, None, 1]
    assert all(s >= 0.9 for s in lin["similarity"].to_list()[2::2])
    out = result.df["classify"].to_list()
    assert out[2] == out[0] and out[4] == out[1]
    assert result.metrics["semantic_cache_hits"].to_list() == [2]


@pytest.mark.embeddings
def test_clusters_span_batches(embedder, engine):
    df = pl.DataFrame({"text": TEXTS})
    result = _plan(df).run(engine, cache=False, batch_size=2)
    assert engine.requests_seen == 3
    assert result.lineage.sort("row_id")["source_row_id"].to_list() == [None, None, 0, None, 1]


@pytest.mark.embeddings
def test_answers_persist_across_runs_and_stay_per_step(embedder, engine):
    _plan(pl.DataFrame({"text": TEXTS[:2]})).run(engine)
    later = pl.DataFrame({"text": [TEXTS[2], TEXTS[4]]})
    result = _plan(later).run(engine)
    assert engine.requests_seen == 2
    lin = result.lineage
    assert lin["source"].to_list() == ["semantic_cache"] * 2
    assert lin["source_row_id"].null_count() == 2 and lin["similarity"].min() >= 0.9
    # Another instruction is another step: nothing is reused.
    other = later.lazy().semantic.classify("text", ["business", "sport", "tech"], instruction="Subject?",
                                           semantic_cache=0.9)
    other.run(engine)
    assert engine.requests_seen == 4


@pytest.mark.embeddings
def test_threshold_one_reuses_only_identical_texts(embedder, engine):
    df = pl.DataFrame({"text": TEXTS})
    _plan(df, threshold=1.0).run(engine, cache=False)
    assert engine.requests_seen == 5


@pytest.mark.embeddings
def test_without_the_setting_nothing_is_embedded(engine):
    from semframe.cache import AnswerStore, answers_dir

    pl.DataFrame({"text": TEXTS}).lazy().semantic.classify("text", ["a", "b"]).run(engine)
    assert engine.requests_seen == 5
    assert AnswerStore(answers_dir()).counts()["embeddings"] == 0


@pytest.mark.embeddings
def test_embeddings_are_cached(embedder):
    from semframe.cache import AnswerStore, answers_dir

    store = AnswerStore(answers_dir())
    first = embedder.embed(TEXTS[:3], store)
    assert store.counts()["embeddings"] == 3
    again = embedder.embed(TEXTS[:3] + TEXTS[:1], store)
    assert np.allclose(again[:3], first, atol=1e-6) and store.counts()["embeddings"] == 3


@pytest.mark.embeddings
def test_audit_reports_agreement(embedder):
    df = pl.DataFrame({"text": TEXTS})
    same = sf.DeterministicEngine(responder=lambda r: "sport" if "Chelsea" in r.prompt_text else "business")
    report = audit_semantic_cache(_plan(df), engine=same, k=10)
    assert (report.hits, report.checked, report.agreed) == (2, 2, 2) and report.agreement == 1.0
    assert report.details.columns == ["row_id", "source_row_id", "similarity", "text", "cached", "fresh", "agree"]
    assert "2 agreed (100.0%)" in str(report)
