"""semantic.topk and semantic.sort: plan checks, the algorithm against a known order, ties,
positional bias, rounds as engine batches, reruns, lineage, estimates and every frontend.

The comparator engines answer from a hidden score written in each item's text (``"... #17"``),
so the true order is known and any wrong comparison bookkeeping shows as a wrong order.
"""

from __future__ import annotations

import json
import random
import re

import pandas as pd
import polars as pl
import pytest

import semframe as sf
from semframe.errors import PlanError
from semframe.physical.ranking import (
    expected_comparisons,
    expected_rounds,
    quickselect_rounds,
    worst_comparisons,
)

QUESTION = "Which item scores higher: {a} or {b}?"


def score_of(text: str) -> int:
    return int(re.search(r"#(\d+)$", text).group(1))


def shown(request) -> tuple[str, str]:
    """The two items of a comparison request (A, B)."""
    user = request.messages[-1].content
    a, b = user.split("\n\nB: ")
    return a.removeprefix("A: "), b


def by_score(request) -> str:
    """The truthful comparator: the higher hidden score wins; on equal scores it answers A."""
    a, b = shown(request)
    return "A" if score_of(a) >= score_of(b) else "B"


def always_a(request) -> str:
    return "A"


def items(scores) -> pl.DataFrame:
    return pl.DataFrame({"text": [f"item {i} #{s}" for i, s in enumerate(scores)], "pos": list(range(len(scores)))})


def true_order(scores) -> list[int]:
    """Positions best first; equal scores in input order."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def shuffled(n: int, seed: int = 1) -> list[int]:
    scores = list(range(n))
    random.Random(seed).shuffle(scores)
    return scores


# --------------------------------------------------------------------------- the plan


def test_question_must_name_a_and_b():
    df = items([1, 2])
    hint = r"must name both items as \{a\} and \{b\}.*column=\.\.\. \(e\.g\. column='text'\)"
    with pytest.raises(PlanError, match=hint):
        df.lazy().semantic.topk(1, "Which is better: {text}?", column="text")
    with pytest.raises(PlanError, match=r"semantic.sort: the question 'Rank {a}'"):
        df.lazy().semantic.sort("Rank {a}", column="text")


def test_bad_arguments_are_named():
    lf = items([1, 2]).lazy()
    with pytest.raises(PlanError, match="semantic.topk: 'titel' is neither a column.*columns are 'text', 'pos'"):
        lf.semantic.topk(1, QUESTION, column="titel")
    with pytest.raises(PlanError, match="k must be a non-negative integer, got -1"):
        lf.semantic.topk(-1, QUESTION, column="text")
    with pytest.raises(PlanError, match="algorithm must be one of 'auto', 'quickselect', 'score'"):
        lf.semantic.topk(1, QUESTION, column="text", algorithm="heap")
    with pytest.raises(PlanError, match="the rank column 'pos' already exists"):
        lf.semantic.sort(QUESTION, column="text", name="pos")
    with pytest.raises(TypeError, match="unexpected argument 'kk'"):
        lf.semantic.topk(1, QUESTION, column="text", kk=3)


def test_schema_and_column_template():
    lf = pl.DataFrame({"title": ["x #1", "y #2"], "body": ["b", "c"]}).lazy()
    plan = lf.semantic.topk(1, QUESTION, column="{title} / {body}", name="r")
    assert plan.collect_schema() == {"title": pl.String, "body": pl.String, "r": pl.UInt32}


# --------------------------------------------------------------------------- the algorithm


@pytest.mark.parametrize("both_orders", [True, False])
@pytest.mark.parametrize("n,k", [(1, 1), (2, 1), (7, 3), (40, 5), (40, 40), (25, 60), (9, 0)])
def test_topk_is_the_true_top_k(n, k, both_orders):
    scores = shuffled(n, seed=n + k)
    out = items(scores).semantic.topk(k, QUESTION, column="text", both_orders=both_orders,
                                      engine=sf.DeterministicEngine(responder=by_score))
    assert out["pos"].to_list() == true_order(scores)[:k]
    assert out["rank"].to_list() == list(range(1, min(n, k) + 1))


@pytest.mark.parametrize("both_orders", [True, False])
def test_sort_is_the_true_order(both_orders):
    scores = shuffled(60, seed=3)
    out = items(scores).semantic.sort(QUESTION, column="text", both_orders=both_orders,
                                      engine=sf.DeterministicEngine(responder=by_score))
    assert out["pos"].to_list() == true_order(scores)
    assert out["rank"].to_list() == list(range(1, 61))


@pytest.mark.parametrize("both_orders", [True, False])
def test_ties_go_to_the_earlier_row(both_orders):
    # Equal scores: the comparator answers A, so asked both ways the answers disagree (a tie);
    # asked once, the earlier row is A. Either way the earlier row ranks first.
    scores = [3, 1, 3, 2, 1, 3, 2, 2, 1, 3]
    out = items(scores).semantic.sort(QUESTION, column="text", both_orders=both_orders,
                                      engine=sf.DeterministicEngine(responder=by_score))
    assert out["pos"].to_list() == true_order(scores)


def test_a_position_biased_model_leaves_input_order_with_both_orders():
    scores = shuffled(12, seed=5)
    engine = sf.DeterministicEngine(responder=always_a)
    out = items(scores).semantic.topk(4, QUESTION, column="text", engine=engine)
    assert out["pos"].to_list() == [0, 1, 2, 3]  # every comparison a tie: the earlier row wins
    notes = sf.last_run().lineage.filter(pl.col("operator") == "topk")["note"].unique().to_list()
    assert all("tie: the two orders disagree; the earlier row wins" in n for n in notes)
    # Asked in one order only, the bias decides instead of the items: also input order here,
    # because the earlier row is always shown as A -- the bias is not cancelled, only made stable.
    out = items(scores).semantic.topk(4, QUESTION, column="text", both_orders=False, engine=engine)
    assert out["pos"].to_list() == [0, 1, 2, 3]
    assert not any("tie" in n for n in sf.last_run().lineage["note"].to_list())


def test_a_b_biased_model_is_cancelled_but_a_truthful_one_wins():
    # A model that prefers B unless the gap is large: both orders agree only on large gaps.
    def biased(request):
        a, b = shown(request)
        return "A" if score_of(a) - score_of(b) > 5 else "B"

    scores = [0, 20, 10, 30]
    out = items(scores).semantic.sort(QUESTION, column="text", engine=sf.DeterministicEngine(responder=biased))
    assert out["pos"].to_list() == [3, 1, 2, 0]  # every gap is 10: both orders agree


def test_comparisons_within_bounds_and_each_round_one_engine_batch():
    n, k = 300, 10
    scores = shuffled(n, seed=11)
    engine = sf.DeterministicEngine(responder=by_score)
    out = items(scores).semantic.topk(k, QUESTION, column="text", both_orders=False, engine=engine)
    assert out["pos"].to_list() == true_order(scores)[:k]
    calls = engine.requests_seen
    assert calls <= 3 * n  # the bound, for this (fixed-seed) run
    assert calls <= worst_comparisons(n, k)
    # The same rounds as the pure algorithm: one engine batch per round.
    decide = lambda pairs: {(i, j): scores[i] > scores[j] for i, j in pairs}  # noqa: E731
    order, rounds = quickselect_rounds(n, k, decide)
    assert order == true_order(scores)[:k]
    assert len(engine.batches) == rounds == sf.last_run().metrics["engine_batches"][0]
    assert sum(len(b) for b in engine.batches) == calls
    # No pair asked twice.
    pairs = [frozenset(shown(r)) for b in engine.batches for r in b]
    assert len(pairs) == len(set(pairs))


def test_both_orders_asks_each_pair_twice_in_the_same_round():
    scores = shuffled(30, seed=2)
    engine = sf.DeterministicEngine(responder=by_score)
    items(scores).semantic.topk(3, QUESTION, column="text", engine=engine)
    for batch in engine.batches:
        seen = [shown(r) for r in batch]
        assert len(seen) % 2 == 0
        assert set(seen) == {(b, a) for a, b in seen}


def test_rerun_makes_no_engine_call_and_asks_canonical_order():
    scores = shuffled(50, seed=4)
    engine = sf.DeterministicEngine(responder=by_score)
    first = items(scores).semantic.topk(5, QUESTION, column="text", both_orders=False, engine=engine)
    asked = engine.requests_seen
    assert asked > 0
    again = items(scores).semantic.topk(5, QUESTION, column="text", both_orders=False, engine=engine)
    assert engine.requests_seen == asked
    assert again.equals(first)
    assert set(sf.last_run().lineage["source"].to_list()) == {"exact_cache"}
    # One order: the earlier row is always A, so the cache key is the same whichever row was the pivot.
    prov = [json.loads(p) for p in sf.last_run().lineage["provenance"].to_list()]
    assert all(p["a"] < p["b"] for p in prov)


def test_duplicate_items_are_asked_once():
    df = pl.DataFrame({"text": ["x #1", "y #5", "x #1", "z #3", "y #5"]})
    engine = sf.DeterministicEngine(responder=by_score)
    out = df.semantic.sort(QUESTION, column="text", both_orders=False, engine=engine)
    assert out["text"].to_list() == ["y #5", "y #5", "z #3", "x #1", "x #1"]
    sources = sf.last_run().lineage["source"].to_list()
    assert "dedup" in sources
    assert engine.requests_seen == sources.count("engine")


def test_null_items_are_never_compared():
    df = pl.DataFrame({"text": ["a #1", None, "b #3", "  ", "c #2"]})
    engine = sf.DeterministicEngine(responder=by_score)
    top = df.semantic.topk(5, QUESTION, column="text", engine=engine)
    assert top["text"].to_list() == ["b #3", "c #2", "a #1"]
    everything = df.semantic.sort(QUESTION, column="text", engine=engine)
    assert everything["text"].to_list() == ["b #3", "c #2", "a #1", None, "  "]
    assert everything["rank"].to_list() == [1, 2, 3, None, None]
    lineage = sf.last_run().lineage
    skipped = lineage.filter(pl.col("source") == "skipped")
    assert skipped["row_id"].to_list() == [1, 3]
    assert skipped["error"].to_list() == ["null input in column 'text'", "empty input text"]
    assert all(None not in shown(r) for b in engine.batches for r in b)


# --------------------------------------------------------------------------- lineage


def test_lineage_names_both_rows_and_the_winner():
    scores = shuffled(20, seed=8)
    items(scores).semantic.topk(3, QUESTION, column="text", engine=sf.DeterministicEngine(responder=by_score))
    run = sf.last_run()
    assert run.row_ids.to_list() == true_order(scores)[:3]  # an output row's provenance is its own row
    records = run.lineage.filter(pl.col("operator") == "topk")
    assert records["row_id"].null_count() == records.height  # pairs: provenance names them
    prov = [json.loads(p) for p in records["provenance"].to_list()]
    assert all(set(p) == {"a", "b"} and p["a"] != p["b"] for p in prov)
    # The comparisons the best row won: every comparison it took part in.
    best = true_order(scores)[0]
    won = [p for p, note in zip(prov, records["note"].to_list()) if p[note.split()[1]] == best]
    took_part = [p for p in prov if best in (p["a"], p["b"])]
    assert won == took_part and took_part
    # A winner named in a note always has the higher score.
    for p, note in zip(prov, records["note"].to_list()):
        side = note.split()[1]
        other = "b" if side == "a" else "a"
        assert scores[p[side]] > scores[p[other]]


# --------------------------------------------------------------------------- the score algorithm


def test_score_rates_each_row_once_in_one_round():
    scores = [3, 9, 1, 9, 5, 7]

    def rate(request):
        return str(score_of(request.messages[-1].content) + 1)

    engine = sf.DeterministicEngine(responder=rate)
    out = items(scores).semantic.topk(3, QUESTION, column="text", algorithm="score", engine=engine)
    assert out["pos"].to_list() == [1, 3, 5]  # 9, 9 (tie: input order), 7
    assert engine.requests_seen == len(scores) and len(engine.batches) == 1
    assert "Rate the item below from 1" in engine.batches[0][0].prompt_text


# --------------------------------------------------------------------------- estimate and explain


def test_estimate_counts_the_expected_and_worst_calls():
    n, k = 100, 5
    plan = items(shuffled(n)).lazy().semantic.topk(k, QUESTION, column="text")
    (step,) = plan.estimate().steps
    assert step.calls_low == round(2 * expected_comparisons(n, k))
    assert step.calls_high == 2 * worst_comparisons(n, k)
    engine = sf.DeterministicEngine(responder=by_score)
    plan.collect(engine=engine)
    assert step.calls_low / 3 < engine.requests_seen <= step.calls_high
    score = items(shuffled(n)).lazy().semantic.topk(k, QUESTION, column="text", algorithm="score")
    (step,) = score.estimate().steps
    assert step.calls_low == step.calls_high == n and step.rows_exact


def test_expected_comparisons_match_a_simulation():
    for n, k in [(200, 10), (100, 100), (50, 1)]:
        runs = []
        for seed in range(30):
            scores = shuffled(n, seed)
            count = [0]

            def decide(pairs, scores=scores, count=count):
                count[0] += len(pairs)
                return {(i, j): scores[i] > scores[j] for i, j in pairs}

            quickselect_rounds(n, k, decide, seed=seed)
            runs.append(count[0])
        mean = sum(runs) / len(runs)
        assert abs(mean - expected_comparisons(n, k)) < 0.15 * expected_comparisons(n, k)
    assert expected_rounds(1000, 10) < expected_rounds(1000, 1000)


def test_explain_shows_the_algorithm_and_both_estimates():
    df = items(shuffled(1000))
    text = df.lazy().semantic.topk(10, QUESTION, column="text").explain()
    assert "SEMANTIC TOPK 10 -> rank (step 0) [quickselect (auto), both orders" in text
    from semframe.physical.planner import plan_physical
    from semframe.plan.nodes import Scan, Source
    from semframe.plan.ranking import SemTopK
    from semframe.plan.template import Template

    node = SemTopK(Scan(Source.from_data(df)), Template.parse(QUESTION), Template.for_column("text"), 10)
    line = plan_physical(node).describe()
    expected = expected_comparisons(1000, 10)
    assert 1.2 * 1000 < expected < 1.4 * 1000  # the sampled first pivot: ~1.3n, not partial quicksort's ~2.1n
    assert f"~{expected:,.0f} comparisons x2 orders = ~{round(2 * expected):,} calls (at most 999,000)" in line
    assert f"in ~{expected_rounds(1000, 10)} rounds for 1,000 rows; score would be 1,000 calls" in line
    assert "~1.3n comparisons x2 orders for n rows" in text


# --------------------------------------------------------------------------- frontends


def test_eager_lazy_and_pandas_agree():
    scores = shuffled(15, seed=9)
    df = items(scores)
    engine = sf.DeterministicEngine(responder=by_score)
    eager = df.semantic.topk(4, QUESTION, column="text", engine=engine)
    lazy = df.lazy().semantic.topk(4, QUESTION, column="text").collect(engine=engine)
    assert eager.equals(lazy)
    # On a semframe lazy frame (after another semantic step) too.
    both = sf.DeterministicEngine(responder=lambda r: by_score(r) if "\n\nB: " in r.prompt_text else "x")
    chained = (df.lazy().semantic.classify("text", ["x", "y"], name="c").semantic.topk(4, QUESTION, column="text")
               .collect(engine=both))
    assert chained["c"].to_list() == ["x"] * 4
    assert chained.drop("c").equals(eager)
    pdf = df.to_pandas()
    pdf.index = [f"r{i}" for i in range(len(pdf))]
    out = pdf.semantic.topk(4, QUESTION, column="text", engine=engine)
    assert isinstance(out, pd.DataFrame)
    assert list(out.index) == [f"r{i}" for i in true_order(scores)[:4]]
    assert list(out["rank"]) == [1, 2, 3, 4]
    srt = pdf.semantic.sort(QUESTION, column="text", engine=engine)
    assert list(srt["pos"]) == true_order(scores)


def test_a_filter_above_a_topk_runs_after_it():
    scores = [5, 9, 1, 8, 7]
    df = items(scores)
    engine = sf.DeterministicEngine(responder=by_score)
    out = (df.lazy().semantic.topk(3, QUESTION, column="text").filter(pl.col("pos") != 1)
           .collect(engine=engine))
    assert out["pos"].to_list() == [3, 4]  # the top 3 is 1, 3, 4; then the filter drops 1


def test_sort_then_head_runs_as_topk():
    scores = shuffled(80, seed=6)
    engine = sf.DeterministicEngine(responder=by_score)
    plan = items(scores).lazy().semantic.sort(QUESTION, column="text").head(3)
    assert "rewrites: limit_rankings" in plan.explain()
    assert plan.collect(engine=engine)["pos"].to_list() == true_order(scores)[:3]
    full = sf.DeterministicEngine(responder=by_score)
    items(scores).semantic.sort(QUESTION, column="text", engine=full)
    assert engine.requests_seen < full.requests_seen / 2


def test_the_best_row_is_a_knockout():
    n = 37
    scores = shuffled(n, seed=12)
    engine = sf.DeterministicEngine(responder=by_score)
    out = items(scores).semantic.topk(1, QUESTION, column="text", both_orders=False, engine=engine)
    assert out["pos"].to_list() == true_order(scores)[:1]
    assert engine.requests_seen == n - 1 == expected_comparisons(n, 1)
    assert len(engine.batches) == 6 == expected_rounds(n, 1)  # ceil(log2 37)
    assert [len(b) for b in engine.batches] == [18, 9, 5, 2, 1, 1]


def test_a_sampled_first_pivot_keeps_large_topk_near_n_comparisons():
    n, k = 1000, 10
    scores = shuffled(n, seed=13)
    engine = sf.DeterministicEngine(responder=by_score)
    out = items(scores).semantic.topk(k, QUESTION, column="text", both_orders=False, engine=engine)
    assert out["pos"].to_list() == true_order(scores)[:k]
    # Random pivots alone would expect ~2.1n; the sample's 4th best as the first pivot ~1.3n.
    assert n <= engine.requests_seen <= 1.6 * n
    biggest = max(len(b) for b in engine.batches)
    assert biggest >= n - 1 - 100  # the one partition of every row against the sampled pivot


def test_the_prompt_names_the_letters_and_shares_the_instruction():
    df = pl.DataFrame({"title": ["Rain #1", "Sun #2"], "body": ["wet", "dry"]})
    engine = sf.DeterministicEngine(responder=lambda r: "A")
    df.semantic.topk(1, "Which day is nicer: {a} or {b}?", column="{body}: {title}", instruction="Be brief.",
                     both_orders=False, engine=engine)
    (request,) = engine.batches[0]
    system, user = request.messages
    assert system.role == "system" and system.content == (
        "Be brief.\nQuestion: Which day is nicer: A or B?\nA and B are the two items below. "
        "Answer with exactly one letter: A or B.")
    assert user.content == "A: wet: Rain #1\n\nB: dry: Sun #2"
    assert request.max_tokens == 3 and request.temperature == 0.0


def test_empty_input_and_no_rows_to_compare():
    empty = pl.DataFrame({"text": []}, schema={"text": pl.String})
    engine = sf.DeterministicEngine(responder=by_score)
    out = empty.semantic.topk(3, QUESTION, column="text", engine=engine)
    assert out.height == 0 and out.schema["rank"] == pl.UInt32
    assert empty.semantic.sort(QUESTION, column="text", engine=engine).height == 0
    one = pl.DataFrame({"text": ["only #1"]})
    assert one.semantic.sort(QUESTION, column="text", engine=engine)["rank"].to_list() == [1]
    assert engine.requests_seen == 0


def test_a_budget_stops_between_rounds_and_keeps_the_rounds_done():
    scores = shuffled(200, seed=14)
    engine = sf.DeterministicEngine(responder=by_score)
    with pytest.raises(sf.BudgetExceeded) as info:
        items(scores).semantic.topk(5, QUESTION, column="text", engine=engine, max_tokens=8000)
    partial = info.value.result
    assert partial.df.height == 0  # a partial order is not a top-k: no rows
    asked = partial.lineage.filter(pl.col("operator") == "topk")
    assert 0 < asked.height == engine.requests_seen  # the rounds before the stop, each recorded
    assert info.value.spent_tokens <= 8000
