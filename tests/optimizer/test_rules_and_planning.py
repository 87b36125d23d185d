"""The optimizer as a whole, and the planning options that replaced the prompt-changing rules."""

from __future__ import annotations

import polars as pl
import pytest

import semframe as sf
from semframe.execution.context import RunOptions
from semframe.optimizer import RULES, OptimizerError, optimize, optimize_traced
from semframe.physical.planner import plan_physical, render

from .plans import classify, scan, smap


def test_rules_are_pure_and_optimize_is_idempotent():
    plan = smap(classify(scan()))
    once = optimize(plan)
    assert plan == smap(classify(scan()))  # input untouched
    assert optimize(once) == once
    _, applied = optimize_traced(once)
    assert applied == []


def test_rule_order_and_names():
    # Only rewrites that preserve results: prompt layout and dedupe are planning options now.
    assert [r.__name__ for r in RULES] == ["pushdown_predicates", "pushdown_join_predicates", "pushdown_projections",
                                          "pushdown_limit", "limit_rankings"]


def test_a_rule_that_changes_the_schema_fails_loudly():
    def broken(plan):
        return plan.children[0]  # drops the semantic step: the schema loses a column

    with pytest.raises(OptimizerError, match="broken changed the plan's schema"):
        optimize(classify(scan()), rules=(broken,))


def test_planning_options_decide_layout_and_dedupe():
    plan = smap(classify(scan()), temperature=0.7)
    text = render(plan_physical(plan, RunOptions()))
    lines = text.splitlines()
    assert "dedupe" not in lines[0] and "temperature=0.7" in lines[0]  # a sampled step is never deduped
    assert "dedupe, shared prefix first" in text
    inline = render(plan_physical(plan, RunOptions(dedupe=False, prompt_layout="inline")))
    assert "dedupe" not in inline and "inline prompt" in inline


def test_optimize_false_sends_the_same_prompts():
    df = pl.DataFrame({"t": ["a", "b", "c"], "n": [1, 2, 3]})
    plan = df.lazy().semantic.classify("t", ["YES", "NO"], name="c").filter(pl.col("n") > 1)
    opt, raw = sf.DeterministicEngine(), sf.DeterministicEngine()
    plan.collect(engine=opt, cache=False)
    plan.collect(engine=raw, cache=False, optimize=False)
    sent_opt = {r.key for b in opt.batches for r in b}
    sent_raw = {r.key for b in raw.batches for r in b}
    assert sent_opt < sent_raw  # the optimized run asks about fewer rows, with identical prompts


def test_step_ids_come_from_the_position_in_the_plan():
    base = pl.DataFrame({"t": ["a", "b"]}).lazy().semantic.classify("t", ["YES", "NO"], name="c")
    joined = base.join(base, on="t", suffix="_r")  # the same subtree twice (a self-join)
    ops = [op for op in plan_physical(joined.plan, RunOptions()).walk() if hasattr(op, "index")]
    assert sorted(op.index for op in ops) == [0, 1]
    result = joined.run(sf.DeterministicEngine(), cache=False)
    assert sorted(result.lineage["step"].unique().to_list()) == [0, 1]
    assert result.df.height == 2
