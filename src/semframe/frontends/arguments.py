"""Argument handling shared by every semantic verb: templates, labels, thresholds, other inputs.

Each function turns what a user typed into what a plan node holds, or raises a
:class:`~semframe.errors.PlanError` that names the verb and says how to fix the call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from semframe.errors import PlanError
from semframe.plan.nodes import Node, Scan, Source
from semframe.plan.spec import ChoiceSpec
from semframe.plan.template import Template

#: The target a step given ``semantic_cache=True`` calibrates its threshold for: reused answers
#: agree with the engine's own at least 95% of the time, with 95% confidence (see
#: :mod:`semframe.cache.semantic`, "Calibrated thresholds"). No fixed default threshold.
DEFAULT_SEMANTIC_ACCURACY = 0.95
DEFAULT_SEMANTIC_CONFIDENCE = 0.95


def resolve_template(text: Any, columns: Sequence[str], where: str) -> Template:
    """A column name means that column's text; anything else is a ``{column}`` template."""
    if not isinstance(text, str):
        hint = f" (for the column {text!r}, write '{{{text}}}')" if str(text) in columns else ""
        raise PlanError(f"{where}: expected a column name or a template string, got {type(text).__name__} "
                        f"{text!r}{hint}")
    if text in columns:
        return Template.for_column(text)
    template = Template.parse(text)
    if not template.columns:
        cols = ", ".join(repr(c) for c in columns)
        raise PlanError(
            f"{where}: {text!r} is neither a column nor a template that references one "
            f"(write '{{column}}' in the text); columns are {cols}"
        )
    template.check_columns(columns, where)
    return template


def _semantic_cache(value: Any, where: str) -> float | None:
    """What a step's ``semantic_cache=`` becomes: None (off), a fixed threshold chosen by the
    user (a float in (0, 1], not calibrated), or a threshold the step calibrates itself
    (``True``: for :data:`DEFAULT_SEMANTIC_ACCURACY` at :data:`DEFAULT_SEMANTIC_CONFIDENCE`;
    ``sf.Target(...)``: for that target), held as a
    :class:`~semframe.plan.approx.CalibratedThreshold`.

    Examples
    --------
    >>> import semframe as sf
    >>> _semantic_cache(0.9, "semantic.classify"), _semantic_cache(False, "semantic.classify")
    (0.9, None)
    >>> _semantic_cache(True, "semantic.classify").target
    Target(accuracy=0.95, confidence=0.95, sample=None, seed=0)
    >>> _semantic_cache(sf.Target(accuracy=0.9, sample=100), "semantic.classify").target.sample
    100
    """
    from semframe.plan.approx import CalibratedThreshold, Target

    if value is None or value is False:
        return None
    if value is True:
        return CalibratedThreshold(Target(accuracy=DEFAULT_SEMANTIC_ACCURACY, confidence=DEFAULT_SEMANTIC_CONFIDENCE))
    if isinstance(value, CalibratedThreshold):
        return value
    if isinstance(value, Target):
        if getattr(value, "accuracy", None) is None:
            raise PlanError(f"{where}: semantic_cache takes an accuracy target (the agreement of reused answers "
                            f"with the engine's own), e.g. sf.Target(accuracy=0.95); got {value!r}")
        return CalibratedThreshold(value)
    if isinstance(value, (int, float)) and 0 < value <= 1:
        return float(value)
    raise PlanError(f"{where}: semantic_cache must be True (a threshold calibrated for the step), "
                    f"sf.Target(accuracy=..., confidence=...) (calibrated for that target), False, or a fixed "
                    f"similarity threshold in (0, 1], got {value!r}")


def _labels(labels: Any) -> ChoiceSpec:
    """The label set of a classify: at least two non-empty strings, stripped (see ChoiceSpec)."""
    if isinstance(labels, str) or not isinstance(labels, Sequence):
        raise PlanError(
            f"semantic.classify: labels must be a list of strings such as ['YES', 'NO'], got {labels!r}"
        )
    try:
        return ChoiceSpec(tuple(labels))
    except PlanError as exc:
        raise PlanError(f"semantic.classify: {exc}") from None



def input_plan(value: Any, where: str) -> Node:
    """The plan of another input of a verb (a join's right side): a semframe lazy frame, a
    polars DataFrame or LazyFrame, or a pandas DataFrame."""
    import polars as pl

    plan = getattr(value, "plan", None)  # a SemLazyFrame (not imported here: it imports the verbs)
    if isinstance(plan, Node):
        return plan
    if isinstance(value, (pl.LazyFrame, pl.DataFrame)):
        return Scan(Source.from_data(value))
    if type(value).__module__.startswith("pandas") and type(value).__name__ == "DataFrame":
        try:
            frame = pl.from_pandas(value.reset_index(drop=True))
        except Exception as exc:  # pyarrow/polars conversion errors vary by dtype
            raise PlanError(f"{where}: cannot read the pandas DataFrame: {exc}") from exc
        return Scan(Source.from_data(frame, "pandas DataFrame"))
    raise PlanError(f"{where}: expected a DataFrame or LazyFrame (polars, pandas or semframe), "
                    f"got {type(value).__name__}")
