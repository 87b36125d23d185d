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
- ``"neighbour"``: the nearest already-answered neighbour, each row taking the oracle's answer of
  the most similar reference row (a part of the calibration sample) by cosine similarity of
  embeddings (``embedder=`` as for the learned proxy); its score is that similarity;
- an engine, or a registered engine name: a model cascade, a cheaper engine asked the same
  question under the same labels; its score is its probability of the label it chose;
- a list of those (``proxy=["neighbour", "learned", "small"]``): combined sources, each answering the rows it
  is certified for that no earlier source answered (accuracy targets only).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from semframe.errors import PlanError
from semframe.plan.embedding import embedder_text
from semframe.plan.semantic import SemClassify, SemFilter, engine_label

#: ``proxy=`` values that mean the learned proxy.
LEARNED = (None, "learned")
#: The ``proxy=`` value that means the nearest answered neighbour.
NEIGHBOUR = "neighbour"
#: Sources that embed the row's text (with ``embedder=``).
EMBEDDED = (*LEARNED, NEIGHBOUR)


@dataclass(frozen=True, repr=False)
class Target:
    """A quality target for an approximate step.

    Either an ``accuracy`` target (classify and filter: the agreement of the proxy's answers with
    the step's own engine), or -- for ``filter`` only -- a ``precision`` and/or ``recall`` target
    on the rows kept (SUPG, Kang et al. VLDB 2020; see ``docs/approximation.md``). Without any of
    the three, the target is ``accuracy=0.9``.

    Parameters
    ----------
    accuracy
        The least accuracy (agreement with the step's own engine) of the answers the proxy gives.
    precision
        ``filter``: the least share of the kept rows that the oracle would keep too.
    recall
        ``filter``: the least share of the rows the oracle would keep that are kept.
    confidence
        The probability, over the random calibration sample, that the target holds (with
        precision and recall both, that both hold).
    sample
        Calibration rows asked of the oracle (default: a fifth of the rows, at least 200, at most
        2,000; with several proxy sources, that many per source).
    seed
        Seed of the calibration sample (and of the proxy's train/calibration split).

    Examples
    --------
    >>> import semframe as sf
    >>> sf.Target(accuracy=0.95, confidence=0.9)
    Target(accuracy=0.95, confidence=0.9, sample=None, seed=0)
    >>> sf.Target(recall=0.9)
    Target(recall=0.9, confidence=0.95, sample=None, seed=0)
    >>> sf.Target(precision=0.9, recall=0.8).kind
    'precision+recall'
    >>> sf.Target(accuracy=1.5)
    Traceback (most recent call last):
    ...
    semframe.errors.PlanError: sf.Target: accuracy must be a number strictly between 0 and 1, got 1.5
    """

    accuracy: float | None = None
    precision: float | None = None
    recall: float | None = None
    confidence: float = 0.95
    sample: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.accuracy is None and self.precision is None and self.recall is None:
            object.__setattr__(self, "accuracy", 0.9)
        for name in ("accuracy", "precision", "recall", "confidence"):
            value = getattr(self, name)
            if value is None and name != "confidence":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
                raise PlanError(f"sf.Target: {name} must be a number strictly between 0 and 1, got {value!r}")
        if self.accuracy is not None and (self.precision is not None or self.recall is not None):
            raise PlanError("sf.Target: give accuracy=, or precision= and/or recall=, not both kinds "
                            "(accuracy is about the proxy's answers, precision/recall about the rows a filter keeps)")
        if self.sample is not None and (isinstance(self.sample, bool) or not isinstance(self.sample, int)
                                        or self.sample < 10):
            raise PlanError(f"sf.Target: sample must be an integer >= 10 (calibration rows), got {self.sample!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise PlanError(f"sf.Target: seed must be an integer, got {self.seed!r}")

    @property
    def kind(self) -> str:
        """``"accuracy"``, ``"precision"``, ``"recall"`` or ``"precision+recall"``."""
        if self.accuracy is not None:
            return "accuracy"
        return "+".join(k for k in ("precision", "recall") if getattr(self, k) is not None)

    def goal_text(self) -> str:
        """The target without confidence and sample, e.g. ``"precision >= 0.9, recall >= 0.8"``."""
        return ", ".join(f"{k} >= {getattr(self, k):g}" for k in ("accuracy", "precision", "recall")
                         if getattr(self, k) is not None)

    def describe(self) -> str:
        sample = "default sample" if self.sample is None else f"sample {self.sample}"
        return f"{self.goal_text()} at confidence {self.confidence:g} ({sample}, seed {self.seed})"

    def __repr__(self) -> str:
        shown = [f"{k}={getattr(self, k)!r}" for k in ("accuracy", "precision", "recall")
                 if getattr(self, k) is not None]
        shown += [f"{k}={getattr(self, k)!r}" for k in ("confidence", "sample", "seed")]
        return f"Target({', '.join(shown)})"

    def to_dict(self) -> dict[str, Any]:
        """The target as plain data (plan files)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


class CalibratedThreshold(float):
    """What a step's ``semantic_cache`` holds when the step calibrates its threshold itself
    (``semantic_cache=True`` or ``semantic_cache=sf.Target(...)``): the target, in a float.

    It is a float (1.0: only texts that embed identically, until calibrated) so that plan nodes,
    which hold a similarity threshold, keep it as they are; ``explain()`` shows the target, and
    plan files save it as ``{"calibrated": <the target>}``. (It lives in the plan layer for that;
    the calibration itself is :mod:`semframe.cache.semantic`'s.)

    Examples
    --------
    >>> c = CalibratedThreshold(Target(accuracy=0.95, confidence=0.95))
    >>> f"semantic cache >= {c:g}"
    'semantic cache >= calibrated: accuracy >= 0.95 at confidence 0.95 (default sample, seed 0)'
    >>> c == CalibratedThreshold(Target(accuracy=0.95, confidence=0.95)), c == 1.0
    (True, False)
    """

    target: Any

    def __new__(cls, target: Any) -> CalibratedThreshold:
        obj = super().__new__(cls, 1.0)
        obj.target = target
        return obj

    def __reduce__(self) -> tuple[Any, ...]:
        return (CalibratedThreshold, (self.target,))

    def __format__(self, spec: str) -> str:
        return f"calibrated: {self.target.describe()}"

    def __repr__(self) -> str:
        return f"CalibratedThreshold({self.target!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CalibratedThreshold) and other.target == self.target

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(("calibrated", self.target))


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
        if isinstance(self.proxy, list):
            object.__setattr__(self, "proxy", tuple(self.proxy))
        sources = self.sources
        if not sources:
            raise PlanError(f"{where}: proxy= is an empty list; give one source or more "
                            "(e.g. proxy=['learned', 'small-engine'])")
        for source in sources:
            if isinstance(source, (list, tuple)):
                raise PlanError(f"{where}: proxy= takes a flat list of sources, got a nested {type(source).__name__}")
            if isinstance(source, str) and not source.strip():
                raise PlanError(f"{where}: proxy must be 'learned', an engine or a registered engine name, got ''")
        if sum(s in LEARNED for s in sources) > 1:
            raise PlanError(f"{where}: proxy= names the learned proxy twice; give it once (with embedder= "
                            "or an embedding engine for its vectors)")
        if sum(s == NEIGHBOUR for s in sources) > 1:
            raise PlanError(f"{where}: proxy= names 'neighbour' twice; give it once")
        if self.embedder is not None and not any(s in EMBEDDED for s in sources):
            raise PlanError(f"{where}: embedder= is for the learned proxy and 'neighbour'; a cascade "
                            "(proxy=engine) takes none")
        if self.approx.kind != "accuracy" and len(sources) > 1:
            raise PlanError(f"{where}: a {self.approx.kind} target takes one proxy source; combined sources "
                            "(proxy=[...]) take an accuracy target (sf.Target(accuracy=...))")

    @property
    def sources(self) -> tuple[Any, ...]:
        """The proxy sources in the order they answer: ``"learned"``, ``"neighbour"`` (also spelled
        ``"neighbor"``) or an engine (name)."""
        items = self.proxy if isinstance(self.proxy, tuple) else (self.proxy,)
        return tuple("learned" if s is None else NEIGHBOUR if s == "neighbor" else s for s in items)

    @property
    def is_learned(self) -> bool:
        """True when the only source is the learned proxy (False: a cascade, or several sources)."""
        return self.sources == ("learned",)

    @property
    def elementwise(self) -> bool:
        # Which rows the proxy answers depends on the calibration sample drawn from all rows.
        return False

    def source_label(self, source: Any) -> str:
        """How explain() and lineage notes name one source."""
        if source in LEARNED:
            return f"learned proxy (logistic regression on {embedder_text(self.embedder)} embeddings)"
        if source == NEIGHBOUR:
            return (f"nearest answered neighbour (the oracle's answer of the most similar reference row of the "
                    f"calibration sample, cosine similarity of {embedder_text(self.embedder)} embeddings; "
                    "score = that similarity)")
        return f"cascade (engine {engine_label(source)}, same labels, score = its label probability)"

    def source_text(self) -> str:
        labels = [self.source_label(s) for s in self.sources]
        if len(labels) == 1:
            return labels[0]
        return "; then ".join(f"{i + 1}. {text}" for i, text in enumerate(labels))

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
        if self.approx.kind != "accuracy":  # type: ignore[union-attr]
            raise PlanError("semantic.classify: precision and recall targets are for filter (the rows kept); "
                            "classify takes sf.Target(accuracy=..., confidence=...)")
        super().__post_init__()


@dataclass(frozen=True)
class SemApproxFilter(ApproxStep, SemFilter):
    """``filter`` whose YES/NO answers come partly from a proxy, under a :class:`Target`.

    With ``Target(accuracy=...)`` the target is the accuracy of the proxy's YES/NO answers
    (agreement with the oracle). With ``Target(precision=..., recall=...)`` (either or both) it is
    about the rows kept, measured against the rows the oracle would keep (SUPG; see
    :mod:`semframe.execution.calibration`): a recall target keeps every row scoring above a
    certified threshold unchecked; a precision target keeps the rows scoring above a certified
    (higher) threshold and drops the rest unchecked; both: the rows between the two thresholds
    are asked of the oracle.
    """

    approx: Target | None = None
    proxy: Any = None
    embedder: Any = None

    operator: ClassVar[str] = "filter"

    def __post_init__(self) -> None:
        self._check_approx()
        super().__post_init__()
