"""Measure the semantic cache's fidelity: re-ask the engine for a sample of reused answers.

A semantic hit gives row B the answer the engine gave row A because their input texts are within
the threshold. Whether that was right is measured, not assumed: :func:`audit_semantic_cache` runs
a plan, samples ``k`` of the rows answered by the semantic cache, sends *their own* requests to
the engine (bypassing every cache), and reports how often the fresh answer equals the reused one.

For a fixed threshold (``semantic_cache=0.9``) that is the only evidence there is. A calibrated
step (``semantic_cache=True``) certified its threshold on its first batch; the audit checks the
assumption that carries it to the later batches (see :mod:`semframe.cache.semantic`). The report
says how each step's threshold was set (:attr:`AuditReport.thresholds`).

Examples
--------
>>> import polars as pl, semframe as sf
>>> df = pl.DataFrame({"t": ["The cat sat on the mat.", "The cat sat on the mat!"]})
>>> plan = df.lazy().semantic.classify("t", ["A", "B"], semantic_cache=0.9)
>>> report = audit_semantic_cache(plan, engine=sf.DeterministicEngine(), k=10)  # doctest: +SKIP
>>> report.hits, report.checked                                                  # doctest: +SKIP
(1, 1)
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import polars as pl


@dataclass(frozen=True)
class AuditReport:
    """What an audit found.

    Attributes
    ----------
    hits
        Rows the semantic cache answered in the run.
    checked
        How many of them were re-asked (``min(k, hits)``).
    agreed
        How many fresh answers equal the reused ones.
    details
        One row per checked hit: ``row_id``, ``source_row_id``, ``similarity``, ``text``,
        ``cached``, ``fresh``, ``agree``.
    result
        The audited run (a :class:`~semframe.RunResult`).
    thresholds
        Per step with a semantic cache: how its threshold was set (the step's
        ``notes["semantic_cache"]``: ``mode`` "fixed" or "calibrated", ``threshold`` -- None when a
        calibration certified none --, and a ``summary``).
    """

    hits: int
    checked: int
    agreed: int
    details: pl.DataFrame
    result: Any
    thresholds: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def agreement(self) -> float | None:
        """``agreed / checked`` (None when nothing was checked)."""
        return self.agreed / self.checked if self.checked else None

    def __str__(self) -> str:
        rate = "n/a" if self.agreement is None else f"{self.agreement:.1%}"
        text = (f"semantic cache audit: {self.hits} hits, {self.checked} re-asked, "
                f"{self.agreed} agreed ({rate})")
        how = [f"step {step}: {_threshold_text(t)}" for step, t in sorted(self.thresholds.items())]
        return text + (f"; {', '.join(how)}" if how else "")


def _threshold_text(notes: dict[str, Any]) -> str:
    """How a step's threshold was set, in a few words.

    >>> _threshold_text({"mode": "fixed", "threshold": 0.9}), _threshold_text({"mode": "calibrated", "threshold": None})
    ('fixed threshold 0.9', 'calibrated: no threshold certified')
    """
    t = notes.get("threshold")
    if notes.get("mode") == "fixed":
        return f"fixed threshold {t:g}"
    return "calibrated: no threshold certified" if t is None else f"calibrated threshold {t:.4g}"


def audit_semantic_cache(frame: Any, *, engine: Any = None, k: int = 50, seed: int = 0,
                         **run_options: Any) -> AuditReport:
    """Run ``frame`` and re-ask the engine for ``k`` random semantic-cache hits.

    Parameters
    ----------
    frame
        A lazy plan (:class:`~semframe.SemLazyFrame`) with at least one step that has
        ``semantic_cache`` set.
    engine
        The engine for the run and the re-asks (default: the configured one).
    k
        How many hits to re-ask.
    seed
        Seed of the sample.
    **run_options
        Passed to :meth:`~semframe.SemLazyFrame.run` (``batch_size``, ``cache`` ...).

    Returns
    -------
    AuditReport
        ``report.agreement`` is the share of re-asked hits whose fresh answer equals the reused one.

    Examples
    --------
    >>> import polars as pl, semframe as sf
    >>> plan = pl.DataFrame({"t": ["a b c", "a b c!"]}).lazy().semantic.map("{t}", semantic_cache=0.8)
    >>> print(audit_semantic_cache(plan, engine=sf.DeterministicEngine(), k=5))  # doctest: +SKIP
    semantic cache audit: 1 hits, 1 re-asked, 0 agreed (0.0%)
    """
    from semframe.engines.registry import resolve_engine

    if k < 1:
        raise ValueError(f"k must be a positive number of hits to re-ask, got {k}")
    eng = resolve_engine(engine)
    result = frame.run(eng, **run_options)
    hits = result.semantic_hits
    sample = random.Random(seed).sample(hits, min(k, len(hits)))
    fresh = eng.generate([h.request for h in sample]) if sample else []
    details = pl.DataFrame(
        {
            "row_id": [h.row_id for h in sample],
            "source_row_id": [h.source_row_id for h in sample],
            "similarity": [h.similarity for h in sample],
            "text": [h.text for h in sample],
            "cached": [_show(h.value) for h in sample],
            "fresh": [_show(c.value) for c in fresh],
            "agree": [h.value == c.value for h, c in zip(sample, fresh)],
        },
        schema={"row_id": pl.UInt32, "source_row_id": pl.UInt32, "similarity": pl.Float64, "text": pl.String,
                "cached": pl.String, "fresh": pl.String, "agree": pl.Boolean},
    )
    agreed = int(details["agree"].sum()) if sample else 0
    thresholds = {m.step: m.notes["semantic_cache"] for m in result.step_metrics if "semantic_cache" in m.notes}
    return AuditReport(len(hits), len(sample), agreed, details, result, thresholds)


def _show(value: Any) -> str | None:
    import json

    return value if value is None or isinstance(value, str) else json.dumps(value, default=str)
