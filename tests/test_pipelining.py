"""Pipelined batches: against an engine that answers off this process's CPU (``Engine.pipelined``,
e.g. ``OpenAIEngine``), a row-wise step sends batch i+1 before it attaches batch i's answers.

Checked with a deterministic engine that declares itself pipelined: the order of sends and
takes, the same answers, lineage and counts as one batch at a time, dedup across batches in
flight, no batch sent ahead under a ``head``, budgets that count the batches in flight, and the
answers of a batch in flight kept when the consumer stops.
"""

from __future__ import annotations

import threading

import polars as pl
import pytest

import semframe as sf
from semframe.execution import resolver as resolver_module


class PipelinedEngine(sf.DeterministicEngine):
    """The deterministic engine, declaring what a remote engine declares; records its threads."""

    pipelined = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.threads: list[str] = []

    def _generate(self, requests):
        self.threads.append(threading.current_thread().name)
        return super()._generate(requests)


def _frame(n: int = 10) -> pl.DataFrame:
    return pl.DataFrame({"t": [f"title {i}" for i in range(n)]})


def _plan(df: pl.DataFrame) -> sf.SemLazyFrame:
    return df.lazy().semantic.classify("t", ["YES", "NO"], name="c")


def test_the_next_batch_is_sent_before_this_ones_answers_are_taken(monkeypatch):
    events: list[str] = []
    submit, result = resolver_module.AnswerResolver.submit, resolver_module.PendingAnswers.result

    def logged_submit(self, step, requests, *args, **kwargs):
        events.append(f"send {requests[0].messages[-1].content}")
        return submit(self, step, requests, *args, **kwargs)

    def logged_result(self):
        if not self._done:
            events.append("take")
        return result(self)

    monkeypatch.setattr(resolver_module.AnswerResolver, "submit", logged_submit)
    monkeypatch.setattr(resolver_module.PendingAnswers, "result", logged_result)
    engine = PipelinedEngine()
    _plan(_frame(6)).collect(engine=engine, batch_size=2, cache=False)
    assert events == ["send title 0", "send title 2", "take", "send title 4", "take", "take"]
    assert all(name.startswith("semframe-deterministic-send") for name in engine.threads)


def test_same_answers_lineage_and_counts_as_one_batch_at_a_time():
    df = pl.DataFrame({"t": [f"title {i % 7}" for i in range(40)]})  # repeats across batches
    runs = {}
    for name, engine in (("pipelined", PipelinedEngine()), ("plain", sf.DeterministicEngine())):
        runs[name] = (_plan(df).run(engine=engine, batch_size=4, cache=False), engine)
    (a, ea), (b, eb) = runs["pipelined"], runs["plain"]
    assert a.df.equals(b.df)
    cols = ["rows_in", "engine_requests", "dedup_hits", "exact_cache_hits"]
    assert a.metrics.select(cols).equals(b.metrics.select(cols))
    assert ea.requests_seen == eb.requests_seen == 7  # each distinct title asked once
    keep = ["row_id", "step", "value", "source"]
    assert a.lineage.select(keep).sort("row_id").equals(b.lineage.select(keep).sort("row_id"))


def test_a_repeat_of_a_request_in_flight_waits_for_its_answer():
    df = pl.DataFrame({"t": ["a", "b", "a", "c", "b", "a"]})
    engine = PipelinedEngine()
    run = _plan(df).run(engine=engine, batch_size=2, cache=False)  # "a" in flight when batch 2 asks it
    assert engine.requests_seen == 3
    assert run.metrics["dedup_hits"][0] == 3
    sources = run.lineage.sort("row_id")["source"].to_list()
    assert sources == ["engine", "engine", "dedup", "engine", "dedup", "dedup"]


def test_no_batch_is_sent_ahead_under_a_head():
    engine = PipelinedEngine()
    out = _plan(_frame(20)).head(3).collect(engine=engine, batch_size=2, cache=False)
    assert out.height == 3
    assert len(engine.batches) == 2  # the two batches the head needs, none ahead


def test_a_budget_counts_the_batches_in_flight():
    df = _frame(40)
    engine = PipelinedEngine()
    with pytest.raises(sf.BudgetExceeded) as err:
        _plan(df).run(engine=engine, batch_size=5, cache=False, max_tokens=600)
    assert err.value.spent_tokens <= 600
    run = err.value.result
    assert run.df.height == engine.requests_seen  # every answered row is in the partial result
    assert 0 < engine.requests_seen < 40


def _two_steps(df: pl.DataFrame) -> sf.SemLazyFrame:
    return (df.lazy().semantic.classify("t", ["YES", "NO"], name="c1", instruction="first?")
              .semantic.classify("t", ["YES", "NO"], name="c2", instruction="second?"))


@pytest.mark.parametrize("engine_type", [sf.DeterministicEngine, PipelinedEngine])
def test_a_batch_in_flight_when_the_run_stops_is_cached_and_billed(engine_type):
    # Step 2's first batch is refused by the budget while step 1's second batch is in flight
    # (pipelined): that batch was answered, so it must reach the cache and the spent tokens.
    engine = engine_type()
    with pytest.raises(sf.BudgetExceeded) as err:
        _two_steps(_frame(12)).run(engine=engine, batch_size=4, max_tokens=200)
    billed = engine.usage.prompt_tokens + engine.usage.output_tokens
    assert err.value.spent_tokens == billed <= 200  # the error says what the run spent in all
    step1 = sum(1 for b in engine.batches for r in b if "first?" in r.messages[0].content)
    again = sf.DeterministicEngine()
    _frame(12).lazy().semantic.classify("t", ["YES", "NO"], name="c1", instruction="first?").collect(
        engine=again, batch_size=4)
    assert again.requests_seen == 12 - step1  # every answer step 1 got is in the exact cache


@pytest.mark.parametrize("engine_type", [sf.DeterministicEngine, PipelinedEngine])
def test_an_input_failure_keeps_the_batches_answered_before_it(engine_type):
    values = [str(i) for i in range(12)]
    values[9] = "x"  # the third batch of four cannot be cast
    plan = (pl.DataFrame({"t": values}).lazy().semantic.classify("t", ["YES", "NO"], name="c1")
            .with_columns(n=pl.col("t").cast(pl.Int64, strict=True))
            .semantic.classify("t", ["YES", "NO"], name="c2", instruction="again"))
    with pytest.raises(Exception) as err:
        plan.run(engine=engine_type(), batch_size=4, cache=False)
    result = getattr(err.value, "result", None) or sf.last_run()
    # the two batches before the failure made it through both steps, as one batch at a time
    assert result.df.height == 8
    assert result.lineage.filter(pl.col("step") == 1).height == 8


def test_a_budget_holds_when_a_repeat_is_asked_again_out_of_order(monkeypatch):
    # A repeat waiting for an answer in flight that is gone from a one-entry memo is asked on its
    # own; its spending must free its own reservation, not the batch still in flight.
    from semframe import config

    monkeypatch.setattr(config.settings, "memo_size", 1, raising=False)
    texts = ["aa00", "aa01", "aa02", "aa03", "aa00", "bb01", "bb02", "bb03", "cc00", "cc01", "cc02", "cc03",
             "dd00", "dd01", "dd02", "dd03", "ee00", "ee01", "ee02", "ee03"]

    def plan(frame: pl.DataFrame) -> sf.SemLazyFrame:
        return frame.lazy().semantic.map("t", instruction="Repeat.", name="m", max_tokens=8)

    answer = lambda r: "abcd" * 8  # noqa: E731 - every answer at max_tokens: the worst case is billed
    probe = plan(pl.DataFrame({"t": texts[:1]})).run(engine=sf.DeterministicEngine(responder=answer), cache=False)
    limit = 14 * int(probe.metrics["prompt_tokens"][0] + probe.metrics["output_tokens"][0])
    engine = PipelinedEngine(responder=answer)
    try:
        plan(pl.DataFrame({"t": texts})).run(engine=engine, batch_size=4, cache=False, max_tokens=limit)
    except sf.BudgetExceeded:
        pass
    assert engine.usage.prompt_tokens + engine.usage.output_tokens <= limit


def test_a_repeat_in_flight_without_probabilities_is_asked_again_as_one_batch_at_a_time():
    class NoProbabilities(sf.DeterministicEngine):
        def _probabilities(self, request, text):
            return None

    class PipelinedNoProbabilities(NoProbabilities):
        pipelined = True

    df = pl.DataFrame({"t": ["a", "b", "a", "b", "a", "b"]})
    seen = {}
    for name, engine in (("plain", NoProbabilities()), ("pipelined", PipelinedNoProbabilities())):
        run = df.lazy().semantic.classify("t", ["YES", "NO"], name="c", probabilities=True).run(
            engine=engine, batch_size=2, cache=False)
        seen[name] = (engine.requests_seen, run.lineage.sort("row_id")["source"].to_list())
    assert seen["plain"] == seen["pipelined"]
