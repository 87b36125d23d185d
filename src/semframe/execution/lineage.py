"""Row-level lineage and per-step metrics of a run.

Every output cell of every semantic step gets one lineage record: the input row it came from
(``row_id``, stable across filters, sorts and heads), the step, the request (by key; the prompt
text is kept once per distinct request), the model, how it was answered, the raw and parsed
answer, the tokens and the time. Records are appended in columnar lists, so recording costs a
few list appends per row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import polars as pl

#: How a cell was answered.
SOURCES = ("engine", "dedup", "exact_cache", "semantic_cache", "skipped")

LINEAGE_SCHEMA = {
    "row_id": pl.UInt32,
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


@dataclass
class LineageRecorder:
    """Collects lineage records and distinct prompts during a run."""

    enabled: bool = True
    _cols: dict[str, list[Any]] = field(default_factory=lambda: {k: [] for k in LINEAGE_SCHEMA})
    prompts: dict[str, str] = field(default_factory=dict)

    def record(self, step: int, operator: str, column: str | None, model: str,
               row_ids: list[int], outcomes: list[Outcome]) -> None:
        if not self.enabled:
            return
        c = self._cols
        n = len(row_ids)
        c["row_id"].extend(row_ids)
        c["step"].extend([step] * n)
        c["operator"].extend([operator] * n)
        c["column"].extend([column] * n)
        c["model"].extend([model] * n)
        for o in outcomes:
            c["request_key"].append(o.request_key)
            c["source"].append(o.source)
            c["source_row_id"].append(o.source_row_id)
            c["similarity"].append(o.similarity)
            c["raw_output"].append(o.raw_output)
            c["value"].append(_value_text(o.value))
            c["error"].append(o.error)
            c["finish_reason"].append(o.finish_reason)
            c["prompt_tokens"].append(o.prompt_tokens)
            c["cached_prompt_tokens"].append(o.cached_prompt_tokens)
            c["output_tokens"].append(o.output_tokens)
            c["latency_s"].append(o.latency_s)

    def remember_prompt(self, key: str, text: str) -> None:
        if self.enabled and key not in self.prompts:
            self.prompts[key] = text

    def to_frame(self) -> pl.DataFrame:
        return pl.DataFrame(self._cols, schema=LINEAGE_SCHEMA)

    def prompts_frame(self) -> pl.DataFrame:
        return pl.DataFrame(
            {"request_key": list(self.prompts), "prompt": list(self.prompts.values())},
            schema={"request_key": pl.String, "prompt": pl.String},
        )


def _value_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)
