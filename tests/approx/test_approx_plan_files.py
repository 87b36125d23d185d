"""Approximate steps in plan files: the target and named sources round-trip; objects are refused."""

from __future__ import annotations

import json

import pytest

import semframe as sf
from semframe.errors import PlanError
from semframe.plan.approx import SemApproxClassify, SemApproxFilter

from tests.approx.test_approx_classify import TOPICS, _data, _oracle


def _steps(node):
    while node is not None:
        yield node
        node = getattr(node, "child", None)


def test_classify_and_filter_round_trip_with_their_targets_and_sources() -> None:
    df = _data(30)
    target = sf.Target(accuracy=0.85, confidence=0.9, sample=40, seed=3)
    plan = (df.lazy()
            .semantic.classify("title", TOPICS, name="topic", approx=target, proxy=["learned", "small"])
            .semantic.filter("{title}", instruction="Sport?", approx=sf.Target(precision=0.9, recall=0.8),
                             proxy="small"))
    text = plan.serialize()
    data = json.loads(text)
    step = data["plan"]
    assert step["op"] == "semantic.filter" and step["approx"]["precision"] == 0.9 and step["proxy"] == "small"
    assert step["input"]["op"] == "semantic.classify" and step["input"]["proxy"] == ["learned", "small"]
    back = sf.deserialize(text)
    nodes = list(_steps(back._plan_node))
    flt, cls = nodes[0], nodes[1]
    assert type(flt) is SemApproxFilter and flt.approx == sf.Target(precision=0.9, recall=0.8)
    assert type(cls) is SemApproxClassify and cls.approx == target and cls.sources == ("learned", "small")
    assert cls.embedder is None
    assert back.explain() == plan.explain()
    assert back.serialize() == text  # stable


def test_a_sentence_transformers_embedder_is_saved_as_its_model_name() -> None:
    embedder = sf.SentenceTransformerEmbedder("sentence-transformers/all-MiniLM-L6-v2")  # not loaded yet
    plan = _data(10).lazy().semantic.classify("title", TOPICS, approx=sf.Target(), proxy=embedder)
    step = json.loads(plan.serialize())["plan"]
    assert step["proxy"] == "learned" and step["embedder"] == "sentence-transformers/all-MiniLM-L6-v2"
    back = sf.deserialize(plan.serialize())._plan_node
    assert back.is_learned and back.embedder == "sentence-transformers/all-MiniLM-L6-v2"


def test_a_loaded_plan_runs_like_the_original() -> None:
    df = _data(300)
    sf.configure(engines={"approx-small": _oracle(df, model="small")})
    try:
        plan = df.lazy().semantic.classify("title", TOPICS, name="topic", approx=sf.Target(sample=60),
                                           proxy="approx-small")
        back = sf.deserialize(plan.serialize())
        first, second = plan.run(_oracle(df), cache=False), back.run(_oracle(df), cache=False)
    finally:
        sf.configure(engines={})
    assert first.df.equals(second.df)
    assert first.lineage["source"].to_list() == second.lineage["source"].to_list()
    assert second.step_metrics[0].notes["approx"]["certified"]


def test_exact_steps_still_load_as_exact_and_a_bad_target_is_named() -> None:
    df = _data(10)
    exact = sf.deserialize(df.lazy().semantic.classify("title", TOPICS).serialize())
    assert type(exact._plan_node) is not SemApproxClassify
    data = json.loads(df.lazy().semantic.classify("title", TOPICS, approx=sf.Target(), proxy="learned").serialize())
    data["plan"]["approx"]["accuracy"] = 2
    with pytest.raises(PlanError, match="accuracy must be a number strictly between 0 and 1"):
        sf.deserialize(json.dumps(data))
    data["plan"]["approx"] = {"accuracy": 0.9, "margin": 1}
    with pytest.raises(PlanError, match=r"unknown key\(s\) \['margin'\]"):
        sf.deserialize(json.dumps(data))
