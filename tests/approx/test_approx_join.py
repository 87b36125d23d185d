"""join(..., approx=sf.Target(recall=...)): blocks widened until a certified recall."""

from __future__ import annotations

import dataclasses
import random
import re
import zlib

import numpy as np
import polars as pl
import pytest

import semframe as sf
import semframe.physical.join as join_physical
from semframe.errors import PlanError

PRODUCTS = [f"{a} {b}" for a in ("red", "blue", "green", "black", "white", "grey")
            for b in ("phone", "kettle", "laptop", "blender", "lamp", "chair", "radio", "camera", "fan", "clock")]


class WordEmbedder:
    """Bag of words hashed into 256 dimensions: texts sharing words are similar (no model)."""

    def embed(self, texts, store=None):
        out = np.zeros((len(texts), 256), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in re.findall(r"\w+", t.lower()):
                out[i, zlib.crc32(w.encode()) % 256] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)


@pytest.fixture(autouse=True)
def words(monkeypatch):
    monkeypatch.setattr(join_physical, "default_embedder", lambda: WordEmbedder())
    monkeypatch.setattr(join_physical, "_EMBEDDINGS", [True])


def _data(n: int = 60, vague: float = 0.3, seed: int = 0):
    """Tickets about one product each; a share names only its kind ("my device"), not its words."""
    rng = random.Random(seed)
    tickets, gold = [], set()
    for i in range(n):
        product = PRODUCTS[i % len(PRODUCTS)]
        text = (f"ticket {i}: the thing I bought stopped working" if rng.random() < vague
                else f"ticket {i}: my {product} stopped working")
        tickets.append(text)
        gold.add((text, product))
    return pl.DataFrame({"ticket": tickets}), pl.DataFrame({"product": PRODUCTS}), gold


def _oracle(gold) -> sf.DeterministicEngine:
    def judge(request):
        text = request.messages[-1].content  # "Is <ticket> about <product>?"
        ticket, product = text[3:-1].split(" about ")
        return "YES" if (ticket, product) in gold else "NO"
    return sf.DeterministicEngine(responder=judge)


def _plan(tickets, products, **target):
    return tickets.lazy().semantic.join(products, "Is {left.ticket} about {right.product}?", candidates=5,
                                        approx=sf.Target(**target))


def test_the_node_checks_its_target() -> None:
    tickets, products, _ = _data(5)
    node = tickets.lazy().semantic.join(products, "Is {left.ticket} about {right.product}?")._plan_node
    with pytest.raises(PlanError, match="a join takes a recall target only"):
        dataclasses.replace(node, approx=sf.Target(precision=0.9))
    with pytest.raises(PlanError, match="algorithm='nested_loop' contradicts it"):
        dataclasses.replace(node, algorithm="nested_loop", approx=sf.Target(recall=0.9))
    with pytest.raises(PlanError, match="approx must be sf.Target"):
        dataclasses.replace(node, approx=0.9)
    text = _plan(tickets, products, recall=0.9).explain()
    assert "approx recall >= 0.9 @ confidence 0.95" in text and "blocks widened" in text


def test_recall_holds_at_the_stated_confidence_and_saves_pairs() -> None:
    tickets, products, gold = _data(200, vague=0.1)  # 12,000 pairs, 200 matches
    met, asked = 0, []
    for seed in range(20):
        oracle = _oracle(gold)
        result = _plan(tickets, products, recall=0.8, confidence=0.9, seed=seed).run(oracle, cache=False)
        found = set(zip(result.df["ticket"], result.df["product"]))
        assert found <= gold  # every pair kept was asked and answered YES
        met += len(found) / len(gold) >= 0.8
        notes = result.step_metrics[0].notes
        assert notes["recall_bound"] >= 0.8 and notes["certified"]
        asked.append(oracle.requests_seen)
    assert met >= 16  # P(Binomial(20, 0.9) < 16) < 5%
    assert max(asked) < 200 * 60  # never every pair: the certificate stops the widening early
    assert sum(asked) / 20 < 0.5 * 200 * 60


def test_widening_reaches_every_pair_when_the_bound_needs_it() -> None:
    tickets, products, gold = _data(30, vague=1.0)  # no ticket names its product: similarity says nothing
    oracle = _oracle(gold)
    result = _plan(tickets, products, recall=0.99, confidence=0.95, sample=200).run(oracle, cache=False)
    notes = result.step_metrics[0].notes
    assert set(zip(result.df["ticket"], result.df["product"])) == gold
    assert notes["tests"][-1]["certified"] and len(notes["tests"]) >= 2
    assert oracle.requests_seen <= 30 * 60


def test_a_join_with_a_recall_target_round_trips_in_a_plan_file() -> None:
    tickets, products, _ = _data(5)
    plan = _plan(tickets, products, recall=0.85, confidence=0.9, sample=300)
    back = sf.deserialize(plan.serialize())
    assert back._plan_node.approx == sf.Target(recall=0.85, confidence=0.9, sample=300)
    assert back.explain() == plan.explain()


def test_estimate_ranges_from_the_first_blocks_and_sample_to_every_pair() -> None:
    tickets, products, gold = _data(200, vague=0.1)
    step = _plan(tickets, products, recall=0.8, sample=500).estimate(_oracle(gold)).steps[0]
    assert (step.calls_low, step.calls_high) == (200 * 5 + 500, 200 * 60) and not step.rows_exact
