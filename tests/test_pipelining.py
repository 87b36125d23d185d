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


def test_a_batch_in_flight_is_kept_when_the_consumer_stops():
    df = _frame(12)

    def fail_in_the_second_batch(value: str) -> str:
        if value == "title 4":
            raise RuntimeError("downstream failure")
        return value

    # Elementwise, so it runs batch by batch above the step: batch 2 fails while batch 3 is in flight.
    plan = _plan(df).with_columns(pl.col("t").map_elements(fail_in_the_second_batch, return_dtype=pl.String))
    engine = PipelinedEngine()
    with pytest.raises(Exception, match="downstream failure"):
        plan.collect(engine=engine, batch_size=4)
    assert engine.requests_seen == 12  # batch 3 was in flight when batch 2 failed downstream
    again = sf.DeterministicEngine()
    _plan(df).collect(engine=again, batch_size=4)
    assert again.requests_seen == 0  # all three batches' answers reached the exact cache
