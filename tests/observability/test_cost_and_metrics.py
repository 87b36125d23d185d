"""Cost (local and per-token API), savings from reused answers, and per-step metrics."""

from __future__ import annotations

import polars as pl
import pytest

import semframe as sf
from semframe.accounting import MACHINE_PRICES, TOKEN_PRICES


def yes_for(word):
    return sf.DeterministicEngine(responder=lambda r: "YES" if word in r.messages[-1].content else "NO")


def test_metrics_per_step_with_selectivity_and_throughput(reviews):
    run = (reviews.lazy().semantic.filter("Is {text} positive?")
           .semantic.classify("text", ["good", "bad"], name="label").run(yes_for("great"), cache=False))
    m = run.metrics
    f, c = m.row(0, named=True), m.row(1, named=True)
    assert (f["operator"], f["rows_in"], f["rows_out"]) == ("filter", 12, 4)
    assert f["selectivity"] == pytest.approx(4 / 12)
    assert (f["engine_requests"], f["dedup_hits"], f["skipped"]) == (4, 6, 2)
    assert (c["rows_in"], c["rows_out"], c["engine_requests"], c["dedup_hits"]) == (4, 4, 1, 3)
    assert c["selectivity"] is None
    assert f["rows_per_s"] > 0 and f["tokens_per_s"] > 0
    assert f["prompt_tokens"] == run.lineage.filter(pl.col("step") == 0)["prompt_tokens"].sum()


def test_local_cost_is_engine_seconds_times_hourly_price(reviews):
    sf.configure(hourly_price=36_000.0)  # $10 per second: makes tiny runs visible
    run = reviews.lazy().semantic.classify("text", ["good", "bad"]).run(sf.DeterministicEngine(), cache=False)
    cost = run.cost
    assert cost.machine.hourly_usd == 36_000.0
    assert cost.engine_seconds == pytest.approx(run.engine_seconds)
    assert cost.local_usd == pytest.approx(run.engine_seconds * 10)
    assert run.metrics["cost_usd"].sum() == pytest.approx(cost.local_usd)


def test_api_cost_uses_each_registered_price(reviews):
    sf.register_price("test/flat", input=1.0, cached_input=0.5, output=2.0)
    try:
        run = reviews.lazy().semantic.classify("text", ["good", "bad"]).run(sf.DeterministicEngine(), cache=False)
        api = run.cost.api()
        row = api.filter(pl.col("model") == "test/flat").row(0, named=True)
        c = run.cost
        expected = ((c.prompt_tokens - c.cached_prompt_tokens) * 1.0 + c.cached_prompt_tokens * 0.5
                    + c.output_tokens * 2.0) / 1e6
        assert row["cost_usd"] == pytest.approx(expected)
        assert set(TOKEN_PRICES) <= set(api["model"])
        assert all(p.as_of and p.source for m, p in TOKEN_PRICES.items() if m != "test/flat")
    finally:
        sf.unregister_price("test/flat")


def test_reused_answers_cost_nothing_and_the_saving_is_reported(reviews):
    engine = sf.DeterministicEngine()
    plan = reviews.lazy().semantic.classify("text", ["good", "bad"])
    first = plan.run(engine)
    assert first.cost.saved_requests["dedup"] == 6
    assert first.cost.saved_prompt_tokens == pytest.approx(6 * first.cost.prompt_tokens / 4)
    second = plan.run(engine)  # every distinct request is now in the exact cache
    c = second.cost
    assert (c.engine_requests, c.prompt_tokens, c.engine_seconds, c.local_usd) == (0, 0, 0, 0)
    assert c.saved_requests == {"dedup": 6, "exact_cache": 4, "semantic_cache": 0}
    assert c.saved_prompt_tokens > 0 and c.saved_output_tokens > 0
    assert (c.api()["saved_usd"] > 0).all() and (c.api()["cost_usd"] == 0).all()
    assert "exact_cache 4" in str(c)


def test_machine_choice_and_errors_name_the_fix():
    assert sf.accounting.machine_price(sf.DeterministicEngine()).name == "cpu-2vcpu"

    class OnGpu(sf.DeterministicEngine):
        device = "cuda"

    assert sf.accounting.machine_price(OnGpu()).name == "gpu-h100"
    sf.configure(machine="gpu-h100")
    assert sf.accounting.machine_price(None) is MACHINE_PRICES["gpu-h100"]
    with pytest.raises(ValueError, match="register_machine_price"):
        sf.configure(machine="tpu-v9")
    with pytest.raises(ValueError, match="hourly_price"):
        sf.configure(hourly_price=-1)
    with pytest.raises(ValueError, match="per million"):
        sf.register_price("bad/price", input=-1, output=1)


def test_summary_and_html_render(reviews):
    run = reviews.lazy().semantic.classify("text", ["good", "bad"]).run(sf.DeterministicEngine(), cache=False)
    assert "4 requests" in run.summary() and "cpu-2vcpu" in run.summary()
    page = run._repr_html_()
    tables, _, profile = page.partition("<details>")  # the metrics and lineage tables, then the folded profile
    assert tables.count("<table") == 2 and "metrics" in tables and "lineage" in tables
    assert "PROFILE" in profile and "where the time went" in profile
    assert "<table" in run.cost._repr_html_()
