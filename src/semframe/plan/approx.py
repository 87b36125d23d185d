"""Approximate steps: a quality target, and the classify node that meets it with a proxy.

``classify(..., approx=sf.Target(accuracy=0.9, confidence=0.95))`` builds a
:class:`SemApproxClassify` instead of a :class:`~semframe.plan.semantic.SemClassify` (a separate
node type, so the exact verb and every rule and operator that reads it stay as they are);
``filter(..., approx=...)`` builds a :class:`SemApproxFilter`. The
step's own engine is the *oracle*; a *proxy* answers the rows it is confident about, where the
confidence threshold is certified on a calibration sample the oracle answers (see
:mod:`semframe.execution.calibration` for the statistics and the exact guarantee, and
``docs/approximation.md``).

Proxies (``proxy=``):

- ``None`` or ``"learned"``: a learned proxy, logistic regression over embeddings of each row's
  text (``embedder=``: an embedding engine or model name; None: the configured default),
  trained on oracle answers of part of the calibration sample;
- an engine, or a registered engine name: a model cascade, a cheaper engine asked the same
  question under the same labels; its score is its probability of the label it chose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from semframe.errors import PlanError
from semframe.plan.embedding import embedder_text
from semframe.plan.semantic import SemClassify, SemFilter, engine_label

#: ``proxy=`` values that mean the learned proxy.
LEARNED = (None, "learned")


@dataclass(frozen=True)
class Target:
    """A quality target for an approximate step.

    Parameters
    ----------
    accuracy
        The least accuracy (agreement with the step's own engine) of the answers the proxy gives.
    confidence
        The probability, over the random calibration sample, that the target holds.
    sample
        Calibration rows asked of the oracle (default: a fifth of the rows, at least 200, at most 2,000).
    seed
        Seed of the calibration sample (and of the proxy's train/calibration split).

    Examples
    --------
    >>> import semframe as sf
    >>> sf.Target(accuracy=0.95, confidence=0.9)
    Target(accuracy=0.95, confidence=0.9, sample=None, seed=0)
    >>> sf.Target(accuracy=1.5)
    Traceback (most recent call last):
    ...
    semframe.errors.PlanError: sf.Target: accuracy must be a number strictly between 0 and 1, got 1.5
    """

    accuracy: float = 0.9
    confidence: float = 0.95
    sample: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("accuracy", "confidence"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
                raise PlanError(f"sf.Target: {name} must be a number strictly between 0 and 1, got {value!r}")
        if self.sample is not None and (isinstance(self.sample, bool) or not isinstance(self.sample, int)
                                        or self.sample < 10):
            raise PlanError(f"sf.Target: sample must be an integer >= 10 (calibration rows), got {self.sample!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise PlanError(f"sf.Target: seed must be an integer, got {self.seed!r}")

    def describe(self) -> str:
        sample = "default sample" if self.sample is None else f"sample {self.sample}"
        return f"accuracy >= {self.accuracy:g} at confidence {self.confidence:g} ({sample}, seed {self.seed})"


class ApproxStep:
    """What approximate row-wise steps share: validation, the proxy's description, display.

    A mixin placed before the exact step's class (``class SemApproxFilter(ApproxStep, SemFilter)``);
    the subclass declares the fields ``approx``, ``proxy`` and ``embedder``.
    """

    approx: Target | None
    proxy: Any
    embedder: Any

    def _check_approx(self) -> None:
        where = f"semantic.{self.operator}"  # type: ignore[attr-defined]
        if not isinstance(self.approx, Target):
            raise PlanError(f"{where}: approx must be sf.Target(accuracy=..., confidence=...), "
                            f"got {type(self.approx).__name__}")
        if getattr(self, "probabilities", False):
            raise PlanError(f"{where}: probabilities=True cannot be combined with approx= yet "
                            "(proxy-answered rows have no engine probabilities); drop one of them")
        if self.semantic_cache is not None:  # type: ignore[attr-defined]
            raise PlanError(f"{where}: semantic_cache cannot be combined with approx= (the proxy already "
                            "answers near-duplicates); drop semantic_cache")
        if self.temperature:  # type: ignore[attr-defined]
            raise PlanError(f"{where}: approx= needs temperature=0 (the oracle's answers must be reproducible)")
        if isinstance(self.proxy, str) and not self.proxy.strip():
            raise PlanError(f"{where}: proxy must be 'learned', an engine or a registered engine name, got ''")
        if not self.is_learned and self.embedder is not None:
            raise PlanError(f"{where}: embedder= is for the learned proxy; a cascade (proxy=engine) takes none")

    @property
    def is_learned(self) -> bool:
        """True for the learned proxy, False for a cascade engine."""
        return self.proxy in LEARNED

    @property
    def elementwise(self) -> bool:
        # Which rows the proxy answers depends on the calibration sample drawn from all rows.
        return False

    def source_text(self) -> str:
        if self.is_learned:
            return f"learned proxy (logistic regression on {embedder_text(self.embedder)} embeddings)"
        return f"cascade (engine {engine_label(self.proxy)}, same labels, score = its label probability)"

    def describe(self) -> str:
        return super().describe()[:-1] + f"; approx {self.approx.describe()}]"  # type: ignore[misc, union-attr]

    def detail_lines(self) -> list[str]:
        return super().detail_lines() + [f"approx source: {self.source_text()}"]  # type: ignore[misc]


@dataclass(frozen=True)
class SemApproxClassify(ApproxStep, SemClassify):
    """``classify`` answered partly by a proxy, under a :class:`Target` (see the module doc).

    The output is the same String column as :class:`SemClassify`'s. Unlike it, a row's answer
    depends on the other rows (which were sampled for calibration, where the threshold fell), so
    the operator reads its whole input before it answers.
    """

    approx: Target | None = None
    proxy: Any = None
    embedder: Any = None

    operator: ClassVar[str] = "classify"

    def __post_init__(self) -> None:
        self._check_approx()
        super().__post_init__()


@dataclass(frozen=True)
class SemApproxFilter(ApproxStep, SemFilter):
    """``filter`` whose YES/NO answers come partly from a proxy, under a :class:`Target`.

    The target is the accuracy of the proxy's YES/NO answers (agreement with the oracle), not a
    precision or recall of the rows kept.
    """

    approx: Target | None = None
    proxy: Any = None
    embedder: Any = None

    operator: ClassVar[str] = "filter"

    def __post_init__(self) -> None:
        self._check_approx()
        super().__post_init__()
