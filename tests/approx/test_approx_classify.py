"""classify(..., approx=sf.Target(...)): the proxy answers what is certified, the oracle the rest."""

from __future__ import annotations

import pandas as pd
import polars as pl
import pytest

import semframe as sf
from semframe.errors import PlanError
from semframe.plan.approx import SemApproxClassify

from .synthetic import TOPICS, WORDS, headlines  # noqa: F401



def _data(n: int = 600, mixed: float = 0.3, seed: int = 0) -> pl.DataFrame:
    return headlines(n, mixed, seed)


def _oracle(df: pl.DataFrame, **kw) -> sf.DeterministicEngine:
    gold = dict(zip(df["title"], df["gold"]))
    return sf.DeterministicEngine(responder=lambda r: gold[r.prompt_text.rsplit("\n", 1)[-1].strip()], **kw)


def _plan(df: pl.DataFrame, proxy=None, **target):
    return df.lazy().semantic.classify("title", TOPICS, name="topic", approx=sf.Target(**target),
                                       proxy=sf.HashingEmbedder(256) if proxy is None else proxy)


# --------------------------------------------------------------------------- the plan


def test_target_validation() -> None:
    assert sf.Target() == sf.Target(accuracy=0.9, confidence=0.95)
    for bad in ({"accuracy": 1.0}, {"accuracy": 0}, {"confidence": 1.2}, {"accuracy": True},
                {"sample": 5}, {"sample": 50.0}, {"seed": "1"}):
        with pytest.raises(PlanError, match="sf.Target"):
            sf.Target(**bad)
    with pytest.raises(AttributeError):
        sf.Target().accuracy = 0.5  # frozen


def test_verb_builds_the_approx_node_and_checks_options() -> None:
    df = _data(20)
    lf = df.lazy().semantic.classify("title", TOPICS, approx=sf.Target())
    assert type(lf._plan_node) is SemApproxClassify and lf._plan_node.is_learned
    plain = df.lazy().semantic.classify("title", TOPICS)
    assert type(plain._plan_node) is not SemApproxClassify
    with pytest.raises(PlanError, match="proxy= needs a target"):
        df.lazy().semantic.classify("title", TOPICS, proxy=sf.DeterministicEngine())
    with pytest.raises(PlanError, match="probabilities=True cannot be combined"):
        df.lazy().semantic.classify("title", TOPICS, approx=sf.Target(), probabilities=True)
    with pytest.raises(PlanError, match="semantic_cache cannot be combined"):
        df.lazy().semantic.classify("title", TOPICS, approx=sf.Target(), semantic_cache=0.9)
    with pytest.raises(PlanError, match="approx must be sf.Target"):
        df.lazy().semantic.classify("title", TOPICS, approx=0.9)
    with pytest.raises(PlanError, match="temperature=0"):
        df.lazy().semantic.classify("title", TOPICS, approx=sf.Target(), temperature=0.5)


def test_explain_shows_target_source_and_savings() -> None:
    text = _plan(_data(20), accuracy=0.95, confidence=0.9, sample=50).explain()
    assert "approx accuracy >= 0.95 @ confidence 0.9" in text
    assert "learned proxy (logistic regression on hashing:" in text
    assert "calibration: oracle on 50 rows, seed 0" in text
    assert "expected oracle calls saved" in text
    cascade = _data(20).lazy().semantic.classify("title", TOPICS, approx=sf.Target(),
                                                 proxy=sf.DeterministicEngine(model="small")).explain()
    assert "cascade (engine deterministic:small" in cascade


def test_estimate_ranges_from_the_sample_to_every_row() -> None:
    df = _data(600)
    est = _plan(df, sample=100).estimate(_oracle(df))
    step = est.steps[0]
    assert (step.calls_low, step.calls_high) == (100, 600) and not step.rows_exact


# --------------------------------------------------------------------------- the learned proxy


def test_learned_proxy_answers_above_the_threshold_and_the_oracle_below() -> None:
    df = _data(600)
    oracle = _oracle(df)
    result = _plan(df).run(oracle)
    notes = result.step_metrics[0].notes["approx"]
    lineage = result.lineage.sort("row_id")
    sources = lineage["source"].value_counts().to_dict(as_series=False)
    counts = dict(zip(sources["source"], sources["count"]))
    t = notes["threshold"]
    assert notes["certified"] and notes["sample"] == 200 and notes["calibration_rows"] == 100
    assert counts["calibration"] == 200
    assert 0 < counts["proxy"] < 400 and counts["engine"] == 400 - counts["proxy"]  # some rows below t
    proxy_rows = lineage.filter(pl.col("source") == "proxy")
    assert proxy_rows["similarity"].min() >= t
    assert proxy_rows["note"].str.contains(f"threshold {t:.4g}").all()
    below = lineage.filter(pl.col("source") == "engine")
    assert below["similarity"].max() < t and below["note"].str.contains("below threshold").all()
    # The oracle was asked exactly for the sample and the rows below the threshold.
    assert oracle.requests_seen == 200 + counts["engine"]
    metrics = result.metrics.row(0, named=True)
    assert metrics["proxy_answers"] == counts["proxy"] and metrics["engine_requests"] == oracle.requests_seen
    # Calibration and oracle rows carry the oracle's answer (here: the truth).
    exact = lineage.filter(pl.col("source") != "proxy")["row_id"]
    out = result.df.with_row_index("row_id", 0).with_columns(pl.col("row_id").cast(pl.UInt32))
    checked = out.filter(pl.col("row_id").is_in(exact.implode()))
    assert (checked["topic"] == checked["gold"]).all()
    proxied = out.filter(~pl.col("row_id").is_in(exact.implode()))
    assert (proxied["topic"] == proxied["gold"]).mean() >= 0.9


def test_rerun_asks_the_oracle_nothing() -> None:
    df = _data(600)
    oracle = _oracle(df)
    first = _plan(df).run(oracle)
    asked = oracle.requests_seen
    second = _plan(df).run(oracle)
    assert oracle.requests_seen == asked  # calibration and oracle rows come from the exact cache
    assert second.df.equals(first.df)
    assert second.metrics["engine_requests"][0] == 0
    assert second.metrics["exact_cache_hits"][0] == asked
    # A new seed draws another sample: only rows not answered before reach the oracle.
    _plan(df, seed=1).run(oracle)
    assert oracle.requests_seen - asked < 200


def test_oracle_answers_everything_when_nothing_certifies() -> None:
    df = _data(400, mixed=1.0)  # every headline mixes all topics: nothing to learn
    oracle = _oracle(df)
    result = _plan(df).run(oracle)
    notes = result.step_metrics[0].notes["approx"]
    assert not notes["certified"] and notes["threshold"] is None
    assert notes["fallback"] == "no threshold certified: the oracle answered every row"
    assert oracle.requests_seen == 400 and result.metrics["proxy_answers"][0] == 0
    assert set(result.lineage["source"]) == {"calibration", "engine"}
    assert (result.df["topic"] == result.df["gold"]).all()
    assert result.audit(10).checked == 0


def test_skipped_rows_stay_null() -> None:
    df = _data(300).with_columns(pl.when(pl.int_range(pl.len()) % 10 == 0).then(None)
                                 .otherwise(pl.col("title")).alias("title"))
    result = _plan(df).run(_oracle(df.drop_nulls()))
    assert result.df.filter(pl.col("title").is_null())["topic"].null_count() == 30
    assert result.metrics["skipped"][0] == 30
    assert result.lineage.filter(pl.col("source") == "skipped").height == 30


# --------------------------------------------------------------------------- the cascade


def test_cascade_with_a_good_proxy_saves_every_call_outside_the_sample() -> None:
    df = _data(300)
    oracle = _oracle(df)
    small = _oracle(df, model="small")  # as good as the oracle, and sure (probability 1)
    result = _plan(df, proxy=small, sample=60).run(oracle)
    notes = result.step_metrics[0].notes
    assert notes["approx"]["certified"] and notes["approx"]["threshold"] == 0.0  # every score is 1: all pass
    assert oracle.requests_seen == 60 and small.requests_seen == 300
    assert notes["cascade"]["engine_requests"] == 300
    lineage = result.lineage
    assert lineage.filter(pl.col("source") == "cascade").height == 240
    assert lineage.filter(pl.col("source") == "cascade")["similarity"].min() == 1.0
    report = result.audit(30, seed=1)
    assert (report.checked, report.agreed, report.approximated) == (30, 30, 240)
    assert report.interval[1] == 1.0 and report.interval[0] > 0.85
    assert "30 of 240 approximated cells re-asked, 30 agree" in str(report)
    assert set(report.details["source"]) == {"cascade"}


def test_cascade_with_a_random_proxy_falls_back_to_the_oracle() -> None:
    df = _data(300)
    oracle = _oracle(df)
    coin = sf.DeterministicEngine(model="coin")  # labels by hash, probabilities 0.5-1.0 by hash
    result = _plan(df, proxy=coin).run(oracle)
    assert not result.step_metrics[0].notes["approx"]["certified"]
    assert oracle.requests_seen == 300 and (result.df["topic"] == result.df["gold"]).all()
    assert "cascade" not in set(result.lineage["source"])


def test_audit_reports_agreement_with_an_interval() -> None:
    df = _data(600)
    oracle = _oracle(df)
    result = _plan(df).run(oracle)
    before = oracle.requests_seen
    report = result.audit(40)
    assert report.checked == 40 and oracle.requests_seen == before + 40  # the audit asks the oracle
    lo, hi = report.interval
    assert lo <= report.agreement <= hi and report.wilson[0] <= report.agreement <= report.wilson[1]
    truth = dict(zip(df["title"], df["gold"]))
    assert report.details.height == 40 and report.details["agree"].sum() == report.agreed
    assert all(o == truth[df["title"][r]] for r, o in zip(report.details["row"], report.details["oracle"]))


# --------------------------------------------------------------------------- frontends


def test_eager_and_pandas_frontends() -> None:
    df = _data(300)
    oracle = _oracle(df)
    out = df.semantic.classify("title", TOPICS, name="topic", approx=sf.Target(sample=100),
                               proxy=sf.HashingEmbedder(256), engine=oracle)
    assert out.columns == ["title", "gold", "topic"] and out["topic"].null_count() == 0
    pdf = df.to_pandas()
    pdf.index = pd.RangeIndex(100, 400)
    pout = pdf.semantic.classify("title", TOPICS, name="topic", approx=sf.Target(sample=100),
                                 proxy=sf.HashingEmbedder(256), engine=oracle)
    assert list(pout.index) == list(pdf.index) and list(pout["topic"]) == out["topic"].to_list()


# --------------------------------------------------------------------------- filter


def test_approx_filter_keeps_the_rows_the_answers_say() -> None:
    df = _data(600)
    gold = dict(zip(df["title"], df["gold"]))
    oracle = sf.DeterministicEngine(
        responder=lambda r: "YES" if gold[r.prompt_text.rsplit("\n", 1)[-1].strip()] == "sport" else "NO")
    plan = df.lazy().semantic.filter("{title}", instruction="Is this headline about sport?",
                                     approx=sf.Target(accuracy=0.9, confidence=0.95), proxy=sf.HashingEmbedder(256))
    assert "SEMANTIC FILTER" in plan.explain() and "approx accuracy >= 0.9" in plan.explain()
    result = plan.run(oracle)
    notes = result.step_metrics[0].notes["approx"]
    lineage = result.lineage
    assert notes["certified"] and lineage.height == 600
    kept_ids = set(result.row_ids.to_list())
    yes_ids = set(lineage.filter(pl.col("value") == "YES")["row_id"].to_list())
    assert kept_ids == yes_ids and result.metrics["rows_out"][0] == len(kept_ids)
    assert result.metrics["proxy_answers"][0] == lineage.filter(pl.col("source") == "proxy").height > 0
    assert oracle.requests_seen == 600 - result.metrics["proxy_answers"][0]
    agree = (result.df["gold"] == "sport").mean()
    assert agree >= 0.9  # kept rows are mostly sport headlines
    with pytest.raises(PlanError, match="semantic.filter: proxy= needs a target"):
        df.lazy().semantic.filter("{title}", proxy=sf.HashingEmbedder())


def test_a_plan_with_an_approximate_step_refuses_engine_and_embedder_objects() -> None:
    with pytest.raises(PlanError, match=r"embedder object \(HashingEmbedder\).*sf.SentenceTransformerEmbedder"):
        _plan(_data(20)).serialize()
    with pytest.raises(PlanError, match=r"proxy is an engine object .*sf.configure\(engines="):
        _plan(_data(20), proxy=sf.DeterministicEngine(model="small")).serialize()


def test_a_table_no_larger_than_the_sample_is_all_oracle() -> None:
    df = _data(50)
    oracle = _oracle(df)
    result = _plan(df).run(oracle)  # default sample: min(rows, 200) = every row
    notes = result.step_metrics[0].notes["approx"]
    assert oracle.requests_seen == 50 and not notes["certified"]
    assert "the calibration sample is every row (50)" in notes["fallback"]
    assert set(result.lineage["source"]) == {"calibration"}
