"""The statistics of approximate steps: bounds that cover, thresholds that certify honestly."""

from __future__ import annotations

import numpy as np
import pytest

from semframe.execution.calibration import (
    THRESHOLDS,
    certify_threshold,
    clopper_pearson_interval,
    clopper_pearson_lower,
    default_min_rows,
    default_sample_size,
    min_rows_to_certify,
    wilson_interval,
)


@pytest.mark.parametrize("p,n", [(0.9, 50), (0.95, 200), (0.7, 30)])
def test_lower_bound_covers_the_true_rate(p: float, n: int) -> None:
    rng = np.random.default_rng(1)
    trials = 2000
    k = rng.binomial(n, p, size=trials)
    covered = np.mean([clopper_pearson_lower(int(x), n, 0.95) <= p for x in k])
    assert covered >= 0.95  # exact bound: coverage at least the confidence
    assert covered < 0.995  # and not vacuous


def test_lower_bound_is_monotone() -> None:
    n = 100
    bounds = [clopper_pearson_lower(k, n, 0.95) for k in range(n + 1)]
    assert all(a < b for a, b in zip(bounds, bounds[1:]))
    assert clopper_pearson_lower(0, n, 0.95) == 0.0
    # More confidence, lower bound; more rows at the same rate, higher bound.
    assert clopper_pearson_lower(90, 100, 0.99) < clopper_pearson_lower(90, 100, 0.9)
    assert clopper_pearson_lower(900, 1000, 0.95) > clopper_pearson_lower(90, 100, 0.95)


def test_intervals_contain_the_estimate_and_cover() -> None:
    for k, n in [(0, 10), (5, 10), (10, 10), (47, 50)]:
        for lo, hi in (clopper_pearson_interval(k, n), wilson_interval(k, n)):
            assert 0.0 <= lo <= k / n <= hi <= 1.0
    assert clopper_pearson_interval(0, 0) == (0.0, 1.0)
    rng = np.random.default_rng(2)
    k = rng.binomial(40, 0.8, size=2000)
    assert np.mean([lo <= 0.8 <= hi for lo, hi in (clopper_pearson_interval(int(x), 40) for x in k)]) >= 0.95


def test_thresholds_are_fixed_and_descending() -> None:
    assert THRESHOLDS[0] == 1.0 and THRESHOLDS[-1] == 0.0
    assert all(a > b for a, b in zip(THRESHOLDS, THRESHOLDS[1:]))
    assert min_rows_to_certify(0.9, 0.95) == 29  # 0.9**29 < 0.05 < 0.9**28
    assert default_min_rows(0.9, 0.95) == 58
    assert default_sample_size(100) == 100 and default_sample_size(2225) == 445
    assert default_sample_size(10**6) == 2000


def _simulated(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A proxy whose chance of being right grows with its score: P(right | s) = 0.5 + 0.5 s."""
    s = rng.uniform(size=n)
    return s, rng.uniform(size=n) < 0.5 + 0.5 * s


def test_certified_accuracy_holds_over_many_seeds() -> None:
    """The guarantee: over seeds, the proxy's accuracy over the population rows above the chosen
    threshold reaches the target in at least `confidence` of the calibrations."""
    target, confidence = 0.85, 0.9
    population = np.random.default_rng(0)
    s_pop, ok_pop = _simulated(population, 200_000)
    met = certified = 0
    trials = 300
    for seed in range(trials):
        s, ok = _simulated(np.random.default_rng(seed + 1), 300)
        cert = certify_threshold(s, ok, accuracy=target, confidence=confidence)
        if cert.threshold is None:
            met += 1
            continue
        certified += 1
        assert cert.lower_bound >= target and cert.rows_above >= default_min_rows(target, confidence)
        met += ok_pop[s_pop >= cert.threshold].mean() >= target
    assert certified > trials * 0.8  # the proxy is good enough to certify most of the time
    assert met / trials >= confidence


def test_lower_threshold_needs_no_worse_evidence() -> None:
    rng = np.random.default_rng(3)
    s, ok = _simulated(rng, 5000)
    strict = certify_threshold(s, ok, accuracy=0.92, confidence=0.95)
    loose = certify_threshold(s, ok, accuracy=0.8, confidence=0.95)
    assert strict.certified and loose.certified
    assert loose.threshold < strict.threshold  # a lower target lets the proxy answer more
    # The sequence stops at the first failure; every earlier test passed.
    assert all(t[4] for t in strict.tested[:-1]) and not strict.tested[-1][4]


def test_no_certification_for_a_useless_proxy() -> None:
    rng = np.random.default_rng(4)
    s = rng.uniform(size=500)
    ok = rng.uniform(size=500) < 0.5  # right half the time, whatever its score
    cert = certify_threshold(s, ok, accuracy=0.9, confidence=0.95)
    assert not cert.certified and cert.threshold is None and cert.lower_bound is None
    assert "oracle answers every row" in cert.describe()
    # Too few rows to certify anything, even all right.
    assert not certify_threshold(np.ones(20), np.ones(20, bool), accuracy=0.9, confidence=0.95).certified


def test_perfect_proxy_certifies_everything() -> None:
    s = np.linspace(0.2, 1.0, 200)
    cert = certify_threshold(s, np.ones(200, bool), accuracy=0.9, confidence=0.95)
    assert cert.threshold == 0.0 and cert.rows_above == 200 and cert.correct_above == 200


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        certify_threshold([0.5], [True, False], accuracy=0.9, confidence=0.9)
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        certify_threshold([0.5], [True], accuracy=1.0, confidence=0.9)
    with pytest.raises(ValueError, match="decreasing"):
        certify_threshold([0.5], [True], accuracy=0.9, confidence=0.9, thresholds=(0.1, 0.5))


def test_hypergeometric_bound_covers_and_beats_the_binomial_one() -> None:
    from semframe.execution.calibration import hypergeometric_lower

    N, K, n = 1000, 900, 200
    rng = np.random.default_rng(5)
    population = np.zeros(N, bool)
    population[:K] = True
    draws = [int(population[rng.choice(N, n, replace=False)].sum()) for _ in range(2000)]
    assert np.mean([hypergeometric_lower(k, n, N, 0.95) <= K for k in draws]) >= 0.95
    # Sampling a large share of a small table: the exact finite bound is tighter.
    assert hypergeometric_lower(180, 200, 250, 0.95) > clopper_pearson_lower(180, 200, 0.95) * 250
    assert hypergeometric_lower(50, 50, 50, 0.95) == 50 and hypergeometric_lower(0, 10, 100, 0.95) == 0


def test_table_guarantee_holds_for_the_rows_the_proxy_answers() -> None:
    """With ``population``, the certified accuracy is about this table's rows outside the sample."""
    target, confidence = 0.85, 0.9
    table = np.random.default_rng(6)
    s_all, ok_all = _simulated(table, 3000)
    met, trials, certified = 0, 300, 0
    for seed in range(trials):
        pick = np.random.default_rng(seed + 100).choice(3000, 300, replace=False)
        cal = np.zeros(3000, bool)
        cal[pick] = True
        cert = certify_threshold(s_all[cal], ok_all[cal], accuracy=target, confidence=confidence,
                                 population=s_all)
        if cert.threshold is None:
            met += 1
            continue
        certified += 1
        answered = ~cal & (s_all >= cert.threshold)
        met += ok_all[answered].mean() >= target
    assert certified > trials * 0.7 and met / trials >= confidence


def test_known_rows_are_taken_out_of_the_table_bound() -> None:
    s = np.full(100, 0.9)
    ok = np.ones(100, bool)
    pop = np.full(400, 0.9)
    plain = certify_threshold(s, ok, accuracy=0.9, confidence=0.95, population=pop)
    # 100 known rows above the threshold, all right: the 200 rows left must carry the rest.
    known = certify_threshold(s, ok, accuracy=0.9, confidence=0.95, population=pop,
                              known_scores=np.full(100, 0.9), known_correct=np.ones(100, bool))
    assert plain.certified and known.certified and known.lower_bound < plain.lower_bound
