"""A model per step: steps name their engine (an object or a registered name); each engine starts
only if a step needs it, and the exact cache keys each answer by its own engine."""

from __future__ import annotations

import polars as pl
import pytest

import semframe as sf


@pytest.fixture
def df() -> pl.DataFrame:
    return pl.DataFrame({"t": ["a", "b", "a", "c"]})


def test_each_step_is_answered_by_its_engine(df):
    small = sf.DeterministicEngine(responder=lambda r: "A", model="small")
    big = sf.DeterministicEngine(responder=lambda r: "B", model="big")
    sf.configure(engines={"small": small, "big": lambda: big})
    plan = (df.lazy().semantic.classify("t", ["A", "B"], name="s", engine="small")
              .semantic.classify("t", ["A", "B"], name="b", engine="big"))
    run = plan.run()  # no run engine needed: every step has its own (none is started)
    assert run.df["s"].to_list() == ["A"] * 4 and run.df["b"].to_list() == ["B"] * 4
    assert small.requests_seen == 3 and big.requests_seen == 3
    models = run.lineage.group_by("step", maintain_order=True).agg(pl.col("model").unique())["model"].to_list()
    assert models == [["small"], ["big"]]
    assert "engine 'small'" in plan.explain() and "engine 'big'" in plan.explain()


def test_a_run_engine_answers_the_steps_without_one(df):
    own = sf.DeterministicEngine(responder=lambda r: "A", model="own")
    run_engine = sf.DeterministicEngine(responder=lambda r: "B", model="run")
    plan = (df.lazy().semantic.classify("t", ["A", "B"], name="x", engine=own)
              .semantic.classify("t", ["A", "B"], name="y"))
    out = plan.collect(engine=run_engine, cache=False)
    assert out["x"].to_list() == ["A"] * 4 and out["y"].to_list() == ["B"] * 4


def test_the_cache_keys_answers_by_their_engine(df):
    one = sf.DeterministicEngine(responder=lambda r: "A", model="one")
    two = sf.DeterministicEngine(responder=lambda r: "B", model="two")
    df.lazy().semantic.classify("t", ["A", "B"], name="c", engine=one).collect()
    out = df.lazy().semantic.classify("t", ["A", "B"], name="c", engine=two).collect()
    assert out["c"].to_list() == ["B"] * 4 and two.requests_seen == 3  # one's answers are not two's


def test_engine_names_are_checked_when_the_step_is_built(df):
    with pytest.raises(sf.PlanError, match="unknown engine 'smal'; engine names are"):
        df.lazy().semantic.classify("t", ["A", "B"], engine="smal")
    # A server URL is an OpenAIEngine; building the step does not connect to it.
    df.lazy().semantic.classify("t", ["A", "B"], engine="http://127.0.0.1:9/v1")
    assert df.lazy().semantic.classify("t", ["A", "B"], name="c", engine="deterministic").collect(
        cache=False).height == 4


def test_configure_accepts_a_name_for_the_run_engine(df):
    sf.configure(engine="deterministic")
    assert df.semantic.classify("t", ["A", "B"], cache=False).height == 4
    with pytest.raises(sf.PlanError, match="unknown engine"):
        sf.configure(engine="nope")
