"""Budget guards stop a run before it exceeds max_tokens / max_cost and keep what was done."""

from __future__ import annotations

import polars as pl
import pytest

import semframe as sf
from semframe.accounting import Budget


@pytest.fixture
def many() -> pl.DataFrame:
    return pl.DataFrame({"text": [f"review number {i}" for i in range(100)]})


def test_token_budget_stops_before_exceeding_and_keeps_done_work(many):
    engine = sf.DeterministicEngine()
    plan = many.lazy().semantic.classify("text", ["good", "bad"], name="label")
    full = plan.run(sf.DeterministicEngine(), cache=False)
    total = full.cost.prompt_tokens + full.cost.output_tokens
    with pytest.raises(sf.BudgetExceeded, match="max_tokens") as err:
        plan.run(engine, batch_size=10, max_tokens=total // 2)
    e = err.value
    assert e.spent_tokens <= total // 2
    part = e.result
    assert not part.complete and 0 < part.df.height < 100 and part.df.height % 10 == 0
    assert part.cost.prompt_tokens + part.cost.output_tokens == e.spent_tokens
    assert part.lineage.height == part.df.height
    assert part.df["label"].to_list() == full.df["label"].to_list()[: part.df.height]
    assert sf.last_run() is part
    # The answers already given are in the persistent cache: the rerun only asks for the rest.
    asked = engine.requests_seen
    rerun = plan.run(engine)
    assert rerun.metrics["exact_cache_hits"][0] == part.df.height
    assert engine.requests_seen - asked == 100 - part.df.height


def test_token_budget_counts_each_answer_at_max_tokens(many):
    plan = many.lazy().semantic.classify("text", ["good", "bad"])
    with pytest.raises(sf.BudgetExceeded) as err:
        plan.run(sf.DeterministicEngine(), batch_size=100, max_tokens=1)
    assert err.value.result.df.height == 0 and err.value.spent_tokens == 0
    assert "rerun with a larger max_tokens" in str(err.value)


def test_cost_budget_stops_the_run(many):
    sf.configure(hourly_price=3.6e12)  # a billion dollars a second: any batch is too expensive
    plan = many.lazy().semantic.classify("text", ["good", "bad"])
    with pytest.raises(sf.BudgetExceeded, match="max_cost") as err:
        plan.collect(engine=sf.DeterministicEngine(), batch_size=10, max_cost=0.01, cache=False)
    assert err.value.result.df.height < 100


def test_generous_budget_changes_nothing(many):
    plan = many.lazy().semantic.classify("text", ["good", "bad"])
    out = plan.run(sf.DeterministicEngine(), max_tokens=10**9, max_cost=10**6, cache=False)
    assert out.complete and out.df.height == 100


def test_eager_verbs_take_a_cost_budget(many):
    sf.configure(hourly_price=3.6e12)
    with pytest.raises(sf.BudgetExceeded):
        many.semantic.classify("text", ["good", "bad"], engine=sf.DeterministicEngine(), max_cost=0.01,
                               batch_size=10, cache=False)


def test_bad_budgets_are_rejected():
    with pytest.raises(ValueError, match="max_tokens"):
        Budget(max_tokens=-5)
    with pytest.raises(ValueError, match="max_cost"):
        Budget(max_cost="ten")


def test_token_budget_holds_when_answers_are_long_words():
    """An engine never answers past max_tokens, so the budget's prediction is an upper bound."""
    words = "Supercalifragilisticexpialidocious antidisestablishmentarianism " * 3
    df = pl.DataFrame({"t": [f"{words}{i}" for i in range(20)]})
    plan = df.lazy().semantic.map("{t}", name="m", max_tokens=3)
    with pytest.raises(sf.BudgetExceeded) as err:
        plan.collect(engine=sf.DeterministicEngine(), cache=False, max_tokens=400, batch_size=2)
    assert err.value.spent_tokens <= 400
    lineage = err.value.result.lineage
    assert lineage["output_tokens"].max() <= 3
    assert set(lineage["finish_reason"]) == {"length"}
