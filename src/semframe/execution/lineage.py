"""Row-level lineage and per-step metrics of a run.

Every output cell of every semantic step gets one lineage record: the input row it came from
(``row_id``, its position in the scanned input, stable across filters, sorts and heads; for a
row made of several input rows -- a join's pair, a group -- ``row_id`` is null and
``provenance`` names them as JSON, e.g. ``{"left": 3, "right": 7}`` or ``[0, 4, 9]``), the step, the request (by key; the prompt
text is kept once per distinct request), the model, how it was answered, the raw and parsed
answer, the tokens and the time. Records are appended in columnar lists, so recording costs a
few list appends per row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import polars as pl

if TYPE_CHECKING:
    from semframe.engines.base import Request

#: How a cell was answered.
SOURCES = ("engine", "dedup", "exact_cache", "semantic_cache", "skipped")

LINEAGE_SCHEMA = {
    "row_id": pl.UInt32,
    "provenance": pl.String,
    "step": pl.Int32,
    "operator": pl.String,
    "column": pl.String,
    "request_key": pl.String,
    "model": pl.String,
    "source": pl.String,
    "source_row_id": pl.UInt32,
    "similarity": pl.Float64,
    "raw_output": pl.String,
    "value": pl.String,
    "error": pl.String,
    "finish_reason": pl.String,
    "prompt_tokens": pl.Int64,
    "cached_prompt_tokens": pl.Int64,
    "output_tokens": pl.Int64,
    "latency_s": pl.Float64,
}


@dataclass(frozen=True)
class Outcome:
    """How one row of one step was answered."""

    value: Any
    source: str
    request_key: str | None = None
    raw_output: str | None = None
    error: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    output_tokens: int = 0
    latency_s: float = 0.0
    source_row_id: int | None = None
    similarity: float | None = None


@dataclass
class StepMetrics:
    """What one semantic step did in a run."""

    step: int
    operator: str
    column: str | None
    rows_in: int = 0
    rows_out: int = 0
    engine_requests: int = 0
    engine_batches: int = 0
    engine_retries: int = 0  # engine calls repeated after the engine raised
    engine_failures: int = 0  # requests the engine could not answer even alone (null, with the error)
    dedup_hits: int = 0
    exact_cache_hits: int = 0
    semantic_cache_hits: int = 0
    skipped: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    output_tokens: int = 0
    engine_seconds: float = 0.0
    seconds: float = 0.0

    def add(self, outcome: Outcome) -> None:
        src = outcome.source
        if src == "engine":
            self.engine_requests += 1
            self.prompt_tokens += outcome.prompt_tokens
            self.cached_prompt_tokens += outcome.cached_prompt_tokens
            self.output_tokens += outcome.output_tokens
            self.engine_seconds += outcome.latency_s
        elif src == "dedup":
            self.dedup_hits += 1
        elif src == "exact_cache":
            self.exact_cache_hits += 1
        elif src == "semantic_cache":
            self.semantic_cache_hits += 1
        else:
            self.skipped += 1
        self.errors += outcome.error is not None and src != "skipped"

    def add_all(self, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            self.add(outcome)


#: The Outcome fields that become lineage columns, in LINEAGE_SCHEMA order.
_OUTCOME_FIELDS = ("request_key", "source", "source_row_id", "similarity", "raw_output", "value", "error",
                   "finish_reason", "prompt_tokens", "cached_prompt_tokens", "output_tokens", "latency_s")
_fields_of = attrgetter(*_OUTCOME_FIELDS)


@dataclass
class LineageRecorder:
    """Collects lineage records and distinct prompts during a run.

    Recording keeps one tuple per cell (a single C-level attribute fetch); the columns are
    built once, by :meth:`to_frame`, so lineage costs a few percent of a run's own Python work
    (see ``benchmarks/lineage_overhead.py``).
    """

    enabled: bool = True
    _steps: list[tuple[int, str, str | None, str, pl.Series, list[tuple[Any, ...]]]] = field(default_factory=list)
    #: request key -> (prompt prefix shared by a step's requests, the row's own text)
    _prompts: dict[str, tuple[str, str]] = field(default_factory=dict)

    def record(self, step: int, operator: str, column: str | None, model: str,
               ids: pl.Series, outcomes: list[Outcome]) -> None:
        """One record per row: ``ids`` is the rows' provenance (see :mod:`.provenance`)."""
        if self.enabled:
            self._steps.append((step, operator, column, model, ids, list(map(_fields_of, outcomes))))

    def remember_prompt(self, request: Request) -> None:
        """Keep the request's prompt once per key (its shared prefix is kept once, not per row)."""
        if self.enabled and request.key not in self._prompts:
            self._prompts[request.key] = request.prompt_parts()

    @property
    def prompts(self) -> dict[str, str]:
        """request key -> the full prompt text."""
        return {k: prefix + text for k, (prefix, text) in self._prompts.items()}

    def to_frame(self) -> pl.DataFrame:
        if not self._steps:
            return pl.DataFrame(schema=LINEAGE_SCHEMA)
        cols: dict[str, Any] = {k: [] for k in LINEAGE_SCHEMA if k not in ("row_id", "provenance")}
        row_ids: list[pl.Series] = []
        composite: list[pl.Series] = []
        for step, operator, column, model, ids, rows in self._steps:
            n = len(ids)
            scalar = ids.dtype == pl.UInt32
            row_ids.append(ids if scalar else pl.Series([None] * n, dtype=pl.UInt32))
            composite.append(pl.Series([None] * n, dtype=pl.String) if scalar else _provenance_text(ids))
            cols["step"].extend([step] * n)
            cols["operator"].extend([operator] * n)
            cols["column"].extend([column] * n)
            cols["model"].extend([model] * n)
            for name, values in zip(_OUTCOME_FIELDS, zip(*rows)):
                cols[name].extend(values)
        cols["value"] = _values_text(cols["value"])
        cols["row_id"] = pl.concat(row_ids).alias("row_id")
        cols["provenance"] = pl.concat(composite).alias("provenance")
        return pl.DataFrame({k: cols[k] for k in LINEAGE_SCHEMA}, schema=LINEAGE_SCHEMA)

    def prompts_frame(self) -> pl.DataFrame:
        parts = self._prompts.values()
        frame = pl.DataFrame(
            {"request_key": list(self._prompts), "prefix": [p for p, _ in parts], "text": [t for _, t in parts]},
            schema={"request_key": pl.String, "prefix": pl.String, "text": pl.String},
        )
        return frame.select("request_key", pl.concat_str("prefix", "text").alias("prompt"))


def _provenance_text(ids: pl.Series) -> pl.Series:
    """Composite provenance (pairs, groups) as JSON text, one per row."""
    if ids.dtype == pl.Null:
        return pl.Series([None] * len(ids), dtype=pl.String)
    if ids.dtype == pl.Object:
        return pl.Series([None if v is None else json.dumps(v, default=str) for v in ids], dtype=pl.String)
    return pl.Series([None if v is None else json.dumps(v, default=str) for v in ids.to_list()], dtype=pl.String)


def _values_text(values: list[Any]) -> list[str | None] | pl.Series:
    """Parsed values as text: strings as they are, everything else as JSON (vectorized for structs)."""
    if all(v is None or type(v) is str for v in values):
        return values
    if all(v is None or type(v) is dict for v in values):
        try:
            return pl.Series("value", values, strict=False).struct.json_encode()
        except (pl.exceptions.PolarsError, TypeError, ValueError):
            pass
    return [_value_text(v) for v in values]


def _value_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)
