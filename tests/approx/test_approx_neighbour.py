"""proxy="neighbour": each row takes the oracle answer of its most similar reference row, if certified."""

from __future__ import annotations

import json
import random
import re

import polars as pl
import pytest

import semframe as sf
from semframe.errors import PlanError
from semframe.plan.approx import SemApproxClassify

from .synthetic import TOPICS, WORDS, headlines
from .test_approx_classify import _oracle


@pytest.fixture(autouse=True)
def _hashing_default_embedder():
    """proxy="neighbour" alone embeds with the configured default embedder: a fast one here."""
    sf.configure(embedding_model=sf.HashingEmbedder(256))
    yield
    sf.configure(embedding_model=None)


def _near_duplicates(n: int, bases: int = 40, unique: float = 0.0, noise: float = 0.0,
                     seed: int = 0) -> pl.DataFrame:
    """Rows that reword one of ``bases`` headlines (same words, another number), keeping its topic
    except for a ``noise`` share given a random one; and a ``unique`` share of one-off mixed
    headlines under a random topic (their nearest neighbour is a poor guess, at a lower similarity)."""
    base = headlines(bases, 0.3, seed)
    rng = random.Random(seed + 1000)
    words = [w for ws in WORDS.values() for w in ws]
    rows = []
    for i in range(n):
        if rng.random() < unique:
            rows.append({"title": f"{' '.join(rng.sample(words, 5))} item {i}", "gold": rng.choice(TOPICS)})
            continue
        b = rng.randrange(bases)
        gold = rng.choice(TOPICS) if rng.random() < noise else base["gold"][b]
        rows.append({"title": f"{base['title'][b].rsplit(' number', 1)[0]} item {i}", "gold": gold})
    return pl.DataFrame(rows)


def _plan(df: pl.DataFrame, proxy="neighbour", **target):
    return df.lazy().semantic.classify("title", TOPICS, name="topic", approx=sf.Target(**target), proxy=proxy)


def _with_sources(result) -> pl.DataFrame:
    lineage = result.lineage.select(pl.col("row_id").cast(pl.UInt32), "source", "note", "similarity")
    return result.df.with_row_index("row_id").join(lineage, on="row_id")


def _neighbour_of(note: str) -> int:
    return int(re.match(r"neighbour row (\d+), similarity", note).group(1))


# --------------------------------------------------------------------------- the plan


def test_the_verb_spells_it_as_a_string_and_explain_names_it() -> None:
    df = _near_duplicates(20)
    node = _plan(df)._plan_node
    assert type(node) is SemApproxClassify and node.sources == ("neighbour",) and not node.is_learned
    text = _plan(df, sample=50).explain()
    assert "approx source: nearest answered neighbour" in text and "score = that similarity" in text
    assert _plan(df, proxy="neighbor")._plan_node.sources == ("neighbour",)  # the US spelling too
    both = _plan(df, proxy=["neighbour", sf.HashingEmbedder(64)])._plan_node
    assert both.sources == ("neighbour", "learned") and isinstance(both.embedder, sf.HashingEmbedder)  # one embedder for both
    assert "1. nearest answered neighbour" in _plan(df, proxy=["neighbour", "learned"]).explain()
    with pytest.raises(PlanError, match="'neighbour' twice"):
        _plan(df, proxy=["neighbour", "neighbor"])


# --------------------------------------------------------------------------- running it


def test_near_duplicates_save_oracle_calls_and_name_their_neighbour() -> None:
    df = _near_duplicates(1500)
    oracle = _oracle(df)
    result = _plan(df, sample=200).run(oracle)
    notes = result.step_metrics[0].notes["approx"]
    assert notes["source"] == "neighbour" and notes["certified"] and notes["calibration_rows"] == 100
    assert notes["sources"][0]["proxy"].startswith("neighbour:")
    rows = _with_sources(result)
    answered = rows.filter(pl.col("source") == "proxy")
    assert answered.height == notes["proxy_answers"] >= 1200 and oracle.requests_seen == 200 + notes["oracle_rows"]
    assert result.metrics["proxy_answers"][0] == answered.height
    assert (answered["topic"] == answered["gold"]).mean() >= 0.9
    # Each answer names its neighbour: a calibration row (never the row itself), the answer it gave.
    calibration = rows.filter(pl.col("source") == "calibration")
    topic_of = dict(zip(calibration["row_id"].to_list(), calibration["topic"].to_list()))
    title_of = dict(zip(rows["row_id"].to_list(), rows["title"].to_list()))
    for row, note, topic, sim in zip(answered["row_id"], answered["note"], answered["topic"], answered["similarity"]):
        near = _neighbour_of(note)
        assert near != row and title_of[near] != title_of[row] and topic_of[near] == topic
        assert f"similarity {sim:.3f}" in note and sim >= notes["threshold"]
    assert result.audit(20).checked == 20


def test_the_guarantee_holds_over_seeds() -> None:
    """Realised accuracy of the neighbour's answers >= target in >= confidence of the runs
    (binomial slack: 30 runs at confidence 0.9 fail more than 7 times with probability < 0.01)."""
    failed = certified = 0
    for seed in range(30):
        df = _near_duplicates(700, bases=60, unique=0.2, noise=0.02, seed=seed)
        result = _plan(df, accuracy=0.85, confidence=0.9, sample=200, seed=seed).run(_oracle(df), cache=False)
        answered = _with_sources(result).filter(pl.col("source") == "proxy")
        certified += result.step_metrics[0].notes["approx"]["certified"]
        if answered.height and (answered["topic"] == answered["gold"]).mean() < 0.85:
            failed += 1
    assert certified >= 15  # the test says something: most runs let the neighbour answer
    assert failed <= 7


def test_no_certified_neighbour_leaves_every_row_to_the_oracle() -> None:
    df = headlines(600, mixed=1.0, seed=3)  # every headline mixes all topics: neighbours tell nothing
    oracle = _oracle(df)
    result = _plan(df, sample=150).run(oracle)
    notes = result.step_metrics[0].notes["approx"]
    assert not notes["certified"] and notes["proxy_answers"] == 0
    assert notes["fallback"] == "no threshold certified: the oracle answered every row"
    rows = _with_sources(result)
    assert "proxy" not in set(rows["source"]) and oracle.requests_seen == 600
    assert rows.filter(pl.col("source") == "engine")["note"].str.contains("no neighbour threshold certified").all()
    assert (rows["topic"] == rows["gold"]).all()


def test_a_row_never_takes_the_answer_of_its_own_text() -> None:
    """40 unrelated texts repeat 20 times each, 200 more appear once, every text under a random
    topic. Were a row's twin allowed as its neighbour, the calibration rows would find their twins
    among the reference rows, be right at similarity 1 and certify a threshold (they do, with the
    exclusion removed); without, their neighbours are other texts, right a third of the time."""
    rng = random.Random(5)
    words = [w for ws in WORDS.values() for w in ws]

    def text(j: int) -> str:
        return " ".join(rng.sample(words, 4)) + f" tag{j}"

    rows = [{"title": t, "gold": g} for t, g in [(text(j), rng.choice(TOPICS)) for j in range(40)] for _ in range(20)]
    rows += [{"title": text(100 + j), "gold": rng.choice(TOPICS)} for j in range(200)]
    df = pl.DataFrame(rows).sample(fraction=1.0, shuffle=True, seed=1)
    result = _plan(df, sample=200).run(_oracle(df))
    notes = result.step_metrics[0].notes["approx"]
    assert not notes["certified"] and notes["proxy_answers"] == 0


def test_combined_with_the_learned_proxy() -> None:
    df = _near_duplicates(1500, bases=40, noise=0.0)
    oracle = _oracle(df)
    result = _plan(df, proxy=["neighbour", sf.HashingEmbedder(256)], sample=200).run(oracle)
    notes = result.step_metrics[0].notes["approx"]
    assert notes["source"] == "neighbour+proxy" and notes["sample"] == 400
    first, second = notes["sources"]
    assert first["source"] == "neighbour" and second["source"] == "proxy" and first["certified"]
    assert first["confidence"] == pytest.approx(0.975)
    rows = _with_sources(result)
    answered = rows.filter(pl.col("source") == "proxy")
    assert answered.height == first["proxy_answers"] + second["proxy_answers"] == notes["proxy_answers"]
    by_neighbour = answered.filter(pl.col("note").str.starts_with("neighbour row"))
    assert by_neighbour.height == first["proxy_answers"] > 0
    assert by_neighbour["note"].str.contains("source 1 of 2, neighbour: score >=").all()
    assert oracle.requests_seen == 400 + notes["oracle_rows"]


def test_a_recall_filter_with_the_neighbour() -> None:
    df = _near_duplicates(900)
    gold = dict(zip(df["title"], df["gold"]))
    oracle = sf.DeterministicEngine(
        responder=lambda r: "YES" if gold[r.prompt_text.rsplit("\n", 1)[-1].strip()] == "sport" else "NO")
    result = (df.lazy().semantic.filter("{title}", instruction="Sport?", approx=sf.Target(recall=0.9, sample=200),
                                        proxy="neighbour").run(oracle))
    notes = result.step_metrics[0].notes["approx"]
    assert notes["certified"] and notes["dropped_unchecked"] + notes["kept_unchecked"] > 0
    kept = result.df
    sport = (df["gold"] == "sport").sum()
    assert (kept["gold"] == "sport").sum() >= 0.9 * sport


def test_plan_files_round_trip_the_neighbour() -> None:
    df = _near_duplicates(400)
    plan = _plan(df, proxy=["neighbour", "learned"], sample=60, seed=2)
    text = plan.serialize()
    assert json.loads(text)["plan"]["proxy"] == ["neighbour", "learned"]
    back = sf.deserialize(text)
    assert back._plan_node.sources == ("neighbour", "learned") and back.explain() == plan.explain()
    assert back.serialize() == text
    alone = sf.deserialize(_plan(df).serialize())
    assert alone._plan_node.sources == ("neighbour",)
    first, second = plan.run(_oracle(df), cache=False), back.run(_oracle(df), cache=False)
    assert first.df.equals(second.df) and first.lineage["note"].to_list() == second.lineage["note"].to_list()
