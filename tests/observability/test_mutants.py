"""Tests that kill mutants the rest of the suite let live.

Each section names the mutant (a one-line change to semframe) that its tests were checked
against: every test here fails with the mutant applied to a copy of the package and passes on
the real one.
"""

from __future__ import annotations

from dataclasses import replace

import polars as pl
import pytest

import semframe as sf
from semframe.accounting import Budget
from semframe.accounting.prices import MachinePrice
from semframe.accounting.throughput import Throughput
from semframe.engines.base import Completion, Message, Request
from semframe.plan.spec import TextSpec


def _text(request) -> str:
    return request.messages[-1].content.split("\n\n")[0]


@pytest.fixture
def many() -> pl.DataFrame:
    return pl.DataFrame({"text": [f"review number {i}" for i in range(100)]})


# --------------------------------------------------------------------------- budget: time prediction
# Mutant: Budget._predict_seconds returns 0 (accounting/budget.py).


def test_cost_budget_stops_before_a_first_batch_it_cannot_afford(many):
    sf.configure(hourly_price=3.6e12)  # a billion dollars a second: no batch is affordable
    engine = sf.DeterministicEngine()
    plan = many.lazy().semantic.classify("text", ["good", "bad"])
    with pytest.raises(sf.BudgetExceeded, match="max_cost") as err:
        plan.run(engine, batch_size=10, max_cost=0.01, cache=False)
    # The first batch's time is predicted from the default rates, so not even it is sent.
    assert engine.requests_seen == 0
    assert err.value.result.df.height == 0 and err.value.spent_usd == 0


def test_budget_predicts_time_from_the_rates_then_from_the_observed_speed():
    request = Request((Message("user", "x" * 40),), TextSpec(), max_tokens=2)  # 10 prompt tokens
    budget = Budget(max_cost=5.0, machine=MachinePrice("test", 3600.0),     # $1 a second
                    throughput=Throughput(prefill_per_s=10.0, decode_per_s=1.0))
    budget.check([request])                       # 10/10 + 2/1 = 3 s: $3 <= $5
    with pytest.raises(sf.BudgetExceeded, match="max_cost"):
        budget.check([request, request])          # 6 s: $6 > $5
    budget.spend([Completion("a", "a", "stop", latency_s=1.5)])
    budget.check([request, request])              # now 1.5 s a request: $1.5 + $3 <= $5
    with pytest.raises(sf.BudgetExceeded, match="max_cost"):
        budget.check([request, request, request])  # $1.5 + $4.5 > $5


# --------------------------------------------------------------------------- budget: output tokens
# Mutant: Budget.check compares spent + prompt tokens only, not + max_tokens of the answers.


def test_token_budget_stops_before_a_batch_whose_answers_could_exceed_it():
    df = pl.DataFrame({"t": ["hi"]})
    plan = df.lazy().semantic.map("{t}", name="m", max_tokens=200)
    engine = sf.DeterministicEngine()
    # 1 prompt token + up to 200 answer tokens > 100, though the real answer would be short.
    with pytest.raises(sf.BudgetExceeded, match="max_tokens") as err:
        plan.run(engine, max_tokens=100, cache=False)
    assert engine.requests_seen == 0 and err.value.spent_tokens == 0
    assert "200 output at max_tokens" in str(err.value)
    assert plan.run(engine, max_tokens=201, cache=False).complete  # exactly enough room


def test_budget_check_counts_prompt_and_answer_tokens():
    request = Request((Message("user", "x" * 40),), TextSpec(), max_tokens=30)  # 10 + 30 tokens
    Budget(max_tokens=40).check([request])
    with pytest.raises(sf.BudgetExceeded, match=r"10 prompt \+ 30 output"):
        Budget(max_tokens=39).check([request])


# --------------------------------------------------------------------------- error counters
# Mutant: StepMetrics.add never increments errors (execution/lineage.py).


def test_invalid_answers_are_counted_as_errors_in_the_metrics():
    df = pl.DataFrame({"t": ["a", "b", "c", "a", None, "d"]})
    engine = sf.DeterministicEngine(responder=lambda r: "maybe" if _text(r) in {"a", "b"} else "YES")
    run = df.lazy().semantic.classify("t", ["YES", "NO"], name="c").run(engine, cache=False)
    m = run.metrics.row(0, named=True)
    # "a" twice (once asked, once reused), "b" once; the null row is skipped, not an error.
    assert (m["errors"], m["skipped"], m["engine_requests"], m["dedup_hits"]) == (3, 1, 4, 1)
    assert run.step_metrics[0].errors == 3
    assert run.df["c"].to_list() == [None, None, "YES", None, None, "YES"]
    errors = run.lineage.filter(pl.col("error").is_not_null() & (pl.col("source") != "skipped"))
    assert errors["row_id"].to_list() == [0, 1, 3]
    assert engine.usage.errors == 2  # the engine saw two bad answers; the step served three cells


# --------------------------------------------------------------------------- cut-off structured answers
# Mutant: engines/base.py `finish` accepts a structured answer whose finish_reason is "length".


def test_a_json_answer_cut_at_max_tokens_is_null_with_the_reason():
    df = pl.DataFrame({"t": ["Battle of Hastings, 1066", "Fall of Rome"]})
    plan = df.lazy().semantic.extract("t", {"place": str, "year": int}, name="e", max_tokens=4)
    run = plan.run(sf.DeterministicEngine(), cache=False)
    assert run.df["e"].to_list() == [None, None]
    lin = run.lineage
    assert lin["finish_reason"].to_list() == ["length", "length"]
    assert all("max_tokens=4" in e for e in lin["error"].to_list())
    assert run.metrics["errors"][0] == 2


def test_a_cut_answer_that_happens_to_parse_is_still_refused():
    # Trailing whitespace past max_tokens: the cut text is valid JSON, but incomplete.
    df = pl.DataFrame({"t": ["a", "b"]})
    engine = sf.DeterministicEngine(responder=lambda r: '{"x": 7}' + " " * 40 if _text(r) == "a" else '{"x": 8}')
    run = df.lazy().semantic.extract("t", {"x": int}, name="e", max_tokens=5).run(engine, cache=False)
    assert run.df["e"].to_list() == [None, {"x": 8}]
    first = run.lineage.row(0, named=True)
    assert first["finish_reason"] == "length" and "max_tokens=5" in first["error"]


def test_a_label_cut_to_another_label_is_not_taken_for_it():
    df = pl.DataFrame({"t": ["unsure", "sure"]})
    engine = sf.DeterministicEngine(responder=lambda r: "NOT SURE" if _text(r) == "unsure" else "SURE")
    plan = df.lazy().semantic.classify("t", ["NOT", "NOT SURE", "SURE"], name="c", max_tokens=1)
    run = plan.run(engine, cache=False)
    # "NOT SURE" cut at one token reads "NOT ": a label, but not the answer the model gave.
    assert run.df["c"].to_list() == [None, "SURE"]
    assert "max_tokens=1" in run.lineage["error"][0]


# --------------------------------------------------------------------------- semantic-cache retries
# Mutant: execution/resolver.py `_resolve_semantic` never retries the members of a failed representative.

NEAR = [
    "The stock market fell sharply on Monday after the bank raised rates.",
    "Chelsea won the cup final with a late goal from their striker.",
    "The stock market fell sharply on Monday, after the bank raised rates!",   # near NEAR[0]
    "Chelsea won the cup final with a late goal from its striker.",            # near NEAR[1]
]


@pytest.mark.embeddings
def test_a_member_of_a_failed_representative_asks_for_itself():
    df = pl.DataFrame({"text": NEAR})
    engine = sf.DeterministicEngine(
        responder=lambda r: "garbage" if _text(r) == NEAR[0] else ("sport" if "Chelsea" in _text(r) else "business"))
    plan = df.lazy().semantic.classify("text", ["business", "sport", "tech"], name="topic", semantic_cache=0.9)
    run = plan.run(engine, cache=False)
    lin = run.lineage.sort("row_id")
    # Row 0 (a representative) failed; row 2, its near-duplicate, was asked itself; row 3 reused row 1.
    assert lin["source"].to_list() == ["engine", "engine", "engine", "semantic_cache"]
    assert run.df["topic"].to_list() == [None, "sport", "business", "sport"]
    assert [len(b) for b in engine.batches] == [2, 1] and _text(engine.batches[1][0]) == NEAR[2]
    m = run.metrics.row(0, named=True)
    assert (m["engine_requests"], m["semantic_cache_hits"], m["errors"]) == (3, 1, 1)


# --------------------------------------------------------------------------- cached-prompt saving
# Mutant: accounting/cost.py leaves cached prompt tokens out of the saving of reused answers.


class PrefixCachingEngine(sf.DeterministicEngine):
    """Reports half of every prompt as served from the prefix cache (as vLLM reports it)."""

    def _generate(self, requests):
        return [replace(raw, cached_prompt_tokens=raw.prompt_tokens // 2) for raw in super()._generate(requests)]


def test_the_saving_of_reused_answers_includes_their_cached_prompt_tokens():
    df = pl.DataFrame({"t": ["great phone", "awful battery life here", "great phone", "great phone"]})
    run = df.lazy().semantic.classify("t", ["good", "bad"], name="c").run(PrefixCachingEngine(), cache=False)
    c = run.cost
    assert c.engine_requests == 2 and c.saved_requests["dedup"] == 2
    assert c.cached_prompt_tokens > 0
    per_request = c.cached_prompt_tokens / c.engine_requests
    assert c.saved_cached_prompt_tokens == pytest.approx(2 * per_request)
    assert c.saved_prompt_tokens == pytest.approx(2 * c.prompt_tokens / 2)
    sf.register_price("test/cache", input=1.0, cached_input=0.1, output=2.0)
    try:
        row = c.api().filter(pl.col("model") == "test/cache").row(0, named=True)
    finally:
        sf.unregister_price("test/cache")
    fresh = c.saved_prompt_tokens - c.saved_cached_prompt_tokens
    expected = (fresh * 1.0 + c.saved_cached_prompt_tokens * 0.1 + c.saved_output_tokens * 2.0) / 1e6
    assert row["saved_usd"] == pytest.approx(expected)
    assert row["saved_usd"] < (c.saved_prompt_tokens * 1.0 + c.saved_output_tokens * 2.0) / 1e6
