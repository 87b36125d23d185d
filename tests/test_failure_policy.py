"""When the engine fails: retried, isolated, a null with a reason -- or a named error on request."""

from __future__ import annotations

import polars as pl
import pytest

import semframe as sf
from semframe.engines.base import RawCompletion


@pytest.fixture
def df() -> pl.DataFrame:
    return pl.DataFrame({"t": [f"row {i}" for i in range(12)]})


def plan(df):
    return df.lazy().semantic.classify("t", ["A", "B"], name="c")


class FlakyEngine(sf.DeterministicEngine):
    """Raises on its ``fail_at``-th call only (a transient failure)."""

    def __init__(self, fail_at: int):
        super().__init__()
        self.calls = 0
        self.fail_at = fail_at

    def _generate(self, requests):
        self.calls += 1
        if self.calls == self.fail_at:
            raise ConnectionResetError("connection reset by peer")
        return super()._generate(requests)


class PoisonEngine(sf.DeterministicEngine):
    """Raises for any batch holding a request about row 5 (a request it can never answer)."""

    def _generate(self, requests):
        if any(r.messages[-1].content == "row 5" for r in requests):
            raise ValueError("cannot tokenize row 5")
        return super()._generate(requests)


def test_a_transient_failure_is_retried_and_changes_nothing(df):
    clean = plan(df).run(sf.DeterministicEngine(), batch_size=4, cache=False)
    flaky = plan(df).run(FlakyEngine(fail_at=2), batch_size=4, cache=False)
    assert flaky.df.equals(clean.df)
    assert flaky.metrics["engine_retries"].to_list() == [1]
    assert flaky.metrics["engine_failures"].to_list() == [0]


def test_a_request_the_engine_cannot_answer_is_isolated_and_null(df):
    run = plan(df).run(PoisonEngine(), batch_size=8, cache=False)
    assert run.complete and run.df.height == 12
    assert run.df["c"].null_count() == 1 and run.df["c"][5] is None
    row = run.lineage.filter(pl.col("row_id") == 5).row(0, named=True)
    assert row["error"] == "engine failed: ValueError: cannot tokenize row 5"
    assert run.metrics["engine_failures"].to_list() == [1]
    assert run.metrics["errors"].to_list() == [1]
    clean = plan(df).run(sf.DeterministicEngine(), cache=False)
    assert run.df.drop_nulls().equals(clean.df.filter(pl.col("t") != "row 5"))


def test_on_error_raise_names_the_step_and_batch_and_keeps_finished_work(df):
    with pytest.raises(sf.EngineFailure, match=r"step 0 \(classify\), engine batch 2: PoisonEngine failed 4") as err:
        plan(df).run(PoisonEngine(), batch_size=4, on_error="raise")
    assert isinstance(err.value.__cause__, ValueError)
    partial = err.value.result
    assert sf.last_run() is partial and not partial.complete
    assert partial.df.height == 4  # rows 0-3; rows 4-7 hold the poison
    engine = sf.DeterministicEngine()
    plan(df).run(engine, batch_size=4)
    assert engine.requests_seen == 8  # the finished batch came from the cache


class WrongCount(sf.DeterministicEngine):
    def _generate(self, requests):
        return super()._generate(requests)[:-1]


class Generator(sf.DeterministicEngine):
    def _generate(self, requests):
        return (r for r in super()._generate(requests))


class Strings(sf.DeterministicEngine):
    def _generate(self, requests):
        super()._generate(requests)
        return ["A"] * len(requests)


@pytest.mark.parametrize("engine, message", [
    (WrongCount(), r"WrongCount._generate returned 11 results for 12 requests"),
    (Generator(), r"Generator._generate must return a list of RawCompletion, got generator"),
    (Strings(), r"Strings._generate must return RawCompletion objects, got str"),
])
def test_an_engine_that_breaks_its_contract_is_named(df, engine, message):
    with pytest.raises(sf.EngineError, match=message):
        plan(df).run(engine, cache=False)
    assert engine.requests_seen == 12  # asked once: a contract violation is not retried


def test_raw_completion_type_is_what_engines_return():
    assert RawCompletion("A").finish_reason == "stop"


def test_a_cached_answer_that_no_longer_fits_is_asked_again(df):
    from semframe.cache import open_exact_cache
    from semframe.engines.base import Completion

    engine = sf.DeterministicEngine()
    plan(df).run(engine, batch_size=4, cache=False)  # only to learn the requests the plan makes
    cache = open_exact_cache()
    first = engine.batches[0][0]
    # Plant an answer outside the label set under the first request's key (a tampered file,
    # or an engine that did not enforce the labels when it was stored).
    cache.put_many(engine.fingerprint(), [(first.key, first, Completion("MAYBE", "MAYBE", "stop"))])
    again = sf.DeterministicEngine()
    run = plan(df).run(again, batch_size=4)
    assert again.requests_seen == 12 and run.metrics["cache_rejects"].to_list() == [1]
    assert run.df["c"].is_in(["A", "B"]).all()
