"""Run-scoped state: options resolved per run, and sf.last_run() naming the run that just ended."""

from __future__ import annotations

import polars as pl
import pytest

import semframe as sf
from semframe import config
from semframe.execution.context import RunOptions


class FailingEngine(sf.DeterministicEngine):
    """Fails every batch from its ``fail_at``-th call (1-based) on, as a crashed engine would."""

    def __init__(self, fail_at: int):
        super().__init__()
        self.fail_at = fail_at
        self.calls = 0

    def _generate(self, requests):
        self.calls += 1
        if self.calls >= self.fail_at:
            raise RuntimeError("engine crashed")
        return super()._generate(requests)


@pytest.fixture
def plan():
    df = pl.DataFrame({"t": [f"row {i}" for i in range(10)]})
    return df.lazy().semantic.classify("t", ["A", "B"], name="c")


def test_last_run_after_a_failed_run_is_that_run(plan):
    plan.run(sf.DeterministicEngine(), cache=False)  # an older, complete run
    older = sf.last_run()
    with pytest.raises(sf.EngineFailure, match="engine crashed") as err:
        plan.run(FailingEngine(fail_at=2), batch_size=4, cache=False, on_error="raise")
    failed = sf.last_run()
    assert failed is not older and failed is err.value.result
    assert not failed.complete and "engine crashed" in failed.error
    assert failed.df.height == 4  # the first batch made it through
    assert failed.lineage.height == 4 and failed.metrics["engine_requests"].to_list() == [4]


def test_last_run_after_a_budget_stop_is_the_partial_run(plan):
    with pytest.raises(sf.BudgetExceeded) as err:
        plan.run(sf.DeterministicEngine(), batch_size=2, max_tokens=60, cache=False)
    assert sf.last_run() is err.value.result
    assert not err.value.result.complete and err.value.result.df.height < 10


def test_run_options_are_checked_before_anything_runs(plan):
    engine = sf.DeterministicEngine()
    for bad in ({"batch_size": 0}, {"batch_size": 1.5}, {"batch_size": True}, {"prompt_layout": "sideways"},
                {"dedupe": "yes"}):
        with pytest.raises(ValueError):
            plan.run(engine, **bad)
    assert engine.requests_seen == 0
    with pytest.raises(ValueError, match="batch_size"):
        sf.configure(batch_size=0)


def test_options_come_from_settings_then_the_run():
    sf.configure(batch_size=7, prompt_layout="inline")
    opts = RunOptions.resolve(config.settings, batch_size=3)
    assert (opts.batch_size, opts.prompt_layout, opts.dedupe) == (3, "inline", True)


def test_a_setting_changed_during_a_run_does_not_change_it(plan):
    seen = []

    class Watching(sf.DeterministicEngine):
        def _generate(self, requests):
            seen.append(len(requests))
            sf.configure(batch_size=1)  # too late for this run
            return super()._generate(requests)

    plan.run(Watching(), batch_size=5, cache=False)
    assert seen == [5, 5]
