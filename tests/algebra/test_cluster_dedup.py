"""semantic.cluster and semantic.dedup: plans, algorithms against gold, lineage, estimates, frontends.

The engine is deterministic and answers from gold labels (a pair is YES iff both records belong
to the same gold entity), and the embedder is a small character-trigram hasher, so every test
is exact and needs no model.
"""

from __future__ import annotations

import json
import math
import re
import zlib

import numpy as np
import pandas as pd
import polars as pl
import pytest

import semframe as sf
from semframe.errors import PlanError
from semframe.physical.cluster import candidate_pairs, entities, pair_bounds, pair_prompt
from semframe.plan.cluster import SemCluster, SemDedup
from semframe.plan.nodes import Scan, Source
from semframe.plan.template import Template


class Trigrams:
    """Character trigrams hashed into 256 buckets: typos stay close, other records do not."""

    def __init__(self) -> None:
        self.calls = 0

    def embed(self, texts):
        self.calls += 1
        out = np.zeros((len(texts), 256), dtype=np.float32)
        for row, text in enumerate(texts):
            padded = f"  {text.lower()} "
            for i in range(len(padded) - 2):
                out[row, zlib.crc32(padded[i:i + 3].encode()) % 256] += 1.0
        return out


class Fixed:
    """Vectors given by hand, by text."""

    def __init__(self, vectors: dict[str, tuple[float, ...]]):
        self.vectors = vectors

    def embed(self, texts):
        return np.array([self.vectors[t] for t in texts], dtype=np.float32)


_PAIR = re.compile(r"Record 1: (.*)\nRecord 2: (.*)\Z", re.S)


def records_of(request) -> tuple[str, str]:
    match = _PAIR.search(request.messages[-1].content)
    assert match, request.messages[-1].content
    return match.group(1), match.group(2)


def gold_engine(gold: dict[str, int], canonical: dict[int, str] | None = None) -> sf.DeterministicEngine:
    """YES iff both records have the same gold entity; a canonical request gets the entity's name."""

    def respond(request) -> str:
        text = request.messages[-1].content
        if text.startswith("Record 1: "):
            a, b = records_of(request)
            return "YES" if gold[a] == gold[b] else "NO"
        first = text.split("\n")[0].split(". ", 1)[1]
        return (canonical or {}).get(gold[first], first)

    return sf.DeterministicEngine(responder=respond)


# Five people, with typos; row 9 has no text.
PEOPLE = [
    ("John Smith, 12 Oak Street, Sydney", 0),
    ("Mary Jones, 4 Elm Road, Perth", 1),
    ("Jon Smith, 12 Oak St, Sydney", 0),
    ("Peter Brown, 77 King Avenue, Hobart", 2),
    ("Mary Jones, 4 Elm Rd, Perth", 1),
    ("Alice Green, 3 Bay Parade, Darwin", 3),
    ("John Smyth, 12 Oak Street, Sydny", 0),
    ("Peter Browne, 77 King Ave, Hobart", 2),
    ("Zoe White, 9 Hill Lane, Cairns", 4),
    (None, None),
]


@pytest.fixture
def people() -> pl.DataFrame:
    return pl.DataFrame({"who": [p[0] for p in PEOPLE], "gold": [p[1] for p in PEOPLE], "n": list(range(len(PEOPLE)))})


@pytest.fixture
def gold() -> dict[str, int]:
    return {t: g for t, g in PEOPLE if t is not None}


def expected_entities(golds: list[int | None]) -> list[int | None]:
    first: dict[int, int] = {}
    return [None if g is None else first.setdefault(g, i) for i, g in enumerate(golds)]


# --------------------------------------------------------------------------- dedup


def test_dedup_finds_the_gold_entities(people, gold):
    engine = gold_engine(gold)
    out = people.semantic.dedup("who", candidates=3, embedder=Trigrams(), engine=engine)
    assert out.columns == ["who", "gold", "n", "entity"]
    assert out.schema["entity"] == pl.Int64
    assert out["entity"].to_list() == expected_entities(people["gold"].to_list())
    assert out["who"].to_list() == people["who"].to_list()  # rows in order, untouched
    # Every request was one pair of records with text; none mentions the null row.
    asked = [records_of(r) for batch in engine.batches for r in batch]
    assert len(asked) == len(set(asked)) and all(a <= b for a, b in asked)  # distinct, canonical order


def test_transitive_closure_joins_chains():
    # a~b and b~c are YES, a~c is NO: still one entity. d is far from all of them.
    vectors = {"a": (1.0, 0.0), "b": (math.cos(0.5), math.sin(0.5)), "c": (math.cos(1.0), math.sin(1.0)),
               "d": (-1.0, 0.1)}
    yes = {("a", "b"), ("b", "c")}
    engine = sf.DeterministicEngine(responder=lambda r: "YES" if records_of(r) in yes else "NO")
    df = pl.DataFrame({"t": ["c", "d", "a", "b"]})
    out = df.semantic.dedup("t", candidates=2, embedder=Fixed(vectors), engine=engine)
    assert out["entity"].to_list() == [0, 1, 0, 0]
    assert ("a", "c") in {records_of(r) for b in engine.batches for r in b}  # asked, said NO, closed anyway


def test_candidates_bound_the_pairs_asked(gold):
    texts = [t for t, _ in PEOPLE if t is not None]
    df = pl.DataFrame({"who": texts})
    n = len(texts)
    for c in (1, 2, 3, n - 1):
        engine = gold_engine(gold)
        df.semantic.dedup("who", candidates=c, embedder=Trigrams(), engine=engine, cache=False)
        asked = engine.requests_seen
        assert math.ceil(n * c / 2) <= asked <= n * c
        assert asked <= n * (n - 1) // 2
    assert asked == n * (n - 1) // 2  # candidates = n - 1 asks every pair once


def test_threshold_keeps_only_similar_pairs(people, gold):
    engine = gold_engine(gold)
    out = people.semantic.dedup("who", candidates=5, threshold=0.99, embedder=Trigrams(), engine=engine)
    assert engine.requests_seen == 0  # no two records are that alike
    assert out["entity"].to_list() == [i if t is not None else None for i, t in enumerate(people["who"])]


def test_candidate_pairs_are_unordered_and_sorted():
    vecs = np.eye(4, dtype=np.float32) + 0.1
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    a, b = candidate_pairs(vecs, 3, None)
    pairs = list(zip(a.tolist(), b.tolist()))
    assert pairs == sorted(set(pairs)) and all(i < j for i, j in pairs) and len(pairs) == 6
    assert entities(5, np.array([0, 3]), np.array([1, 4])).tolist() == [0, 0, 2, 3, 3]
    assert pair_prompt("b", "a") == pair_prompt("a", "b") == "Record 1: a\nRecord 2: b"


def test_identical_pairs_are_asked_once(gold):
    # Two copies of each of two records: pairs with the same two texts are one request.
    df = pl.DataFrame({"who": [PEOPLE[0][0], PEOPLE[1][0], PEOPLE[0][0], PEOPLE[1][0]]})
    engine = gold_engine(gold)
    out = df.semantic.dedup("who", candidates=3, embedder=Trigrams(), engine=engine)
    assert out["entity"].to_list() == [0, 1, 0, 1]
    assert engine.requests_seen == 3  # (A, A), (A, B), (B, B)
    lineage = sf.last_run().lineage
    assert lineage.height == 6 and (lineage["source"] == "dedup").sum() == 3


def test_canonical_values(people, gold):
    engine = gold_engine(gold, canonical={0: "John Smith, 12 Oak Street, Sydney", 1: "Mary Jones, 4 Elm Road, Perth",
                                          2: "Peter Brown, 77 King Avenue, Hobart"})
    out = people.semantic.dedup("who", candidates=3, canonical=True, embedder=Trigrams(), engine=engine)
    assert out.columns[-2:] == ["entity", "entity_canonical"]
    canon = out["entity_canonical"].to_list()
    assert canon[0] == canon[2] == canon[6] == "John Smith, 12 Oak Street, Sydney"
    assert canon[3] == canon[7] == "Peter Brown, 77 King Avenue, Hobart"
    assert canon[5] == "Alice Green, 3 Bay Parade, Darwin" and canon[8] == "Zoe White, 9 Hill Lane, Cairns"
    assert canon[9] is None
    lineage = sf.last_run().lineage
    groups = lineage.filter(pl.col("provenance").str.starts_with("["))
    assert groups.height == 3  # one request per entity of two or more rows
    assert sorted(json.loads(p) for p in groups["provenance"]) == [[0, 2, 6], [1, 4], [3, 7]]


def test_rerun_asks_the_engine_nothing(people, gold):
    engine = gold_engine(gold)
    first = people.semantic.dedup("who", candidates=3, canonical=True, embedder=Trigrams(), engine=engine)
    asked = engine.requests_seen
    assert asked > 0
    again = people.semantic.dedup("who", candidates=3, canonical=True, embedder=Trigrams(), engine=engine)
    assert engine.requests_seen == asked
    assert again.equals(first)
    assert set(sf.last_run().lineage["source"]) == {"exact_cache"}


def test_verification_lineage_names_both_rows_by_scan_id(people, gold):
    engine = gold_engine(gold)
    # After the filter, positions and scan rows differ: lineage names scan rows.
    plan = sf.SemLazyFrame.from_data(people).filter(pl.col("n") >= 2)
    out = plan.semantic.dedup("who", candidates=2, embedder=Trigrams()).collect(engine=engine)
    assert out["entity"].to_list() == [0, 1, 2, 3, 0, 1, 6, None]  # positions in the filtered input
    lineage = sf.last_run().lineage
    assert lineage["row_id"].is_null().all()
    pairs = [json.loads(p) for p in lineage["provenance"]]
    assert all(set(p) == {"left", "right"} and 2 <= p["left"] < p["right"] <= 8 for p in pairs)
    yes = {(p["left"], p["right"]) for p, v in zip(pairs, lineage["value"]) if v == "YES"}
    assert (2, 6) in yes and (3, 7) in yes


def test_verifications_go_out_in_batch_size_rounds(gold):
    texts = [t for t, _ in PEOPLE if t is not None]
    engine = gold_engine(gold)
    pl.DataFrame({"who": texts}).semantic.dedup("who", candidates=8, embedder=Trigrams(), engine=engine,
                                                batch_size=10)
    assert engine.requests_seen == 36 and [len(b) for b in engine.batches] == [10, 10, 10, 6]


def test_dedup_estimate_bounds_the_calls(people, gold):
    plan = people.lazy().semantic.dedup("who", candidates=3, embedder=Trigrams())
    step = plan.estimate().steps[0]
    engine = gold_engine(gold)
    plan.collect(engine=engine)
    n = 9
    assert (step.calls_low, step.calls_high) == (math.ceil(n * 3 / 2), n * 3)
    assert step.calls_low <= engine.requests_seen <= step.calls_high
    assert step.skipped == 1 and not step.rows_exact
    assert "bounded" in plan.explain()


def test_pair_bounds():
    assert pair_bounds(10, 10, 5, False) == (25, 45)  # at most all 45 pairs
    assert pair_bounds(100, 100, 5, False) == (250, 500)
    assert pair_bounds(100, 100, 5, True) == (0, 500)
    assert pair_bounds(20, 2, 5, False) == (1, 3)  # two texts, ten copies each: (A,A), (A,B), (B,B) at most
    assert pair_bounds(1, 1, 5, False) == (0, 0)


# --------------------------------------------------------------------------- cluster


TOPICS = (["the football match ended in a draw", "a late goal won the football cup", "football fans sang all match"]
          + ["the central bank raised interest rates", "interest rates and bank profits rose", "bank shares fell"]
          + ["a new phone chip is faster", "the phone maker showed a chip", "chip makers sell more phones"])


@pytest.fixture
def topics() -> pl.DataFrame:
    order = [0, 3, 6, 1, 4, 7, 2, 5, 8]
    return pl.DataFrame({"text": [TOPICS[i] for i in order] + [None], "topic": [i // 3 for i in order] + [None]})


def label_engine() -> sf.DeterministicEngine:
    return sf.DeterministicEngine(responder=lambda r: "label of " + r.messages[-1].content.split("\n")[0][3:])


def test_cluster_stable_ids_and_k_label_requests(topics):
    engine = label_engine()
    out = topics.semantic.cluster("text", k=3, embedder=Trigrams(), engine=engine)
    assert out.columns == ["text", "topic", "cluster", "cluster_label"]
    assert out.schema["cluster"] == pl.Int32 and out.schema["cluster_label"] == pl.String
    ids = out["cluster"].to_list()
    assert ids[0] == 0 and ids[-1] is None  # numbered in order of first appearance; no text, no cluster
    assert ids[:9] == [0, 1, 2, 0, 1, 2, 0, 1, 2]  # the three topics
    assert engine.requests_seen == 3 and len(engine.batches) == 1  # k requests, one batch
    labels = out["cluster_label"].to_list()
    assert len(set(labels[:9])) == 3 and labels[-1] is None
    assert all(lab == labels[ids.index(c)] for c, lab in zip(ids[:9], labels[:9]))  # one label per cluster
    again = topics.semantic.cluster("text", k=3, embedder=Trigrams(), engine=label_engine(), cache=False)
    assert again["cluster"].to_list() == ids  # the same seed, the same clusters


def test_cluster_label_lineage_names_the_rows_shown(topics):
    out = topics.semantic.cluster("text", k=3, embedder=Trigrams(), engine=label_engine())
    lineage = sf.last_run().lineage
    assert lineage.height == 3 and lineage["row_id"].is_null().all()
    ids = out["cluster"].to_list()
    for shown in (json.loads(p) for p in lineage["provenance"]):
        assert len(shown) == 3 and len({ids[r] for r in shown}) == 1  # rows of one cluster


def test_cluster_rerun_is_free_and_label_false_needs_no_engine(topics):
    engine = label_engine()
    topics.semantic.cluster("text", k=3, embedder=Trigrams(), engine=engine)
    topics.semantic.cluster("text", k=3, embedder=Trigrams(), engine=engine)
    assert engine.requests_seen == 3
    out = topics.semantic.cluster("text", k=2, label=False, name="g", embedder=Trigrams())  # no engine at all
    assert out.columns == ["text", "topic", "g"] and out["g"].null_count() == 1


def test_cluster_estimate_is_exact(topics):
    plan = topics.lazy().semantic.cluster("text", k=3, embedder=Trigrams())
    step = plan.estimate().steps[0]
    assert (step.calls_low, step.calls_high, step.rows_exact, step.skipped) == (3, 3, True, 1)
    engine = label_engine()
    plan.collect(engine=engine)
    assert engine.requests_seen == 3
    unknown = topics.lazy().semantic.map("{text}", name="m").semantic.cluster("m", k=4, embedder=Trigrams())
    step = unknown.estimate().steps[1]
    assert (step.calls_low, step.calls_high, step.rows_exact) == (4, 4, False)


def test_k_above_the_distinct_texts_fails_before_asking(topics):
    engine = label_engine()
    with pytest.raises(PlanError, match=r"k=10 but the column has only 9 distinct"):
        topics.semantic.cluster("text", k=10, embedder=Trigrams(), engine=engine)
    assert engine.requests_seen == 0


# --------------------------------------------------------------------------- plans and errors


def test_bad_arguments_fail_before_any_engine_call(people):
    engine = sf.DeterministicEngine()
    cases = [
        (lambda: people.semantic.dedup("whom", engine=engine), "neither a column"),
        (lambda: people.semantic.cluster("whom", engine=engine), "neither a column"),
        (lambda: people.semantic.cluster("who", k=0, engine=engine), "k must be an integer >= 1"),
        (lambda: people.semantic.cluster("who", k=2.5, engine=engine), "k must be an integer"),
        (lambda: people.semantic.dedup("who", candidates=0, engine=engine), "candidates must be"),
        (lambda: people.semantic.dedup("who", threshold=2, engine=engine), "threshold must be"),
        (lambda: people.semantic.dedup("who", name="gold", engine=engine), "'gold' already exists"),
        (lambda: people.semantic.cluster("who", name="n", engine=engine), "'n' already exists"),
        (lambda: people.semantic.dedup("who", embedder=42, engine=engine), "embedder must be a model name"),
        (lambda: people.semantic.cluster("who", embedder=" ", engine=engine), "embedder must name"),
        (lambda: people.semantic.dedup("who", question=" ", engine=engine), "question must be"),
    ]
    for call, message in cases:
        with pytest.raises(PlanError, match=message):
            call()
    with pytest.raises(TypeError, match="unexpected argument"):
        people.semantic.dedup("who", k=3, engine=engine)
    assert engine.requests_seen == 0


def test_node_properties():
    scan = Scan(Source.from_data(pl.DataFrame({"t": ["a"], "x": [1]})))
    d = SemDedup(scan, Template.for_column("t"), canonical=True)
    c = SemCluster(scan, Template.for_column("t"), k=2)
    for node in (d, c):
        assert node.rows == "aligned" and not node.elementwise and node.removable_if_unread
        assert node.unchanged == {"t", "x"}
        assert node.columns_needed(frozenset({"x"})) == ({"x", "t"},)
    assert d.produces == {"entity", "entity_canonical"} and c.produces == {"cluster", "cluster_label"}
    assert c.uses_llm and not SemCluster(scan, Template.for_column("t"), k=2, with_label=False).uses_llm
    assert d.columns == ("t", "x", "entity", "entity_canonical")


# --------------------------------------------------------------------------- frontends


def test_pandas_keeps_index_and_columns(people, gold):
    pdf = people.to_pandas()
    pdf.index = [f"r{i}" for i in range(len(pdf))]
    out = pdf.semantic.dedup("who", candidates=3, embedder=Trigrams(), engine=gold_engine(gold))
    assert list(out.index) == list(pdf.index) and list(out.columns) == ["who", "gold", "n", "entity"]
    assert out["entity"].tolist()[:9] == expected_entities(people["gold"].to_list())[:9]
    assert out["entity"].iloc[9] is pd.NA and str(out["entity"].dtype) == "Int64"
    clustered = pdf.semantic.cluster("who", k=2, embedder=Trigrams(), engine=label_engine())
    assert list(clustered.columns) == ["who", "gold", "n", "cluster", "cluster_label"]
    assert isinstance(clustered, pd.DataFrame) and list(clustered.index) == list(pdf.index)


def test_lazy_and_eager_agree(people, gold):
    eager = people.semantic.dedup("who", candidates=3, embedder=Trigrams(), engine=gold_engine(gold))
    lazy = people.lazy().semantic.dedup("who", candidates=3, embedder=Trigrams())
    assert isinstance(lazy, sf.SemLazyFrame)
    assert lazy.collect(engine=gold_engine(gold)).equals(eager)
    chained = (people.lazy().semantic.dedup("who", candidates=3, embedder=Trigrams())
               .semantic.cluster("who", k=2, label=False, embedder=Trigrams())
               .collect(engine=gold_engine(gold)))
    assert chained["entity"].equals(eager["entity"]) and "cluster" in chained.columns


def test_template_of_several_columns(gold):
    df = pl.DataFrame({"name": ["John Smith", "Jon Smith", "Mary Jones"], "city": ["Sydney", "Sydney", "Perth"]})
    golds = {"John Smith in Sydney": 0, "Jon Smith in Sydney": 0, "Mary Jones in Perth": 1}
    out = df.semantic.dedup("{name} in {city}", candidates=2, embedder=Trigrams(), engine=gold_engine(golds))
    assert out["entity"].to_list() == [0, 0, 2]


def test_an_embedding_engine_is_accepted(people, gold):
    embedding = pytest.importorskip("semframe.engines.embedding")
    out = people.semantic.dedup("who", candidates=3, embedder=embedding.HashingEmbedder(dimension=256),
                                engine=gold_engine(gold))
    assert out["entity"].to_list() == expected_entities(people["gold"].to_list())


def test_progress_and_metrics_count_every_row(people, gold):
    # (The progress line shows only for runs longer than its delay: not asserted here.)
    people.semantic.dedup("who", candidates=2, embedder=Trigrams(), engine=gold_engine(gold), progress=True)
    metrics = sf.last_run().metrics.row(0, named=True)
    assert metrics["rows_in"] == metrics["rows_out"] == 10 and metrics["operator"] == "dedup"


def test_a_budget_stops_between_rounds_and_a_rerun_resumes(gold):
    texts = [t for t, _ in PEOPLE if t is not None]
    df = pl.DataFrame({"who": texts})
    engine = gold_engine(gold)
    with pytest.raises(sf.BudgetExceeded) as err:
        df.semantic.dedup("who", candidates=8, embedder=Trigrams(), engine=engine, batch_size=10, max_tokens=1200)
    asked = engine.requests_seen
    assert asked in (10, 20, 30) and err.value.result.df.height == 0  # stopped before a batch; no rows yet
    out = df.semantic.dedup("who", candidates=8, embedder=Trigrams(), engine=engine, batch_size=10)
    assert engine.requests_seen - asked == 36 - asked  # the answers given before the stop came from the cache
    assert out["entity"].to_list() == expected_entities([g for t, g in PEOPLE if t is not None])


def test_plans_round_trip_through_a_plan_file(people):
    from semframe.plan.serialize import dumps, loads

    for plan in (people.lazy().semantic.dedup("who", candidates=3, threshold=0.5, canonical=True, question="Same?"),
                 people.lazy().semantic.cluster("{who} ({n})", k=3, label=False, seed=7, name="g")):
        back = loads(dumps(plan.plan))
        assert type(back) is type(plan.plan)
        assert back.describe() == plan.plan.describe() and back.columns == plan.plan.columns
        assert back.template == plan.plan.template
    with pytest.raises(PlanError, match="embedder"):
        dumps(people.lazy().semantic.dedup("who", embedder=Trigrams()).plan)


def test_the_benchmark_scores_pairs():
    from benchmarks.dedup_febrl import pairwise

    precision, recall, tp, predicted, true = pairwise([0, 0, 2, 3], [1, 1, 1, 2])
    assert (tp, predicted, true) == (1, 1, 3) and precision == 1.0 and recall == pytest.approx(1 / 3)
    assert pairwise([0, 0, 0], [5, 6, 6])[:2] == (pytest.approx(1 / 3), 1.0)
