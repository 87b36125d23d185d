"""semantic.join: the plan node, the three algorithms against a gold-answering engine, the cost
model, lineage, reruns and the frontends."""

from __future__ import annotations

import re
import zlib

import numpy as np
import pandas as pd
import polars as pl
import pytest

import semframe as sf
from semframe.errors import BudgetExceeded, PlanError
from semframe.optimizer import optimize
from semframe.physical import join as join_physical
from semframe.plan.join import SemJoin, join_template
from semframe.plan.spec import JsonSpec

PRODUCTS = ["phone", "blender", "kettle", "toaster", "laptop", "camera", "printer", "router", "monitor", "speaker",
            "headset", "keyboard", "mouse", "tablet", "charger", "drone", "scooter", "watch", "fridge", "oven"]
TEMPLATE = "Is {left.ticket} about {right.product}?"


def tickets_frame() -> pl.DataFrame:
    rows = [("my phone will not charge", 1), ("the blender is loud", 2), ("kettle leaks water", 3),
            ("printer jams and the router drops", 4), ("nothing works, help", 5), ("drone crashed", 6)]
    return pl.DataFrame(rows, schema=["ticket", "id"], orient="row")


def products_frame(n: int = len(PRODUCTS)) -> pl.DataFrame:
    return pl.DataFrame({"product": PRODUCTS[:n], "id": list(range(100, 100 + n))})


def gold(ticket: str, product: str) -> bool:
    return product in ticket.split()


_PAIR = re.compile(r"^Is (.*) about (.*)\?$", re.S)
_ITEMS = re.compile(r"^(\d+)\. (.*)$", re.M)


def judge(request) -> str:
    """Answers from the gold links: a pair prompt YES/NO, a classify prompt the matching numbers."""
    *head, last = request.messages
    ticket, product = _PAIR.match(last.content).groups()
    if isinstance(request.spec, JsonSpec):
        items = dict((int(k), text) for k, text in _ITEMS.findall(request.prompt_text))
        return '{"matches": [%s]}' % ", ".join(str(k) for k, p in sorted(items.items()) if gold(ticket, p))
    return "YES" if gold(ticket, product) else "NO"


def gold_engine() -> sf.DeterministicEngine:
    return sf.DeterministicEngine(responder=judge)


def expected_pairs(left: pl.DataFrame, right: pl.DataFrame) -> list[tuple[str, str]]:
    return [(t, p) for t in left["ticket"] for p in right["product"] if gold(t, p)]


class WordEmbedder:
    """Bag of words hashed into 512 dimensions: texts sharing a word are similar (no model)."""

    def __init__(self):
        self.calls = 0

    def embed(self, texts, store=None):
        self.calls += 1
        out = np.zeros((len(texts), 512), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in re.findall(r"\w+", t.lower()):
                out[i, zlib.crc32(w.encode()) % 512] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)


@pytest.fixture
def words(monkeypatch) -> WordEmbedder:
    embedder = WordEmbedder()
    monkeypatch.setattr(join_physical, "default_embedder", lambda: embedder)
    monkeypatch.setattr(join_physical, "_EMBEDDINGS", [True])
    return embedder


def pairs_of(out: pl.DataFrame) -> list[tuple[str, str]]:
    return list(zip(out["ticket"].to_list(), out["product"].to_list()))


# --------------------------------------------------------------------------- plan and validation


def test_template_names_columns_by_side_and_plain_names_resolve():
    t = join_template("Is {ticket} about {right.product} ({left.id})?", ("ticket", "id"), ("product", "id"))
    assert t.columns == ("left.ticket", "right.product", "left.id")
    assert t.source == "Is {left.ticket} about {right.product} ({left.id})?"


@pytest.mark.parametrize("template, message", [
    ("Is {ticket} about {id}?", "column 'id' is on both sides"),
    ("Is {ticket} about {prodct}?", "column 'prodct' not found on either side"),
    ("Is {left.ticket} about {right.nope}?", "column 'nope' not found on the right side"),
    ("Is {left.ticket} about {left.id}?", "names no column of the right side"),
])
def test_template_errors_name_the_problem_and_the_fix(template, message):
    engine = gold_engine()
    with pytest.raises(PlanError, match=re.escape(message)):
        tickets_frame().semantic.join(products_frame(), template, engine=engine)
    assert engine.requests_seen == 0


def test_ambiguous_name_error_says_how_to_fix_it():
    with pytest.raises(PlanError, match=r"write \{left.id\} or \{right.id\}"):
        tickets_frame().lazy().semantic.join(products_frame(), "Is {ticket} about {id}?")


@pytest.mark.parametrize("option, message", [
    ({"how": "outer"}, "how must be one of 'inner', 'left'"),
    ({"algorithm": "hash"}, "algorithm must be one of"),
    ({"candidates": 0}, "candidates must be a positive integer"),
    ({"audit": -1}, "audit must be a non-negative integer"),
])
def test_bad_options_fail_before_any_engine_call(option, message):
    engine = gold_engine()
    with pytest.raises(PlanError, match=message):
        tickets_frame().semantic.join(products_frame(), TEMPLATE, engine=engine, **option)
    assert engine.requests_seen == 0


def test_unknown_verb_option_is_a_type_error():
    with pytest.raises(TypeError, match="candidats"):
        tickets_frame().lazy().semantic.join(products_frame(), TEMPLATE, candidats=3)


def test_schema_suffixes_clashing_right_columns():
    plan = tickets_frame().lazy().semantic.join(products_frame(), TEMPLATE)
    assert plan.collect_schema().names() == ["ticket", "id", "product", "id_right"]


def test_forced_classify_on_a_large_right_side_fails_before_any_engine_call():
    engine = gold_engine()
    big = pl.DataFrame({"product": [f"p{i}" for i in range(40)]})
    with pytest.raises(PlanError, match="algorithm='classify' is not possible"):
        tickets_frame().semantic.join(big, TEMPLATE, algorithm="classify", engine=engine)
    assert engine.requests_seen == 0


# --------------------------------------------------------------------------- algorithms


def test_nested_loop_asks_every_pair_in_blocks_and_keeps_yes_pairs():
    left, right = tickets_frame(), products_frame()
    engine = gold_engine()
    out = left.semantic.join(right, TEMPLATE, algorithm="nested_loop", engine=engine, batch_size=16)
    assert pairs_of(out) == expected_pairs(left, right)
    assert engine.requests_seen == left.height * right.height
    assert max(len(b) for b in engine.batches) <= 16  # one block of pairs per round, never all of them
    assert len(engine.batches) == -(-left.height * right.height // 16)
    assert out.columns == ["ticket", "id", "product", "id_right"]
    assert out["id_right"].to_list() == [100, 101, 102, 106, 107, 115]


@pytest.mark.parametrize("algorithm", ["nested_loop", "blocking", "classify"])
def test_every_algorithm_gives_the_nested_loop_pairs(algorithm, words):
    left = tickets_frame()
    right = products_frame(16)  # classify lists at most 16 items
    engine = gold_engine()
    out = left.semantic.join(right, TEMPLATE, algorithm=algorithm, candidates=3, audit=10, engine=engine)
    assert pairs_of(out) == expected_pairs(left, right)
    run = sf.last_run()
    assert run.step_metrics[0].notes["algorithm"] == algorithm
    calls = {"nested_loop": left.height * right.height, "classify": left.height}
    if algorithm == "blocking":
        notes = run.step_metrics[0].notes
        assert notes["audit_yes"] == 0 and notes["estimated_recall"] == 1.0
        assert notes["audit_pairs"] == 10 and notes["outside_pairs"] == 6 * 16 - 6 * 3
        assert engine.requests_seen == left.height * 3 + 10
        assert words.calls == 2  # left texts once, right texts once
    else:
        assert engine.requests_seen == calls[algorithm]


def test_blocking_audit_finds_matches_outside_the_blocks_and_estimates_recall(words):
    # With one candidate per row, the ticket naming two products misses one of them.
    left, right = tickets_frame(), products_frame()
    engine = gold_engine()
    out = left.semantic.join(right, TEMPLATE, algorithm="blocking", candidates=1, audit=1000, engine=engine)
    notes = sf.last_run().step_metrics[0].notes
    outside = left.height * right.height - left.height
    assert notes["outside_pairs"] == outside
    assert notes["audit_pairs"] == outside  # fewer pairs outside than audit=: all of them asked
    assert notes["audit_yes"] == 1
    assert notes["estimated_recall"] == pytest.approx(notes["found_in_blocks"] / (notes["found_in_blocks"] + 1))
    assert notes["estimated_recall"] < 1.0
    # the audit's YES pair is a match like any other
    assert pairs_of(out) == expected_pairs(left, right)
    audit_rows = sf.last_run().lineage.filter(pl.col("note").str.contains("audit"))
    assert audit_rows.height == outside


def test_blocking_with_audit_off_reports_no_recall(words):
    engine = gold_engine()
    tickets_frame().semantic.join(products_frame(), TEMPLATE, algorithm="blocking", candidates=2, audit=0,
                                  engine=engine)
    notes = sf.last_run().step_metrics[0].notes
    assert notes["audit_pairs"] == 0 and notes["estimated_recall"] is None
    assert engine.requests_seen == tickets_frame().height * 2


def test_blocking_with_the_default_embedder():
    pytest.importorskip("sentence_transformers")
    left = pl.DataFrame({"ticket": ["my phone will not charge", "the blender is loud", "kettle leaks water"]})
    right = products_frame(12)
    engine = gold_engine()
    out = left.semantic.join(right, TEMPLATE, algorithm="blocking", candidates=3, audit=5, engine=engine)
    assert pairs_of(out) == expected_pairs(left, right)
    assert engine.requests_seen == 3 * 3 + 5


def test_left_join_keeps_unmatched_left_rows(words):
    left, right = tickets_frame(), products_frame(16)
    for algorithm in ("nested_loop", "blocking", "classify"):
        out = left.semantic.join(right, TEMPLATE, how="left", algorithm=algorithm, candidates=3,
                                 engine=gold_engine())
        assert out["ticket"].to_list() == ["my phone will not charge", "the blender is loud", "kettle leaks water",
                                           "printer jams and the router drops", "printer jams and the router drops",
                                           "nothing works, help", "drone crashed"], algorithm
        assert out["product"].to_list() == ["phone", "blender", "kettle", "printer", "router", None, "drone"]
        assert sf.last_run().row_ids.to_list()[5] == {"left": 4, "right": None}


def test_auto_picks_the_cheapest_and_explain_shows_every_estimate(words):
    small = tickets_frame().lazy().semantic.join(products_frame(4), TEMPLATE)
    text = small.explain()
    assert "algorithm=auto -> " in text
    assert "nested_loop: 24 calls x" in text and "classify: 6 calls x" in text
    assert "blocking: not possible" not in text or "not more than candidates" in text
    big = tickets_frame().lazy().semantic.join(products_frame(20), TEMPLATE, candidates=2, audit=4)
    text = big.explain()
    assert "algorithm=auto -> blocking" in text
    assert "classify: not possible (the right side has 20 rows; at most 16 are listed)" in text
    assert "blocking: 16 calls x" in text  # 6 x 2 candidates + 4 audit pairs
    assert "nested_loop: 120 calls x" in text


def test_auto_choice_runs_what_explain_chose(words):
    plan = tickets_frame().lazy().semantic.join(products_frame(20), TEMPLATE, candidates=2, audit=4)
    engine = gold_engine()
    run = plan.run(engine)
    assert run.step_metrics[0].notes["algorithm"] == "blocking"
    assert engine.requests_seen == 6 * 2 + 4


# --------------------------------------------------------------------------- lineage, estimate, rerun


def test_lineage_names_left_and_right_rows_of_every_pair():
    left, right = tickets_frame(), products_frame(5)
    out = left.semantic.join(right, TEMPLATE, algorithm="nested_loop", engine=gold_engine())
    run = sf.last_run()
    lineage = run.lineage
    assert lineage.height == left.height * right.height
    assert lineage["row_id"].null_count() == lineage.height
    assert lineage["provenance"][0] == '{"left": 0, "right": 0}'
    assert lineage["provenance"][7] == '{"left": 1, "right": 2}'
    ids = run.row_ids.to_list()
    assert ids == [{"left": 0, "right": 0}, {"left": 1, "right": 1}, {"left": 2, "right": 2}]
    for (lid, rid), row in zip([(i["left"], i["right"]) for i in ids], out.iter_rows(named=True)):
        assert left["ticket"][lid] == row["ticket"] and right["product"][rid] == row["product"]


def test_classify_lineage_names_the_left_row_and_every_listed_right_row():
    tickets_frame().semantic.join(products_frame(3), TEMPLATE, algorithm="classify", engine=gold_engine())
    lineage = sf.last_run().lineage
    assert lineage.height == 6
    assert lineage["provenance"][1] == '{"left": 1, "right": [0, 1, 2]}'
    assert lineage["value"][1] == '{"matches":[2]}'


def test_estimate_equals_the_calls_of_a_nested_loop():
    left = pl.concat([tickets_frame(), tickets_frame().head(2)])  # two repeated tickets: asked once
    left = left.with_columns(pl.when(pl.col("id") == 5).then(None).otherwise(pl.col("ticket")).alias("ticket"))
    plan = left.lazy().semantic.join(products_frame(7), TEMPLATE, algorithm="nested_loop")
    est = plan.estimate()
    engine = gold_engine()
    plan.run(engine)
    assert est.calls == (engine.requests_seen, engine.requests_seen) == (5 * 7, 5 * 7)
    assert sf.last_run().step_metrics[0].skipped == 7


def test_estimate_of_classify_and_blocking(words):
    plan = tickets_frame().lazy().semantic.join(products_frame(5), TEMPLATE, algorithm="classify")
    engine = gold_engine()
    est = plan.estimate()
    plan.run(engine)
    assert est.calls == (6, 6) == (engine.requests_seen, engine.requests_seen)
    est = tickets_frame().lazy().semantic.join(products_frame(), TEMPLATE, algorithm="blocking", candidates=3,
                                               audit=10).estimate()
    assert est.calls[1] == 6 * 3 + 10


@pytest.mark.parametrize("algorithm", ["nested_loop", "blocking", "classify"])
def test_rerun_asks_the_engine_nothing(algorithm, words):
    plan = tickets_frame().lazy().semantic.join(products_frame(12), TEMPLATE, algorithm=algorithm, candidates=3,
                                                audit=20)
    engine = gold_engine()
    first = plan.collect(engine=engine)
    asked = engine.requests_seen
    assert asked > 0
    second = plan.collect(engine=engine)
    assert engine.requests_seen == asked
    assert first.equals(second)
    metrics = sf.last_run().step_metrics[0]
    assert metrics.engine_requests == 0 and metrics.exact_cache_hits == asked


def test_budget_stops_between_rounds_with_the_partial_result():
    plan = tickets_frame().lazy().semantic.join(products_frame(), TEMPLATE, algorithm="nested_loop")
    with pytest.raises(BudgetExceeded):
        plan.run(gold_engine(), batch_size=20, max_tokens=1_000)
    partial = sf.last_run()
    assert not partial.complete
    assert 1 <= partial.df.height < len(expected_pairs(tickets_frame(), products_frame()))
    assert pairs_of(partial.df) == expected_pairs(tickets_frame(), products_frame())[:partial.df.height]


# --------------------------------------------------------------------------- frontends


def test_lazy_frontend_joins_a_semframe_lazy_frame_and_chains():
    right = products_frame(5).lazy().semantic.filter("Is {product} a kitchen appliance?")
    kitchen = {"blender", "kettle", "toaster"}

    def respond(request):
        text = request.messages[-1].content
        if text.startswith("Is ") and text.endswith(" a kitchen appliance?"):
            return "YES" if text[3:-21] in kitchen else "NO"
        return judge(request)

    plan = tickets_frame().lazy().semantic.join(right, TEMPLATE, algorithm="nested_loop").select("ticket", "product")
    out = plan.collect(engine=sf.DeterministicEngine(responder=respond))
    assert pairs_of(out) == [("the blender is loud", "blender"), ("kettle leaks water", "kettle")]


def test_pandas_frontend_returns_a_fresh_frame():
    left = tickets_frame().to_pandas()
    right = products_frame(6).to_pandas()
    out = left.semantic.join(right, TEMPLATE, algorithm="nested_loop", engine=gold_engine())
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == ["ticket", "id", "product", "id_right"]
    assert list(zip(out["ticket"], out["product"])) == expected_pairs(tickets_frame(), products_frame(6))


def test_eager_polars_joins_a_pandas_right_side():
    out = tickets_frame().semantic.join(products_frame(6).to_pandas(), TEMPLATE, algorithm="nested_loop",
                                        engine=gold_engine())
    assert pairs_of(out) == expected_pairs(tickets_frame(), products_frame(6))


# --------------------------------------------------------------------------- optimizer, end to end


def test_a_filter_above_the_join_is_asked_about_fewer_pairs():
    plan = (tickets_frame().lazy().semantic.join(products_frame(5), TEMPLATE, algorithm="nested_loop")
            .filter(pl.col("id") <= 3))
    assert "pushdown_join_predicates" in plan.explain()
    engine = gold_engine()
    out = plan.collect(engine=engine)
    assert engine.requests_seen == 3 * 5
    assert pairs_of(out) == [("my phone will not charge", "phone"), ("the blender is loud", "blender"),
                             ("kettle leaks water", "kettle")]


def test_projection_prunes_each_side():
    plan = (tickets_frame().lazy().semantic.join(products_frame(5), TEMPLATE, algorithm="nested_loop")
            .select("ticket", "product"))
    optimized = optimize(plan.plan)
    join = optimized.child
    assert isinstance(join, SemJoin)
    assert join.left.columns == ("ticket",) and join.right.columns == ("product",)
    out = plan.collect(engine=gold_engine())
    assert out.columns == ["ticket", "product"]


def test_plain_names_work_when_one_side_has_them(tmp_path):
    left, right = tickets_frame().drop("id"), products_frame(5).drop("id")
    out = left.semantic.join(right, "Is {ticket} about {product}?", algorithm="nested_loop", engine=gold_engine())
    assert pairs_of(out) == expected_pairs(left, right)
    # a file scan is not read to explain: the choice is made when the inputs are read
    path = tmp_path / "products.parquet"
    right.write_parquet(path)
    text = left.lazy().semantic.join(pl.scan_parquet(path), "Is {ticket} about {product}?").explain()
    assert "algorithm=auto (chosen when the inputs are read)" in text


def test_a_suffixed_name_that_clashes_too_is_an_error():
    left = tickets_frame().with_columns(id_right=pl.lit(0))
    with pytest.raises(PlanError, match="would be named 'id_right', which is a left column too"):
        left.lazy().semantic.join(products_frame(), TEMPLATE)


def test_progress_counts_left_rows(monkeypatch):
    import functools
    import io

    from semframe.execution.progress import Progress
    from semframe.physical import executor

    out = io.StringIO()
    monkeypatch.setattr(executor, "Progress", functools.partial(Progress, delay=0.0, every=0.0, stream=out))
    tickets_frame().semantic.join(products_frame(5), TEMPLATE, algorithm="nested_loop", engine=gold_engine(),
                                  batch_size=7, progress=True)
    assert "join 6/6 rows (100%)" in out.getvalue()
