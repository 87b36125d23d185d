"""proxy=[source, source, ...]: each source answers the rows it is certified for, the oracle the rest."""

from __future__ import annotations

import polars as pl
import pytest

import semframe as sf
from semframe.errors import PlanError

from tests.approx.test_approx_classify import TOPICS, _data, _oracle


def _combined(df: pl.DataFrame, cascade, **target):
    return df.lazy().semantic.classify("title", TOPICS, name="topic", approx=sf.Target(**target),
                                       proxy=[sf.HashingEmbedder(256), cascade])


def test_the_verb_keeps_the_order_and_checks_the_list() -> None:
    df = _data(20)
    node = _combined(df, sf.DeterministicEngine(model="small"))._plan_node
    assert node.sources[0] == "learned" and node.sources[1].model == "small" and not node.is_learned
    text = _combined(df, sf.DeterministicEngine(model="small"), sample=50).explain()
    assert "1. learned proxy (logistic regression on hashing:" in text and "then 2. cascade (engine" in text
    assert "split between 2 sources (Bonferroni)" in text and "50 rows per source" in text
    with pytest.raises(PlanError, match="empty list"):
        df.lazy().semantic.classify("title", TOPICS, approx=sf.Target(), proxy=[])
    with pytest.raises(PlanError, match="learned proxy twice"):
        df.lazy().semantic.classify("title", TOPICS, approx=sf.Target(), proxy=["learned", None])
    with pytest.raises(PlanError, match="one embedder"):
        df.lazy().semantic.classify("title", TOPICS, approx=sf.Target(),
                                    proxy=[sf.HashingEmbedder(8), sf.HashingEmbedder(16)])
    with pytest.raises(PlanError, match="combined sources .* take an accuracy target"):
        df.lazy().semantic.filter("{title}", approx=sf.Target(recall=0.9), proxy=["learned", "small"])


def test_each_source_answers_what_it_is_certified_for_and_the_oracle_the_rest() -> None:
    df = _data(1500)
    oracle = _oracle(df)
    small = _oracle(df, model="small")  # right and sure: certifies every row it is asked about
    result = _combined(df, small, sample=300).run(oracle)
    notes = result.step_metrics[0].notes["approx"]
    assert notes["source"] == "proxy+cascade" and notes["sample"] == 600
    first, second = notes["sources"]
    assert first["source"] == "proxy" and second["source"] == "cascade"
    assert first["confidence"] == second["confidence"] == pytest.approx(0.975)  # 0.05 split in two
    assert first["certified"] and second["certified"] and second["threshold"] == 0.0
    lineage = result.lineage
    counts = dict(zip(*lineage["source"].value_counts().to_dict(as_series=False).values()))
    assert counts["calibration"] == 600
    assert counts.get("proxy", 0) == first["proxy_answers"] and counts["cascade"] == second["proxy_answers"]
    assert counts["proxy"] + counts["cascade"] + counts.get("engine", 0) == 900
    # The cascade answered what the learned proxy left (it is sure of everything): nothing reaches the oracle.
    assert counts.get("engine", 0) == 0 and oracle.requests_seen == 600
    cascade_notes = lineage.filter(pl.col("source") == "cascade")["note"]
    assert cascade_notes.str.starts_with("source 2 of 2, cascade").all()
    # The cascade is certified on its calibration part minus the rows the learned proxy claims.
    assert first["calibration_rows"] == 150 and 0 < second["calibration_rows"] < 300
    learned = lineage.filter(pl.col("source") == "proxy")
    assert learned["note"].str.starts_with("source 1 of 2, proxy").all()
    assert learned["similarity"].min() >= first["threshold"]
    assert result.metrics["proxy_answers"][0] == 900
    report = result.audit(40)
    assert report.checked == 40 and set(report.details["source"]) <= {"proxy", "cascade"}


def test_a_useless_second_source_leaves_its_rows_to_the_oracle() -> None:
    df = _data(900)
    oracle = _oracle(df)
    coin = sf.DeterministicEngine(model="coin")  # labels by hash: never certified
    result = _combined(df, coin, sample=150).run(oracle)
    first, second = result.step_metrics[0].notes["approx"]["sources"]
    assert not second["certified"] and second["proxy_answers"] == 0
    lineage = result.lineage
    assert "cascade" not in set(lineage["source"])
    assert oracle.requests_seen == 900 - first["proxy_answers"]
    below = lineage.filter(pl.col("source") == "engine")["note"]
    assert below.str.contains("source 2: no cascade threshold certified: asked the oracle").all()
    truth = result.df.with_row_index("row_id").join(lineage.select(pl.col("row_id").cast(pl.UInt32), "source"),
                                                     on="row_id")
    exact = truth.filter(pl.col("source") != "proxy")
    assert (exact["topic"] == exact["gold"]).all()
