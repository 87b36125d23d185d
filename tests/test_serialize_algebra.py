"""Plan files hold every semantic operator: join, aggregate, top-k and sort, embed, search,
sim_join, cluster, dedup -- saved field by field and read back to the same plan."""

from __future__ import annotations

import re

import polars as pl
import pytest

import semframe as sf
from semframe.plan import serialize
from semframe.plan.explain import render


@pytest.fixture
def frames():
    left = pl.DataFrame({"ticket": ["screen broke", "battery dies", "late parcel"], "n": [1, 2, 3]})
    right = pl.DataFrame({"product": ["phone", "courier"]})
    return left, right


def plans(left, right):
    lf = left.lazy()
    return {
        "join": lf.semantic.join(right, "Is {left.ticket} about {right.product}?", how="left"),
        "aggregate": lf.semantic.aggregate("Summarize the complaints", "ticket", by="n", name="gist"),
        "topk": lf.semantic.topk(2, "Which is more urgent: {a} or {b}?", column="ticket"),
        "sort": lf.semantic.sort("Which is more urgent: {a} or {b}?", column="ticket"),
        "embed": lf.semantic.embed("ticket"),
        "search": lf.semantic.search("broken phone", "ticket", k=2),
        "sim_join": lf.semantic.sim_join(right, left_on="ticket", right_on="product", k=1),
        "cluster": lf.semantic.cluster("ticket", k=2),
        "dedup": lf.semantic.dedup("ticket", candidates=2),
        "classify after join": lf.semantic.join(right, "Is {ticket} about {product}?")
                                 .semantic.classify("ticket", ["YES", "NO"], name="urgent"),
    }


@pytest.mark.parametrize("name", ["join", "aggregate", "topk", "sort", "embed", "search", "sim_join", "cluster",
                                  "dedup", "classify after join"])
def test_round_trip(frames, name):
    plan = plans(*frames)[name]
    text = plan.serialize()
    again = sf.deserialize(text)
    assert serialize.dumps(again.plan) == serialize.dumps(plan.plan)
    assert again.schema == plan.schema
    # The logical plans read the same (the physical explain may show more once the data is
    # embedded in memory: a loaded plan knows its rows).
    assert _scans_unnamed(render(again.plan)) == _scans_unnamed(render(plan.plan))


def _scans_unnamed(text: str) -> str:
    """The plan text without the scans' descriptions ("LazyFrame" becomes "DataFrame 3 rows")."""
    return re.sub(r"SCAN [^\[]*\[", "SCAN [", text)


@pytest.mark.parametrize("name", ["join", "aggregate", "topk", "classify after join"])
def test_a_loaded_plan_gives_the_same_answers(frames, name):
    plan = plans(*frames)[name]
    again = sf.deserialize(plan.serialize())
    a = plan.collect(engine=sf.DeterministicEngine(), cache=False)
    b = again.collect(engine=sf.DeterministicEngine(), cache=False)
    assert a.equals(b)


def test_an_embedder_object_is_refused_with_the_fix(frames):
    left, _ = frames
    plan = left.lazy().semantic.embed("ticket", embedder=sf.HashingEmbedder())
    with pytest.raises(sf.PlanError, match="embedder"):
        plan.serialize()
