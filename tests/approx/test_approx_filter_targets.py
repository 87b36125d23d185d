"""filter(..., approx=sf.Target(precision=..., recall=...)): SUPG-style targets on the rows kept."""

from __future__ import annotations

import polars as pl
import pytest

import semframe as sf
from semframe.errors import PlanError

from .synthetic import TOPICS, WORDS, headlines  # noqa: F401

QUESTION = "Is this headline about sport?"


def _data(n: int = 800, mixed: float = 0.3, seed: int = 0) -> pl.DataFrame:
    return headlines(n, mixed, seed)


def _oracle(df: pl.DataFrame, **kw) -> sf.DeterministicEngine:
    """Answers YES exactly for the sport headlines (the gold labels)."""
    gold = dict(zip(df["title"], df["gold"]))
    return sf.DeterministicEngine(
        responder=lambda r: "YES" if gold[r.prompt_text.rsplit("\n", 1)[-1].strip()] == "sport" else "NO", **kw)


def _plan(df: pl.DataFrame, proxy=None, **target):
    return df.lazy().semantic.filter("{title}", instruction=QUESTION, approx=sf.Target(**target),
                                     proxy=sf.HashingEmbedder(256) if proxy is None else proxy)


def _realised(df: pl.DataFrame, result) -> tuple[float, float]:
    """(precision, recall) of the kept rows against the rows the oracle keeps (the sport ones)."""
    kept = result.df
    positives = int((df["gold"] == "sport").sum())
    hits = int((kept["gold"] == "sport").sum())
    return (hits / kept.height if kept.height else 1.0), hits / positives


# --------------------------------------------------------------------------- the plan


def test_target_kinds_and_their_checks() -> None:
    assert sf.Target().kind == "accuracy" and sf.Target(recall=0.9).accuracy is None
    assert sf.Target(precision=0.9, recall=0.8).kind == "precision+recall"
    assert repr(sf.Target(precision=0.9)) == "Target(precision=0.9, confidence=0.95, sample=None, seed=0)"
    with pytest.raises(PlanError, match="not both kinds"):
        sf.Target(accuracy=0.9, recall=0.9)
    with pytest.raises(PlanError, match="recall must be a number strictly between 0 and 1"):
        sf.Target(recall=1.0)
    df = _data(20)
    with pytest.raises(PlanError, match="semantic.classify: precision and recall targets are for filter"):
        df.lazy().semantic.classify("title", TOPICS, approx=sf.Target(recall=0.9))
    text = _plan(df, precision=0.9, recall=0.8, confidence=0.9).explain()
    assert "approx precision >= 0.9, recall >= 0.8 @ confidence 0.9" in text
    assert "over the rows kept, against the rows the oracle would keep" in text
    assert "split between the two targets (Bonferroni)" in text


# --------------------------------------------------------------------------- the guarantee


def _trials(df: pl.DataFrame, seeds: range, **target) -> list[tuple[float, float, dict]]:
    out = []
    for seed in seeds:
        result = _plan(df, seed=seed, sample=320, **target).run(_oracle(df), cache=False)
        out.append((*_realised(df, result), result.step_metrics[0].notes["approx"]))
    return out


def test_precision_and_recall_hold_at_the_stated_confidence_over_40_seeds() -> None:
    df = _data(800)
    trials = _trials(df, range(40), precision=0.9, recall=0.9, confidence=0.9)
    met = sum(p >= 0.9 and r >= 0.9 for p, r, _ in trials)
    # With P(met) >= 0.9, fewer than 32 of 40 happens with probability < 0.5%.
    assert met >= 32, [(round(p, 3), round(r, 3)) for p, r, _ in trials]
    # And it saves oracle calls: the guarantee is not met by asking the oracle everything.
    assert sum(n["certified"] for _, _, n in trials) >= 30
    assert sum(n["proxy_answers"] for _, _, n in trials) / 40 > 200  # of 480 rows outside the sample
    assert sum(n["kept_unchecked"] > 0 and n["dropped_unchecked"] > 0 for _, _, n in trials) >= 5


def test_recall_alone_keeps_everything_above_the_threshold_unchecked() -> None:
    df = _data(800)
    trials = _trials(df, range(20), recall=0.9, confidence=0.9)
    assert sum(r >= 0.9 for _, r, _ in trials) >= 16
    certified = [n for _, _, n in trials if n["certified"]]
    assert len(certified) >= 15
    for n in certified:  # one threshold, every row outside the sample answered by the proxy
        assert n["oracle_rows"] == 0 and n["recall_threshold"] == n["threshold"] and n["recall_bound"] >= 0.9


def test_precision_alone_keeps_only_the_rows_the_proxy_is_sure_of() -> None:
    df = _data(800)
    trials = _trials(df, range(20), precision=0.9, confidence=0.9)
    assert sum(p >= 0.9 for p, _, _ in trials) >= 16
    certified = [n for _, _, n in trials if n["certified"]]
    assert len(certified) >= 15
    assert all(n["oracle_rows"] == 0 and n["precision_bound"] >= 0.9 for n in certified)


# --------------------------------------------------------------------------- what a run shows


def test_lineage_metrics_and_the_band_asked_of_the_oracle() -> None:
    df = _data(800)
    oracle = _oracle(df)
    result = _plan(df, precision=0.9, recall=0.9, confidence=0.9, sample=240, seed=7).run(oracle)
    notes = result.step_metrics[0].notes["approx"]
    assert notes["target"] == "precision+recall" and notes["certified"]
    t_keep, t_drop = notes["precision_threshold"], notes["recall_threshold"]
    assert t_keep is not None and t_drop is not None and t_drop < t_keep
    lineage = result.lineage
    proxied = lineage.filter(pl.col("source") == "proxy")
    kept, dropped = proxied.filter(pl.col("value") == "YES"), proxied.filter(pl.col("value") == "NO")
    assert kept.height == notes["kept_unchecked"] > 0 and dropped.height == notes["dropped_unchecked"] > 0
    assert kept["similarity"].min() >= t_keep and dropped["similarity"].max() < t_drop
    assert kept["note"].str.contains("kept unchecked").all() and dropped["note"].str.contains("dropped unchecked").all()
    band = lineage.filter(pl.col("source") == "engine")
    assert band.height == notes["oracle_rows"] and band["note"].str.contains("asked the oracle").all()
    assert ((band["similarity"] >= t_drop) & (band["similarity"] < t_keep)).all()
    assert oracle.requests_seen == 240 + band.height == result.metrics["engine_requests"][0]
    assert result.metrics["proxy_answers"][0] == proxied.height
    # The rows kept are exactly the YES cells: the oracle's in the sample and the band, the proxy's above.
    assert set(result.row_ids.to_list()) == set(lineage.filter(pl.col("value") == "YES")["row_id"].to_list())
    report = result.audit(30)
    assert report.checked == 30 and set(report.details["source"]) == {"proxy"}


def test_nothing_certifies_the_oracle_answers_every_row() -> None:
    df = _data(600, mixed=1.0)  # no word gives the topic away: the proxy knows nothing
    oracle = _oracle(df)
    result = _plan(df, precision=0.9, confidence=0.9, sample=200).run(oracle, cache=False)
    notes = result.step_metrics[0].notes["approx"]
    assert not notes["certified"] and notes["precision_threshold"] is None
    assert notes["fallback"] == "no threshold certified: the oracle answered every row"
    assert oracle.requests_seen == 600 and notes["proxy_answers"] == 0
    assert (result.df["gold"] == "sport").all() and result.df.height == int((df["gold"] == "sport").sum())
    assert result.lineage.filter(pl.col("source") == "engine")["note"].str.contains("no proxy threshold").all()


def test_a_useless_proxy_keeps_nothing_unchecked_under_both_targets() -> None:
    df = _data(600, mixed=1.0)
    result = _plan(df, precision=0.9, recall=0.95, confidence=0.9, sample=200).run(_oracle(df), cache=False)
    notes = result.step_metrics[0].notes["approx"]
    assert notes["precision_threshold"] is None and notes["kept_unchecked"] == 0
    # Recall may still certify dropping a few low-scoring rows; every kept row is then checked.
    assert _realised(df, result)[0] == 1.0 and _realised(df, result)[1] >= 0.95


def test_a_sure_cascade_certifies_both_targets_and_asks_nothing_more() -> None:
    df = _data(400)
    oracle, small = _oracle(df), _oracle(df, model="small")  # as good as the oracle, probability 1 or 0
    result = _plan(df, proxy=small, precision=0.9, recall=0.9, sample=200).run(oracle)
    notes = result.step_metrics[0].notes["approx"]
    assert notes["source"] == "cascade" and notes["certified"]
    assert oracle.requests_seen == 200 and small.requests_seen == 400 and notes["oracle_rows"] == 0
    assert _realised(df, result) == (1.0, 1.0)
    assert set(result.lineage["source"]) == {"calibration", "cascade"}


def test_accuracy_targets_on_filter_still_work() -> None:
    df = _data(600)
    result = _plan(df, accuracy=0.9).run(_oracle(df))
    notes = result.step_metrics[0].notes["approx"]
    assert notes["target"] == "accuracy" and notes["target_accuracy"] == 0.9 and notes["certified"]
    assert "precision_threshold" not in notes
