from semframe.optimizer import RULES, dedupe_prompts, optimize, optimize_traced, shape_prompts

from .plans import classify, scan, smap


def test_dedupe_marks_greedy_steps_only():
    before = smap(classify(scan()), temperature=0.7)
    after = dedupe_prompts(before)
    assert after == smap(classify(scan(), dedupe=True), temperature=0.7)


def test_shape_prompts_puts_the_shared_prefix_first():
    assert shape_prompts(classify(scan())) == classify(scan(), layout="shared_first")


def test_rules_are_pure_and_optimize_is_idempotent():
    plan = smap(classify(scan()))
    once = optimize(plan)
    assert plan == smap(classify(scan()))  # input untouched
    assert optimize(once) == once
    _, applied = optimize_traced(once)
    assert applied == []


def test_rule_order_and_names():
    assert [r.__name__ for r in RULES] == [
        "pushdown_predicates", "pushdown_projections", "pushdown_limit", "dedupe_prompts", "shape_prompts"]
