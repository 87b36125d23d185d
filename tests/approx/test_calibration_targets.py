"""The precision and recall certifications (pure functions): edge cases and coverage."""

from __future__ import annotations

import numpy as np
import pytest

from semframe.execution.calibration import (
    YES_THRESHOLDS,
    certify_precision,
    certify_recall,
    hypergeometric_lower,
    hypergeometric_upper,
)


def test_the_yes_grid_is_symmetric_and_descending() -> None:
    assert YES_THRESHOLDS[0] == 1.0 and YES_THRESHOLDS[-1] == 0.0
    assert all(a > b for a, b in zip(YES_THRESHOLDS, YES_THRESHOLDS[1:]))
    assert 0.0001 in YES_THRESHOLDS and 0.9999 in YES_THRESHOLDS


def test_the_upper_bound_mirrors_the_lower_one() -> None:
    for k, n, N in ((0, 50, 400), (7, 60, 300), (60, 60, 100)):
        assert hypergeometric_upper(k, n, N, 0.95) == N - hypergeometric_lower(n - k, n, N, 0.95)
        assert k <= hypergeometric_upper(k, n, N, 0.95) <= N - (n - k)
    assert hypergeometric_upper(3, 0, 10, 0.95) == 10  # no sample: anything is possible


def _separated(n_pop: int = 1000, n_cal: int = 200, seed: int = 0):
    """Scores 0.95 for positives and 0.05 for negatives: a perfect proxy."""
    rng = np.random.default_rng(seed)
    truth = rng.uniform(size=n_pop) < 0.3
    pop = np.where(truth, 0.95, 0.05)
    idx = rng.choice(n_pop, n_cal, replace=False)
    return pop, idx, truth


def test_a_perfect_proxy_certifies_both_targets_between_its_two_scores() -> None:
    pop, idx, truth = _separated()
    p = certify_precision(pop[idx], truth[idx], precision=0.9, confidence=0.95, population=pop)
    r = certify_recall(pop[idx], truth[idx], recall=0.9, confidence=0.95, population=pop)
    assert p.certified and 0.05 < p.threshold <= 0.95 and p.measure == "precision"
    assert r.certified and 0.05 < r.threshold <= 0.95 and r.lower_bound >= 0.9
    assert "precision >=" in p.describe() and "recall >=" in r.describe()


def test_recall_passes_over_thresholds_that_drop_nothing_and_stops_at_the_first_failure() -> None:
    pop, idx, truth = _separated()
    r = certify_recall(pop[idx], truth[idx], recall=0.9, confidence=0.95, population=pop)
    first = r.tested[0][0]
    assert first > 0.05  # 0.0 ... 0.05 drop no row: not tested
    assert r.tested[-1][4] is False or r.tested[-1][0] == 1.0
    assert all(passed for *_, passed in r.tested[:-1])


def test_nothing_certifies_when_the_scores_say_nothing() -> None:
    rng = np.random.default_rng(1)
    pop = rng.uniform(size=1000)
    truth = rng.uniform(size=1000) < 0.3  # independent of the score
    idx = rng.choice(1000, 200, replace=False)
    assert not certify_precision(pop[idx], truth[idx], precision=0.9, confidence=0.95, population=pop).certified
    r = certify_recall(pop[idx], truth[idx], recall=0.99, confidence=0.95, population=pop)
    assert r.threshold is None or r.threshold < 0.05  # at most a sliver may be dropped


def test_known_rows_count_as_kept_positives() -> None:
    pop, idx, truth = _separated()
    cal = np.zeros(1000, bool)
    cal[idx] = True
    others = np.flatnonzero(~cal)[:50]
    base = certify_precision(pop[idx], truth[idx], precision=0.9, confidence=0.95, population=pop)
    more = certify_precision(pop[idx], truth[idx], precision=0.9, confidence=0.95, population=pop,
                             known_scores=pop[others], known_positive=truth[others], extra_positives=40)
    assert more.lower_bound >= base.lower_bound
    with pytest.raises(ValueError, match="same length"):
        certify_recall([0.1], [True, False], recall=0.9, confidence=0.9, population=[0.1, 0.2])


@pytest.mark.parametrize("measure", ["precision", "recall"])
def test_the_bound_holds_on_the_table_at_the_stated_confidence(measure: str) -> None:
    target, confidence, trials = 0.8, 0.9, 60
    met = certified = 0
    for seed in range(trials):
        rng = np.random.default_rng(seed)
        pop = rng.uniform(size=1500)
        truth = rng.uniform(size=1500) < pop ** 2  # a calibrated-ish, imperfect proxy
        idx = rng.choice(1500, 300, replace=False)
        cal = np.zeros(1500, bool)
        cal[idx] = True
        certify = certify_precision if measure == "precision" else certify_recall
        c = certify(pop[idx], truth[idx], confidence=confidence, population=pop, **{measure: target})
        if not c.certified:
            met += 1
            continue
        certified += 1
        kept = (cal & truth) | (~cal & (pop >= c.threshold))
        value = truth[kept].mean() if measure == "precision" else (kept & truth).sum() / truth.sum()
        met += value >= target
    assert certified >= 10
    assert met >= 50  # P(Binomial(60, 0.9) < 50) < 3%; exact bounds are conservative
