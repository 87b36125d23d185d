"""The statistics behind approximate steps: a certified confidence threshold, and audit intervals.

An approximate step (``classify(..., approx=sf.Target(accuracy=0.9, confidence=0.95))``) lets a
cheap *proxy* answer the rows it is confident about and asks the step's own engine (the *oracle*)
for the rest. This module decides, from a calibration sample the oracle answered, how confident
"confident" must be. Pure functions over plain arrays; no engine, no plan.

What is implemented (and what is guaranteed)
--------------------------------------------
Given calibration rows drawn at random from the step's rows -- rows the proxy was **not** trained
on -- each with the proxy's score ``s_i`` and whether the proxy agreed with the oracle
(``correct_i``), :func:`certify_threshold` tests a fixed, descending sequence of thresholds
``t_1 > t_2 > ...`` (:data:`THRESHOLDS`, chosen before any data is seen). At each ``t`` the null
hypothesis is "the proxy's accuracy over the rows it would answer at threshold t is below the
target"; it is rejected when a one-sided lower confidence bound (level ``confidence``) of that
accuracy reaches the target. Testing stops at the first threshold that is not rejected; the
chosen threshold is the last rejected one (the lowest certified). This is **fixed-sequence
testing**: each test runs at the full level ``alpha = 1 - confidence`` and the family-wise error
is still at most ``alpha``, because a false certification can only happen at the first true
null in the sequence, which is reached (and wrongly rejected) with probability at most
``alpha``. Thresholds with fewer calibration rows above them than :func:`default_min_rows` (58
at 0.9/0.95, or a tenth of the calibration rows if more) are passed over without a test; that
rule reads only the scores, never whether the answers were right.

Two bounds, by what the statement is about:

- **this table** (what the operator uses, ``population=`` given): of the ``N_t`` rows of the
  table (outside the proxy's training rows) scoring >= t, ``n_t`` are calibration rows, a simple
  random sample of them, ``k_t`` of those right. The exact hypergeometric lower bound ``K_low``
  of the right rows among the ``N_t`` (:func:`hypergeometric_lower`), less the ``k_t`` calibration
  rows and the ``c_t`` known rows (rows repeating a sampled text: answered by the oracle, the
  proxy's correctness on them known) over the ``N_t - n_t - d_t`` rows left, bounds the
  accuracy of exactly the rows the proxy answers.
- **an unlimited population** (``population=None``): the one-sided Clopper-Pearson bound of the
  accuracy from ``k_t`` of ``n_t`` (:func:`clopper_pearson_lower`), a statement about the rate
  over rows like these, not about one table's rows.

The guarantee the operator gives, stated precisely: with probability at least ``confidence``
over the random calibration sample, **the proxy's accuracy (agreement with the oracle) over the
rows of this table that the proxy answers is at least ``accuracy``**. It is about those rows, not
the whole column; rows the oracle answers agree with it by construction, so the whole column's
agreement is at least as high. The one modelling step: given the scores, the calibration rows
above each threshold are treated as a simple random sample of the table's rows above it (true of
the sample as drawn, up to conditioning on how many land above each threshold). If no threshold
certifies, the proxy answers nothing.

This is the recipe of SUPG (Kang et al., "Approximate Selection with Guarantees using Proxies",
VLDB 2020: sample the oracle, pick a proxy-score threshold with a finite-sample confidence
bound) with the multiple-threshold correction of BARGAIN (Zeighami et al., 2025, which tests
candidate thresholds in a fixed order, as Learn-then-Test does) -- simplified: a fixed threshold
grid and exact hypergeometric / Clopper-Pearson bounds (``scipy.stats``, imported where used)
rather than BARGAIN's adaptive sampling and tighter betting-based bounds.

Precision and recall targets of a filter (SUPG's two query kinds) are certified by
:func:`certify_precision` (the lowest YES-score threshold whose unchecked rows above, with the
known positives, keep a certified precision) and :func:`certify_recall` (the highest threshold
below which rows may be dropped unchecked with a certified recall), on the same exact
finite-population bounds (:func:`hypergeometric_lower`, :func:`hypergeometric_upper`) and the
same fixed-sequence testing; see ``docs/approximation.md`` for the guarantee.

:func:`wilson_interval` and :func:`clopper_pearson_interval` report the agreement an audit
measured (``RunResult.audit``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np


def _grid() -> tuple[float, ...]:
    # Log-spaced near 1 (0.9999 ... 0.99), then every 0.01 (0.98 ... 0.0). Steps of 0.01 below
    # 0.99 matter: a proxy whose confident rows are ~92% right certifies at 0.92 or 0.91, which a
    # grid jumping from 0.944 to 0.9 tests only at 0.9, with too many errors (docs/approximation.md).
    fine = [1.0 - 10.0 ** (-e / 4) for e in range(16, 7, -1)]
    coarse = [round(0.99 - 0.01 * i, 2) for i in range(1, 100)]
    return tuple(sorted({round(t, 6) for t in fine + coarse} | {1.0}, reverse=True))


#: The fixed, descending sequence of score thresholds :func:`certify_threshold` tests.
THRESHOLDS: tuple[float, ...] = _grid()


def clopper_pearson_lower(k: int, n: int, confidence: float) -> float:
    """One-sided lower confidence bound of a binomial proportion from ``k`` successes in ``n``.

    ``P(p >= bound) >= confidence`` for every true ``p`` (exact, conservative).

    >>> round(clopper_pearson_lower(95, 100, 0.95), 3)
    0.898
    """
    if n <= 0 or k <= 0:
        return 0.0
    from scipy.stats import beta

    return float(beta.ppf(1.0 - confidence, k, n - k + 1))


def hypergeometric_lower(k: int, n: int, N: int, confidence: float) -> int:
    """One-sided lower confidence bound of the successes ``K`` in a finite population of ``N``,
    from ``k`` successes in a simple random sample of ``n`` drawn without replacement.

    The smallest ``K`` not rejected by the exact test ``P(X >= k | N, K, n) <= 1 - confidence``
    (``scipy.stats.hypergeom``); ``P(K >= bound) >= confidence`` for every ``K``.

    >>> hypergeometric_lower(50, 50, 50, 0.95)    # the sample is the whole population
    50
    >>> hypergeometric_lower(95, 100, 1000, 0.95) < 950
    True
    """
    if n <= 0 or k <= 0:
        return 0
    if n > N or k > n:
        raise ValueError(f"need k <= n <= N, got k={k}, n={n}, N={N}")
    from scipy.stats import hypergeom

    alpha = 1.0 - confidence
    lo, hi = k, N - (n - k)  # the population holds at least k successes and n - k failures
    while lo < hi:  # P(X >= k) grows with K: find the smallest K where it exceeds alpha
        mid = (lo + hi) // 2
        if hypergeom.sf(k - 1, N, mid, n) > alpha:
            hi = mid
        else:
            lo = mid + 1
    return lo


def clopper_pearson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided exact interval of a binomial proportion (``(0, 1)`` when ``n == 0``)."""
    if n <= 0:
        return 0.0, 1.0
    from scipy.stats import beta

    a = (1.0 - confidence) / 2
    low = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return low, high


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (``(0, 1)`` when ``n == 0``)."""
    if n <= 0:
        return 0.0, 1.0
    from scipy.stats import norm

    z = float(norm.ppf(1 - (1 - confidence) / 2))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


def min_rows_to_certify(accuracy: float, confidence: float) -> int:
    """The fewest rows that can certify ``accuracy`` at all (all of them correct):
    the smallest ``n`` with ``accuracy ** n <= 1 - confidence``."""
    return max(1, math.ceil(math.log(1.0 - confidence) / math.log(accuracy)))


#: With many calibration rows, a threshold is tested only once this share of them lies above it.
MIN_SHARE = 0.1


def default_min_rows(accuracy: float, confidence: float, calibration_rows: int = 0) -> int:
    """The fewest calibration rows above a threshold before it is tested: twice the fewest that
    could certify at all, at least 50, and at least a tenth (:data:`MIN_SHARE`) of the
    calibration rows.

    The share matters for large samples: with 2,000 calibration rows the first test is at 200
    rows above rather than 58, where a proxy whose most confident rows are 93% right passes
    (a 58-row test fails on four errors, which such a proxy makes about a third of the time, and
    fixed-sequence testing stops at the first failure). The rule reads only how many scores lie
    above, never whether the answers were right, so the guarantee is unchanged.

    Examples
    --------
    >>> default_min_rows(0.9, 0.95), default_min_rows(0.9, 0.95, 2000)
    (58, 200)
    """
    return max(50, 2 * min_rows_to_certify(accuracy, confidence), math.ceil(MIN_SHARE * calibration_rows))


@dataclass(frozen=True)
class Certification:
    """What :func:`certify_threshold` found.

    Attributes
    ----------
    threshold
        The lowest certified score threshold; None when none certified (the proxy answers nothing).
    accuracy, confidence
        The target.
    calibration_rows
        Calibration rows used (with a proxy answer and an oracle answer).
    rows_above, correct_above, lower_bound
        At the chosen threshold: calibration rows with score >= it, how many the proxy got right,
        and the certified lower bound of its accuracy (None when nothing certified).
    tested
        ``(threshold, rows_above, correct_above, lower_bound, certified)`` for each threshold tested,
        in test order (the last one is the first failure, if any).
    """

    threshold: float | None
    accuracy: float
    confidence: float
    calibration_rows: int
    rows_above: int = 0
    correct_above: int = 0
    lower_bound: float | None = None
    tested: tuple[tuple[float, int, int, float, bool], ...] = field(default=(), repr=False)
    measure: str = "accuracy"

    @property
    def certified(self) -> bool:
        return self.threshold is not None

    def describe(self) -> str:
        m = self.measure
        if self.threshold is None:
            tail = ": the oracle answers every row" if m == "accuracy" else ""
            return (f"no threshold certified {m} >= {self.accuracy:g} at confidence {self.confidence:g} "
                    f"from {self.calibration_rows} calibration rows{tail}")
        if m == "accuracy":
            counted = f"{self.correct_above}/{self.rows_above} calibration rows right"
        elif m == "precision":
            counted = f"{self.correct_above}/{self.rows_above} calibration rows at or above it positive"
        else:
            counted = f"{self.correct_above} of {self.rows_above} calibration rows below it positive"
        return (f"threshold {self.threshold:.4g}: {counted}, {m} >= {self.lower_bound:.3f} at confidence "
                f"{self.confidence:g} (target {self.accuracy:g})")


def certify_threshold(scores: Sequence[float] | np.ndarray, correct: Sequence[bool] | np.ndarray, *,
                      accuracy: float, confidence: float,
                      thresholds: Sequence[float] = THRESHOLDS, min_rows: int | None = None,
                      population: Sequence[float] | np.ndarray | None = None,
                      known_scores: Sequence[float] | np.ndarray = (),
                      known_correct: Sequence[bool] | np.ndarray = ()) -> Certification:
    """The lowest score threshold at which the proxy's accuracy is certified (see the module doc).

    Parameters
    ----------
    scores
        The proxy's score of each calibration row (higher: more confident).
    correct
        Whether the proxy's answer equals the oracle's, per calibration row.
    accuracy, confidence
        The target: accuracy over the rows at or above the threshold, with this confidence.
    thresholds
        The sequence to test, highest first (fixed before seeing data; default :data:`THRESHOLDS`).
    min_rows
        Thresholds with fewer calibration rows above them are passed over untested (default:
        :func:`default_min_rows`). Testing only where enough rows lie above keeps one unlucky
        error among the few most confident rows from ending the sequence; the rule reads only the
        scores, so it does not weaken the guarantee.
    population
        The scores of every row of the finite table the calibration rows were drawn from (the
        calibration rows included). Given, the bound is about *this table*: at each threshold the
        exact hypergeometric lower bound of the correct rows among the ``N_t`` table rows scoring
        >= t, less the calibration rows' and the known rows' correct answers, over the rows left
        -- the ones the proxy answers. None: the binomial (Clopper-Pearson) bound of the accuracy
        over an unlimited population.
    known_scores, known_correct
        Table rows (with ``population``) the proxy will not answer although they score above a
        threshold, and whether the proxy was right on each (rows repeating a sampled row's text:
        the oracle's answer is known).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> s = rng.uniform(size=2000); ok = rng.uniform(size=2000) < s    # right more often when confident
    >>> c = certify_threshold(s, ok, accuracy=0.9, confidence=0.95)
    >>> c.threshold, c.rows_above, c.correct_above, round(c.lower_bound, 3)
    (0.81, 393, 364, 0.901)
    >>> certify_threshold(s, np.zeros(2000, bool), accuracy=0.9, confidence=0.95).certified
    False
    """
    s = np.asarray(scores, dtype=float)
    ok = np.asarray(correct, dtype=bool)
    if s.shape != ok.shape:
        raise ValueError(f"scores and correct differ in length ({s.size} vs {ok.size})")
    if not 0.0 < accuracy < 1.0 or not 0.0 < confidence < 1.0:
        raise ValueError(f"accuracy and confidence must be in (0, 1), got {accuracy}, {confidence}")
    if any(a <= b for a, b in zip(thresholds, thresholds[1:])):
        raise ValueError("thresholds must be strictly decreasing")
    need = max(min_rows_to_certify(accuracy, confidence), default_min_rows(accuracy, confidence, s.size)
               if min_rows is None else min_rows)
    pop = None if population is None else np.asarray(population, dtype=float)
    ks, kc = np.asarray(known_scores, dtype=float), np.asarray(known_correct, dtype=bool)

    def test(t: float) -> tuple[int, int, float] | None:
        above = s >= t
        n = int(above.sum())
        if n < need:
            return None  # cannot certify even if all were right: passed over (reads scores only)
        k = int(ok[above].sum())
        if pop is None:
            return n, k, clopper_pearson_lower(k, n, confidence)
        return n, k, _table_bound(k, n, int((pop >= t).sum()), ks >= t, kc, confidence)

    return _fixed_sequence(thresholds, test, accuracy, confidence, int(s.size), "accuracy")


def _fixed_sequence(order: Sequence[float], test: Any, target: float, confidence: float, calibration_rows: int,
                    measure: str) -> Certification:
    """Fixed-sequence testing: ``test(t)`` gives ``(rows, right, lower bound)`` at each threshold
    in ``order`` (None: passed over untested); testing stops at the first bound below ``target``,
    and the last threshold that passed is the certified one."""
    tested: list[tuple[float, int, int, float, bool]] = []
    best: tuple[float, int, int, float] | None = None
    for t in order:
        got = test(t)
        if got is None:
            continue
        n, k, bound = got
        passed = bound >= target
        tested.append((float(t), n, k, bound, passed))
        if not passed:
            break
        best = (float(t), n, k, bound)
    if best is None:
        return Certification(None, target, confidence, calibration_rows, tested=tuple(tested), measure=measure)
    return Certification(best[0], target, confidence, calibration_rows, best[1], best[2], best[3], tuple(tested),
                         measure=measure)


def _table_bound(k: int, n: int, N: int, known_above: np.ndarray, known_correct: np.ndarray,
                 confidence: float) -> float:
    """Lower bound of the accuracy over the table rows above a threshold that the proxy answers:
    ``(K_low - k - c) / (N - n - d)``, with ``d`` known rows above it, ``c`` of them right."""
    d = int(known_above.sum())
    c = int(known_correct[known_above].sum())
    left = N - n - d
    if left <= 0:
        return 1.0  # nothing left for the proxy to answer: nothing it can get wrong
    return max(0.0, (hypergeometric_lower(k, n, N, confidence) - k - c) / left)


def hypergeometric_upper(k: int, n: int, N: int, confidence: float) -> int:
    """One-sided upper confidence bound of the successes ``K`` in a population of ``N``, from ``k``
    successes in a simple random sample of ``n`` (the lower bound of the failures, turned round).

    >>> hypergeometric_upper(0, 50, 50, 0.95), hypergeometric_upper(0, 0, 80, 0.95)
    (0, 80)
    >>> hypergeometric_upper(5, 100, 1000, 0.95) > 50
    True
    """
    if n <= 0:
        return N
    return N - hypergeometric_lower(n - k, n, N, confidence)


def _yes_grid() -> tuple[float, ...]:
    return tuple(sorted({round(t, 6) for t in THRESHOLDS} | {round(1.0 - t, 6) for t in THRESHOLDS}, reverse=True))


#: Thresholds of a YES-probability (precision and recall targets): :data:`THRESHOLDS` and their
#: mirror images, so the grid is as fine near 0 (sure NO) as near 1 (sure YES). Descending.
YES_THRESHOLDS: tuple[float, ...] = _yes_grid()


@dataclass(frozen=True)
class _Rows:
    """The rows a precision or recall certification reasons about (see :func:`certify_precision`)."""

    cal: np.ndarray
    pos: np.ndarray
    pop: np.ndarray
    known: np.ndarray
    known_pos: np.ndarray
    extra: int

    @classmethod
    def of(cls, scores: Any, positive: Any, population: Any, known_scores: Any, known_positive: Any,
           extra_positives: int) -> _Rows:
        cal, pos = np.asarray(scores, dtype=float), np.asarray(positive, dtype=bool)
        known, known_pos = np.asarray(known_scores, dtype=float), np.asarray(known_positive, dtype=bool)
        if cal.shape != pos.shape or known.shape != known_pos.shape:
            raise ValueError("scores and positive (and known_scores and known_positive) must have the same length")
        pop = np.asarray(population, dtype=float)
        if pop.size < cal.size + known.size:
            raise ValueError(f"population ({pop.size} rows) must hold the calibration ({cal.size}) and known "
                             f"({known.size}) rows")
        return cls(cal, pos, pop, known, known_pos, int(extra_positives))

    @property
    def kept_known(self) -> int:
        """Positives whose oracle answer is known: kept wherever they score."""
        return self.extra + int(self.pos.sum()) + int(self.known_pos.sum())

    def unknown_positives_low(self, side: np.ndarray, cal_side: np.ndarray, known_side: np.ndarray,
                              confidence: float) -> tuple[int, int, int]:
        """(lower bound of the unknown rows' positives, calibration rows, their positives) on one side."""
        N, n = int(side.sum()), int(cal_side.sum())
        k = int(self.pos[cal_side].sum())
        c = int(self.known_pos[known_side].sum())
        return max(0, hypergeometric_lower(k, n, N, confidence) - k - c), n, k

    def unknown_positives_high(self, side: np.ndarray, cal_side: np.ndarray, known_side: np.ndarray,
                               confidence: float) -> tuple[int, int, int]:
        """(upper bound of the unknown rows' positives, calibration rows, their positives) on one side."""
        N, n = int(side.sum()), int(cal_side.sum())
        k = int(self.pos[cal_side].sum())
        c = int(self.known_pos[known_side].sum())
        unknown = N - n - int(known_side.sum())
        return max(0, min(unknown, hypergeometric_upper(k, n, N, confidence) - k - c)), n, k


def _check_target(name: str, value: float, confidence: float, thresholds: Sequence[float]) -> None:
    if not 0.0 < value < 1.0 or not 0.0 < confidence < 1.0:
        raise ValueError(f"{name} and confidence must be in (0, 1), got {value}, {confidence}")
    if any(a <= b for a, b in zip(thresholds, thresholds[1:])):
        raise ValueError("thresholds must be strictly decreasing")


def certify_precision(scores: Sequence[float] | np.ndarray, positive: Sequence[bool] | np.ndarray, *,
                      precision: float, confidence: float, population: Sequence[float] | np.ndarray,
                      known_scores: Sequence[float] | np.ndarray = (),
                      known_positive: Sequence[bool] | np.ndarray = (), extra_positives: int = 0,
                      thresholds: Sequence[float] = YES_THRESHOLDS, min_rows: int | None = None) -> Certification:
    """The lowest YES-score threshold at which keeping the rows scoring at or above it, unchecked,
    keeps a set of certified ``precision`` (SUPG's precision target).

    The rows reasoned about are the table's rows outside the proxy's training rows
    (``population``: their scores); ``scores`` / ``positive`` are the calibration rows among them
    (a simple random sample, with the oracle's answer: YES = positive). The kept set is every
    positive whose oracle answer is known (calibration rows, ``known_*`` rows -- repeats of a
    sampled text -- and ``extra_positives``, e.g. the training rows' positives) plus the rows of
    unknown answer scoring >= t. At each threshold ``t`` (descending, fixed-sequence testing as
    in :func:`certify_threshold`; thresholds with fewer calibration rows above than could certify
    at all, :func:`min_rows_to_certify`, or than ``min_rows``, are passed over), the exact
    hypergeometric lower bound of the positives among the ``N_t`` rows scoring >= t gives a
    lower bound of the kept set's precision; ``t`` passes if it reaches ``precision``. ``correct_above`` / ``rows_above``: calibration positives / rows >= the threshold.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> pop = rng.uniform(size=5000); cal = pop[:500]; pos = rng.uniform(size=500) < cal
    >>> c = certify_precision(cal, pos, precision=0.8, confidence=0.95, population=pop)
    >>> c.certified, round(c.threshold, 2), c.lower_bound >= 0.8
    (True, 0.64, True)
    """
    _check_target("precision", precision, confidence, thresholds)
    rows = _Rows.of(scores, positive, population, known_scores, known_positive, extra_positives)
    need = max(min_rows_to_certify(precision, confidence), 0 if min_rows is None else min_rows)

    def test(t: float) -> tuple[int, int, float] | None:
        cal_above = rows.cal >= t
        if int(cal_above.sum()) < need:
            return None
        known_above = rows.known >= t
        pop_above = rows.pop >= t
        low, n, k = rows.unknown_positives_low(pop_above, cal_above, known_above, confidence)
        unchecked = int(pop_above.sum()) - n - int(known_above.sum())
        denom = rows.kept_known + unchecked
        return n, k, 1.0 if denom == 0 else (rows.kept_known + low) / denom

    return _fixed_sequence(thresholds, test, precision, confidence, int(rows.cal.size), "precision")


def certify_recall(scores: Sequence[float] | np.ndarray, positive: Sequence[bool] | np.ndarray, *,
                   recall: float, confidence: float, population: Sequence[float] | np.ndarray,
                   known_scores: Sequence[float] | np.ndarray = (),
                   known_positive: Sequence[bool] | np.ndarray = (), extra_positives: int = 0,
                   thresholds: Sequence[float] = YES_THRESHOLDS) -> Certification:
    """The highest YES-score threshold at which dropping the rows of unknown answer scoring below
    it, unchecked, keeps a certified ``recall`` of the rows the oracle would keep (SUPG's recall
    target).

    Rows as in :func:`certify_precision`. Every positive whose answer is known is kept, and every
    row of unknown answer scoring >= t is kept (by the proxy, or checked by the oracle: the bound
    is the same); the positives lost are the unknown rows below t that the oracle would keep.
    Thresholds are tested **ascending** (``thresholds`` is given descending, like everywhere in
    this module), by fixed-sequence testing: recall falls as t rises, and testing stops at the
    first t that fails. Thresholds with no row of unknown answer below them are passed over (they
    drop nothing). The test at t splits ``1 - confidence`` in two (Bonferroni): an exact
    hypergeometric upper bound of the positives below t and a lower bound of those at or above
    it, each at ``1 - (1 - confidence) / 2``; recall >= kept_low / (kept_low + lost_high).
    ``rows_above`` / ``correct_above``: calibration rows below the threshold and the positives
    among them.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> pop = rng.uniform(size=5000); cal = pop[:500]; pos = rng.uniform(size=500) < cal ** 3
    >>> c = certify_recall(cal, pos, recall=0.9, confidence=0.95, population=pop)
    >>> c.certified, 0.2 < c.threshold < 0.5, c.lower_bound >= 0.9
    (True, True, True)
    """
    _check_target("recall", recall, confidence, thresholds)
    rows = _Rows.of(scores, positive, population, known_scores, known_positive, extra_positives)
    half = 1.0 - (1.0 - confidence) / 2

    def test(t: float) -> tuple[int, int, float] | None:
        pop_below, cal_below, known_below = rows.pop < t, rows.cal < t, rows.known < t
        if int(pop_below.sum()) - int(cal_below.sum()) - int(known_below.sum()) <= 0:
            return None  # nothing of unknown answer below t: nothing dropped, nothing to test
        lost, n, k = rows.unknown_positives_high(pop_below, cal_below, known_below, half)
        above, _, _ = rows.unknown_positives_low(~pop_below, ~cal_below, ~known_below, half)
        kept = rows.kept_known + above
        return n, k, 1.0 if kept + lost == 0 else kept / (kept + lost)

    return _fixed_sequence(list(reversed(thresholds)), test, recall, confidence, int(rows.cal.size), "recall")


def default_sample_size(rows: int) -> int:
    """Calibration rows asked of the oracle by default: a fifth of the rows, at least 200 (or all
    rows), at most 2,000."""
    return min(rows, max(200, min(2000, math.ceil(0.2 * rows))))


@dataclass(frozen=True)
class AuditReport:
    """What :meth:`RunResult.audit` found: the oracle re-asked for ``checked`` approximated cells.

    ``interval`` is a Clopper-Pearson interval of the agreement at ``confidence``; ``wilson`` the
    Wilson interval. ``details``: one row per checked cell (``step``, ``row``, ``source``,
    ``score``, ``approx``, ``oracle``, ``agree``).
    """

    approximated: int
    checked: int
    agreed: int
    confidence: float
    interval: tuple[float, float]
    wilson: tuple[float, float]
    details: Any = field(default=None, repr=False)

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.checked if self.checked else None

    def __str__(self) -> str:
        if not self.checked:
            return f"approximation audit: {self.approximated} approximated cells, none checked"
        lo, hi = self.interval
        return (f"approximation audit: {self.checked} of {self.approximated} approximated cells re-asked, "
                f"{self.agreed} agree with the oracle ({self.agreement:.1%}; {self.confidence:.0%} CI "
                f"{lo:.1%}-{hi:.1%})")


def audit_agreement(pools: Sequence[Any], k: int, *, seed: int = 0, confidence: float = 0.95) -> AuditReport:
    """Ask the oracle about ``k`` random approximated cells of ``pools`` and count agreement.

    Each pool (one per approximate step, kept in the step's metrics notes as ``"approx_audit"``)
    has ``step``, ``engine`` (the oracle), ``requests``, ``rows``, ``values``, ``scores`` and
    ``sources`` for the cells a proxy answered. The requests go to the oracle engine directly
    (no cache: the audit measures, it does not reuse).
    """
    import random

    import polars as pl

    cells = [(p, i) for p in pools for i in range(len(p.requests))]
    chosen = random.Random(seed).sample(cells, min(k, len(cells))) if k > 0 else []
    rows: list[dict[str, Any]] = []
    by_pool: dict[int, list[int]] = {}
    for p, i in chosen:
        by_pool.setdefault(id(p), []).append(i)
    for p in pools:
        picked = by_pool.get(id(p), [])
        if not picked:
            continue
        answers = p.engine.generate([p.requests[i] for i in picked])
        for i, comp in zip(picked, answers):
            fresh = comp.value if comp.ok else None
            rows.append({"step": p.step, "row": p.rows[i], "source": p.sources[i], "score": p.scores[i],
                         "approx": p.values[i], "oracle": fresh, "agree": fresh == p.values[i]})
    agreed = sum(r["agree"] for r in rows)
    schema = {"step": pl.Int32, "row": pl.Int64, "source": pl.String, "score": pl.Float64, "approx": pl.String,
              "oracle": pl.String, "agree": pl.Boolean}
    details = pl.DataFrame(rows, schema=schema) if rows else pl.DataFrame(schema=schema)
    return AuditReport(len(cells), len(rows), agreed, confidence,
                       clopper_pearson_interval(agreed, len(rows), confidence),
                       wilson_interval(agreed, len(rows), confidence), details)
