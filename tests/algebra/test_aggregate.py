"""semantic.aggregate: packing by tokens under the context window, hierarchical reduce, lineage,
estimates, caching, frontends and errors -- on the deterministic engine (its tokens are counted
at ~4 characters a token, by the same ``count_tokens`` the packer uses)."""

from __future__ import annotations

import json

import pandas as pd
import polars as pl
import pytest

import semframe as sf
from semframe.accounting.tokens import request_prompt_tokens
from semframe.physical.aggregate import SEPARATOR, TRUNCATION_MARK

TASK = "Summarize the complaints"


def reviews(n: int = 120, groups: int = 3) -> pl.DataFrame:
    return pl.DataFrame({
        "product": [f"p{i % groups}" for i in range(n)],
        "shop": [["north", "south"][i % 2] for i in range(n)],
        "day": [n - i for i in range(n)],
        "review": [f"review {i}: the product broke after a week of normal use" for i in range(n)],
    })


def engine(window: int | None = 400, responder=None) -> sf.DeterministicEngine:
    return sf.DeterministicEngine(responder=responder, context_window=window)


def requests(e: sf.DeterministicEngine):
    return [r for batch in e.batches for r in batch]


def items(request) -> list[str]:
    return request.messages[-1].content.split(SEPARATOR)


def lineage() -> pl.DataFrame:
    return sf.last_run().lineage


def level_of(note: str) -> int:
    return int(note.split("reduce level ")[1].split()[0])


# --------------------------------------------------------------------------- packing and levels


@pytest.mark.parametrize("window,max_tokens", [(200, 30), (400, 60), (1000, 40), (160, 16)])
def test_no_request_exceeds_the_window(window, max_tokens):
    e = engine(window)
    out = reviews(300).semantic.aggregate(TASK, "review", by="product", max_tokens=max_tokens, engine=e)
    assert out.height == 3 and out["aggregate"].null_count() == 0
    sent = requests(e)
    assert len(sent) > 3  # the groups did not fit one request each
    assert all(request_prompt_tokens(r, e) + r.max_tokens <= window for r in sent)
    # the engine counted the same prompt tokens (it refuses anything over its window)
    assert lineage()["error"].null_count() == lineage().height
    assert (lineage()["prompt_tokens"] + max_tokens <= window).all()


def test_packing_is_greedy_not_one_row_per_request():
    e = engine(400)
    reviews().semantic.aggregate(TASK, "review", by="product", max_tokens=60, engine=e)
    first = e.batches[0]
    # Every level-1 request but a group's last is full: one more row would not fit.
    by_group: dict[str, list] = {}
    for r in first:
        by_group.setdefault(items(r)[0].split(":")[0], []).append(r)
    for r in first[:-1]:
        n = len(items(r))
        assert n > 1
    budget = 400 - 60
    row = "review 999: the product broke after a week of normal use"
    full = [r for r in first if request_prompt_tokens(r, e) + e.count_tokens(SEPARATOR + row) > budget]
    assert len(full) >= len(first) - 3  # all but (at most) the last request of each group are full


def test_each_level_is_one_engine_batch_over_all_groups():
    # 100 groups x 80 rows, a small window: three levels, so three engine batches.
    df = reviews(8000, groups=100)
    e = engine(300)
    out = df.semantic.aggregate(TASK, "review", by="product", max_tokens=40, engine=e)
    assert out.height == 100
    levels = lineage()["note"].map_elements(level_of, return_dtype=pl.Int64)
    assert levels.max() == 3
    assert len(e.batches) == 3
    assert [len(b) for b in e.batches] == [int((levels == k).sum()) for k in (1, 2, 3)]
    finals = lineage().filter(pl.col("note").str.contains("final"))
    assert finals.height == 100 and finals["note"].str.contains("reduce level 3 of 3").all()
    assert sf.last_run().metrics["engine_batches"].to_list() == [3]


def test_every_input_row_is_in_the_final_answers_lineage():
    df = reviews(300, groups=3)
    e = engine(300)
    df.semantic.aggregate(TASK, "review", by="product", max_tokens=40, engine=e)
    lin = lineage()
    finals = lin.filter(pl.col("note").str.contains("final"))
    assert finals.height == 3
    covered = sorted(i for p in finals["provenance"] for i in json.loads(p))
    assert covered == list(range(300))
    for p in finals["provenance"]:
        rows = json.loads(p)
        assert len({df["product"][r] for r in rows}) == 1  # a group's answer names its own rows only
    # intermediate answers have lineage too: level 1 requests cover every row exactly once
    level1 = lin.filter(pl.col("note").str.starts_with("reduce level 1 "))
    assert sorted(i for p in level1["provenance"] for i in json.loads(p)) == list(range(300))
    assert level1["note"].str.contains("partial").all()


def test_the_output_rows_provenance_is_the_whole_group():
    df = reviews(30, groups=2)
    result = df.lazy().semantic.aggregate(TASK, "review", by="product", max_tokens=40).run(engine(300))
    assert result.row_ids.dtype == pl.List(pl.UInt32)
    assert sorted(result.row_ids[0].to_list()) == list(range(0, 30, 2))


def test_order_by_changes_the_packing_order():
    df = reviews(60, groups=1)
    e1, e2 = engine(300), engine(300)
    df.semantic.aggregate(TASK, "review", max_tokens=40, engine=e1)
    df.semantic.aggregate(TASK, "review", order_by="day", max_tokens=40, engine=e2)
    first1, first2 = items(e1.batches[0][0]), items(e2.batches[0][0])
    assert first1[0].startswith("review 0:")
    assert first2[0].startswith("review 59:")  # day is n - i: the last row has the smallest day
    # ties in order_by fall back to input row order
    e3 = engine(300)
    df.semantic.aggregate(TASK, "review", order_by="shop", max_tokens=40, engine=e3)
    texts = [t for r in e3.batches[0] for t in items(r)]
    norths = [int(t.split()[1].rstrip(":")) for t in texts if int(t.split()[1].rstrip(":")) % 2 == 0]
    assert texts[0].startswith("review 0:") and norths == sorted(norths)


def test_a_row_too_long_for_the_window_is_truncated_with_a_note():
    df = pl.DataFrame({"t": ["short one", "x " * 2000, "short two"]})
    e = engine(300)
    out = df.semantic.aggregate(TASK, "t", max_tokens=40, engine=e)
    assert out["aggregate"].null_count() == 0
    sent = requests(e)
    assert all(request_prompt_tokens(r, e) + r.max_tokens <= 300 for r in sent)
    cut = [r for r in sent if TRUNCATION_MARK in r.messages[-1].content]
    assert len(cut) == 1
    notes = lineage()["note"].to_list()
    assert any("row 1 truncated from 1000 to" in n for n in notes)


# --------------------------------------------------------------------------- answers


def test_struct_answers_with_a_schema():
    e = engine(300)
    out = reviews(90).semantic.aggregate(TASK, "review", by="product", schema={"issue": str, "count": int},
                                         max_tokens=40, name="facts", engine=e)
    assert out.schema["facts"] == pl.Struct({"issue": pl.String, "count": pl.Int64})
    assert out["facts"].null_count() == 0
    assert "JSON object" in requests(e)[0].messages[0].content
    # later levels read the partial answers as JSON
    later = [r for r in requests(e) if "is an answer for one part" in r.messages[0].content]
    assert later and all(json.loads(t) for r in later for t in items(r))


def test_by_none_is_one_answer_for_the_whole_frame():
    e = engine(None)
    out = reviews(20).semantic.aggregate(TASK, "review", engine=e)
    assert out.columns == ["aggregate"] and out.height == 1
    assert len(requests(e)) == 1  # 2048 tokens by default: 20 rows fit one request
    assert json.loads(lineage()["provenance"][0]) == list(range(20))


def test_by_none_on_no_rows_is_one_null_answer():
    e = engine()
    out = reviews(0).semantic.aggregate(TASK, "review", engine=e)
    assert out.height == 1 and out["aggregate"][0] is None
    assert e.requests_seen == 0


def test_multiple_keys_in_order_of_first_appearance():
    df = reviews(12, groups=3)
    out = df.semantic.aggregate(TASK, "review", by=["product", "shop"], engine=engine())
    assert out.columns == ["product", "shop", "aggregate"]
    assert out.select("product", "shop").rows() == [("p0", "north"), ("p1", "south"), ("p2", "north"),
                                                     ("p0", "south"), ("p1", "north"), ("p2", "south")]


def test_null_and_blank_rows_are_left_out():
    df = pl.DataFrame({"g": ["a", "a", "a", "b", "b"], "t": ["one", None, "  ", None, None]})
    e = engine()
    out = df.semantic.aggregate(TASK, "t", by="g", engine=e)
    assert out.rows() == [("a", out["aggregate"][0]), ("b", None)]
    assert out["aggregate"][0] is not None
    assert len(requests(e)) == 1 and items(requests(e)[0]) == ["one"]
    lin = lineage()
    assert lin.height == 1 and json.loads(lin["provenance"][0]) == [0]  # only the row that took part


def test_a_template_over_two_columns():
    e = engine()
    reviews(4, groups=1).semantic.aggregate(TASK, "{shop}: {review}", engine=e)
    assert items(requests(e)[0])[0].startswith("north: review 0")


# --------------------------------------------------------------------------- caching, estimate, explain


def test_a_rerun_makes_no_engine_call():
    df = reviews(300)
    e = engine(300)
    plan = df.lazy().semantic.aggregate(TASK, "review", by="product", max_tokens=40)
    first = plan.collect(engine=e)
    calls = e.requests_seen
    assert calls > 3
    again = plan.collect(engine=e)
    assert e.requests_seen == calls
    assert again.equals(first)
    assert set(lineage()["source"]) == {"exact_cache"}


def test_identical_chunks_are_asked_once():
    df = pl.DataFrame({"g": ["a", "a", "b", "b"], "t": ["x", "y", "x", "y"]})
    e = engine()
    df.semantic.aggregate(TASK, "t", by="g", engine=e, cache=False)
    assert e.requests_seen == 1
    assert sorted(lineage()["source"]) == ["dedup", "engine"]


def test_estimate_counts_the_packing_exactly_when_one_level_suffices():
    df = reviews(60)
    e = engine(1000)
    plan = df.lazy().semantic.aggregate(TASK, "review", by="product", max_tokens=40)
    step = plan.estimate(e).steps[0]
    plan.collect(engine=e)
    assert step.rows_exact and step.calls_low == step.calls_high == e.requests_seen == len(requests(e))


def test_estimate_bounds_a_multi_level_reduce():
    df = reviews(300)
    # partial answers always run to max_tokens: the estimate's high figure is what happens
    e = engine(300, responder=lambda r: r.key[:12] + " word" * 100)  # distinct, never deduped
    plan = df.lazy().semantic.aggregate(TASK, "review", by="product", max_tokens=40)
    step = plan.estimate(e).steps[0]
    plan.collect(engine=e, cache=False)
    assert not step.rows_exact
    assert step.calls_low <= e.requests_seen <= step.calls_high
    assert len(e.batches[0]) == plan.estimate(e).steps[0].calls_high - sum(len(b) for b in e.batches[1:])


def test_explain_shows_the_packing_and_the_levels():
    df = reviews(300)
    text = df.lazy().semantic.aggregate(TASK, "review", by="product", max_tokens=40, context_window=300).explain()
    assert "SEMANTIC AGGREGATE -> aggregate (step 0)" in text
    assert "packed to 260 tokens per request" in text
    frame = sf.SemLazyFrame.from_data(df).semantic.aggregate(TASK, "review", by="product", max_tokens=40,
                                                             context_window=300)
    assert "packed to 260 tokens per request, up to 3 levels" in frame.explain()


def test_the_engines_window_is_used():
    e = engine(250)
    reviews(60, groups=1).semantic.aggregate(TASK, "review", max_tokens=40, engine=e)
    assert all(request_prompt_tokens(r, e) + 40 <= 250 for r in requests(e))
    assert any(request_prompt_tokens(r, e) + 40 > 200 for r in requests(e))  # it packed up to 250


def test_context_window_option_overrides_the_engine():
    e = engine(None)  # an engine that says no window
    reviews(60, groups=1).semantic.aggregate(TASK, "review", max_tokens=40, context_window=200, engine=e)
    assert len(e.batches) >= 2
    assert all(request_prompt_tokens(r, e) + 40 <= 200 for r in requests(e))


def test_a_budget_stops_between_levels():
    df = reviews(300, groups=1)
    plan = df.lazy().semantic.aggregate(TASK, "review", max_tokens=40)
    probe = engine(300)
    plan.collect(engine=probe, cache=False)
    assert len(probe.batches) >= 2
    level1 = sum(request_prompt_tokens(r, probe) + r.max_tokens for r in probe.batches[0])
    e = engine(300)
    with pytest.raises(sf.BudgetExceeded) as err:
        plan.collect(engine=e, max_tokens=level1 + 10, cache=False)
    assert len(e.batches) == 1  # level 1 ran; level 2 would have gone over the budget
    lin = err.value.result.lineage
    assert lin.height == len(e.batches[0])  # what was asked has lineage
    assert lin["note"].str.contains("stopped before its end").all()


# --------------------------------------------------------------------------- frontends


def test_pandas_eager_lazy_and_group_by_agree():
    df = reviews(90)
    kw = {"max_tokens": 40, "context_window": 300}
    eager = df.semantic.aggregate(TASK, "review", by="product", engine=engine(), **kw)
    lazy = df.lazy().semantic.aggregate(TASK, "review", by="product", **kw).collect(engine=engine())
    grouped = (sf.SemLazyFrame.from_data(df).group_by("product").semantic.aggregate(TASK, "review", **kw)
               .collect(engine=engine()))
    pdf = df.to_pandas()
    pdf.index = [f"r{i}" for i in range(len(pdf))]
    pandas = pdf.semantic.aggregate(TASK, "review", by="product", engine=engine(), **kw)
    assert eager.equals(lazy) and eager.equals(grouped)
    assert isinstance(pandas, pd.DataFrame) and list(pandas.columns) == ["product", "aggregate"]
    assert pandas["aggregate"].tolist() == eager["aggregate"].to_list()


def test_group_by_with_two_keys_and_further_steps():
    df = reviews(12)
    out = (sf.SemLazyFrame.from_data(df).filter(pl.col("day") > 2).group_by("product", "shop")
           .semantic.aggregate(TASK, "review", name="gist")
           .filter(pl.col("shop") == "north")
           .collect(engine=engine()))
    assert out.columns == ["product", "shop", "gist"] and set(out["shop"]) == {"north"}


def test_polars_group_by_has_no_semantic_namespace():
    with pytest.raises(AttributeError):
        reviews().lazy().group_by("product").semantic  # noqa: B018


# --------------------------------------------------------------------------- errors before any call


@pytest.mark.parametrize("kwargs,message", [
    ({"by": "produkt"}, "by column 'produkt' not found"),
    ({"order_by": ["day", "when"]}, "order_by column 'when' not found"),
    ({"by": "product", "name": "product"}, "also a group key"),
    ({"max_tokens": 0}, "max_tokens must be a positive integer"),
    ({"context_window": 100, "max_tokens": 40}, "cannot hold two partial answers"),
    ({"by": ["product", "product"]}, "names a column twice"),
    ({"by": 3}, "by must be a column name"),
    ({"schema": {}}, "the schema has no fields"),
])
def test_bad_arguments_fail_while_building(kwargs, message):
    e = engine()
    with pytest.raises(sf.PlanError, match=message):
        reviews().lazy().semantic.aggregate(TASK, "review", **kwargs)
    with pytest.raises(sf.PlanError, match=message):
        reviews().semantic.aggregate(TASK, "review", engine=e, **kwargs)
    assert e.requests_seen == 0


def test_a_bad_column_or_task_fails_while_building():
    with pytest.raises(sf.PlanError, match="neither a column nor a template"):
        reviews().lazy().semantic.aggregate(TASK, "reviews")
    with pytest.raises(sf.PlanError, match="task must be a non-empty string"):
        reviews().lazy().semantic.aggregate("  ", "review")


def test_an_engine_window_too_small_fails_before_any_call():
    e = engine(130)  # 3 x 40 fits, but not with the instruction
    with pytest.raises(sf.PlanError, match="too few for two partial answers"):
        reviews(200, groups=1).semantic.aggregate(TASK + " " + "in great detail " * 5, "review", max_tokens=40,
                                                  engine=e)
    assert e.requests_seen == 0


def test_group_by_semantic_needs_plain_keys_right_after_group_by():
    frame = sf.SemLazyFrame.from_data(reviews())
    with pytest.raises(sf.PlanError, match="plain column names"):
        frame.group_by(pl.col("product").str.to_uppercase()).semantic.aggregate(TASK, "review")
    with pytest.raises(sf.PlanError, match="do not pass by="):
        frame.group_by("product").semantic.aggregate(TASK, "review", by="shop")
    with pytest.raises(sf.PlanError, match="only aggregate"):
        frame.group_by("product").semantic.classify("review", ["a", "b"])
    with pytest.raises(sf.PlanError, match="takes no group_by option"):
        frame.group_by("product", key="shop").semantic.aggregate(TASK, "review")


def test_a_lazy_step_takes_no_run_option():
    with pytest.raises(TypeError, match="run option"):
        reviews().lazy().semantic.aggregate(TASK, "review", batch_size=3)


# --------------------------------------------------------------------------- in a longer plan


def test_rows_are_packed_by_input_row_even_after_a_sort():
    df = reviews(30, groups=2)
    e = engine(None)
    plan = sf.SemLazyFrame.from_data(df).sort("day")  # a semframe step: rows keep their scan ids
    out = plan.semantic.aggregate(TASK, "review", by="product").collect(engine=e)
    assert out["product"].to_list() == ["p0", "p1"]  # first appearance by input row, not by the sort
    assert items(requests(e)[0])[0].startswith("review 0:")


def test_a_step_after_the_aggregate_reads_its_answers():
    df = reviews(60)
    e = engine(300)
    plan = (df.lazy().semantic.aggregate(TASK, "review", by="product", max_tokens=40)
            .semantic.classify("aggregate", ["urgent", "routine"], name="priority"))
    est = plan.estimate(e)
    out = plan.collect(engine=e)
    assert out.columns == ["product", "aggregate", "priority"] and out["priority"].null_count() == 0
    assert [s.operator for s in est.steps] == ["aggregate", "classify"]
    assert est.steps[1].calls_high == 3  # one label per group
    classify = sf.last_run().lineage.filter(pl.col("operator") == "classify")
    assert classify.height == 3 and classify["provenance"].is_not_null().all()


def test_the_inline_layout_also_fits_the_window():
    e = engine(300)
    reviews(120).semantic.aggregate(TASK, "review", by="product", max_tokens=40, engine=e, prompt_layout="inline")
    sent = requests(e)
    assert all(len(r.messages) == 1 for r in sent)
    assert all(request_prompt_tokens(r, e) + 40 <= 300 for r in sent)


def test_a_null_key_is_a_group_of_its_own():
    df = pl.DataFrame({"g": ["a", None, "a", None], "t": ["w", "x", "y", "z"]})
    out = df.semantic.aggregate(TASK, "t", by="g", engine=engine())
    assert out["g"].to_list() == ["a", None] and out["aggregate"].null_count() == 0


def test_after_a_join_the_lineage_names_the_pairs():
    left = pl.DataFrame({"k": [1, 1, 2], "t": ["a", "b", "c"]})
    right = pl.DataFrame({"k": [1, 2], "shop": ["north", "south"]})
    plan = sf.SemLazyFrame.from_data(left).join(right.lazy(), on="k").semantic.aggregate(TASK, "t", by="shop")
    out = plan.collect(engine=engine())
    assert out["shop"].to_list() == ["north", "south"]
    first = json.loads(lineage()["provenance"][0])
    assert first == [{"left": 0, "right": 0}, {"left": 1, "right": 0}]


def test_metrics_count_rows_in_and_groups_out():
    reviews(30).lazy().semantic.aggregate(TASK, "review", by="product").collect(engine=engine(None), progress=True)
    m = sf.last_run().metrics.row(0, named=True)
    assert (m["rows_in"], m["rows_out"], m["operator"]) == (30, 3, "aggregate")


def test_aggregating_a_models_answers_is_estimated_as_a_range():
    df = reviews(30)
    plan = (df.lazy().semantic.map("Shorten: {review}", name="short", max_tokens=8)
            .semantic.aggregate(TASK, "short", by="product", max_tokens=40))
    est = plan.estimate(engine())
    agg = est.steps[1]
    assert agg.operator == "aggregate" and not agg.rows_exact
    assert 1 <= agg.calls_low <= agg.calls_high
    e = engine()
    out = plan.collect(engine=e)
    assert out.height == 3 and agg.calls_low <= e.requests_seen - 30 <= agg.calls_high
