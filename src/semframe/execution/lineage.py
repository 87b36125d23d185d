"""Row-level lineage and per-step metrics of a run.

Every output cell of every semantic step gets one lineage record: the input row it came from
(``row_id``, its position in the scanned input, stable across filters, sorts and heads; for a
row made of several input rows -- a join's pair, a group -- ``row_id`` is null and
``provenance`` names them as JSON, e.g. ``{"left": 3, "right": 7}`` or ``[0, 4, 9]``), the step, the request (by key; the prompt
text is kept once per distinct request), the model, how it was answered, the raw and parsed
answer, the label probabilities of a choice (``probabilities``: a list of ``{label,
probability}`` in label order, where the engine gave them; null otherwise), the tokens and the
time. Records are appended in columnar lists, so recording costs a few list appends per row.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import polars as pl

if TYPE_CHECKING:
    from semframe.engines.base import Request

#: How a cell was answered.
SOURCES = ("engine", "dedup", "exact_cache", "semantic_cache", "skipped",
           # approximate steps (semframe.physical.approx): a proxy's or a cheaper engine's answer, an oracle
           # answer drawn for calibration
           "proxy", "cascade", "calibration")

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
    "probabilities": pl.List(pl.Struct({"label": pl.String, "probability": pl.Float64})),
    "error": pl.String,
    "finish_reason": pl.String,
    "prompt_tokens": pl.Int64,
    "cached_prompt_tokens": pl.Int64,
    "output_tokens": pl.Int64,
    "latency_s": pl.Float64,
    "attempts": pl.Int32,
    "note": pl.String,
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
    probabilities: dict[str, float] | None = None
    #: The answer's share of the engine's wall time, where it differs from ``latency_s`` (an
    #: engine with many requests in flight); None: ``latency_s``.
    engine_s: float | None = None
    #: Engine calls made for this cell (retries and a re-ask included); 0 for a reused answer.
    attempts: int = 0
    #: What the engine did beyond one plain call (e.g. a re-ask), else None.
    note: str | None = None


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
    cache_rejects: int = 0  # cached answers that no longer fit their spec (asked again)
    dedup_hits: int = 0
    exact_cache_hits: int = 0
    semantic_cache_hits: int = 0
    skipped: int = 0
    proxy_answers: int = 0  # cells an approximate step's proxy answered: oracle calls saved
    errors: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    output_tokens: int = 0
    engine_seconds: float = 0.0
    seconds: float = 0.0
    #: The per-token prices (a TokenPrice) of the engine that answered the step, for an engine
    #: billed by the token; None: machine-hour pricing (a local engine).
    pricing: Any = None
    #: What the operator reports beyond the counts (a join: its algorithm, the blocking audit's
    #: estimated recall); not a column of ``RunResult.metrics``.
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def token_usd(self) -> float:
        """What the step's engine tokens cost at its per-token prices (0 for machine-hour pricing)."""
        if self.pricing is None:
            return 0.0
        return self.pricing.cost(prompt_tokens=self.prompt_tokens, output_tokens=self.output_tokens,
                                 cached_prompt_tokens=self.cached_prompt_tokens)

    def add(self, outcome: Outcome) -> None:
        src = outcome.source
        if src == "engine":
            self.engine_requests += 1
            self.prompt_tokens += outcome.prompt_tokens
            self.cached_prompt_tokens += outcome.cached_prompt_tokens
            self.output_tokens += outcome.output_tokens
            self.engine_seconds += outcome.latency_s if outcome.engine_s is None else outcome.engine_s
        elif src == "dedup":
            self.dedup_hits += 1
        elif src == "exact_cache":
            self.exact_cache_hits += 1
        elif src == "semantic_cache":
            self.semantic_cache_hits += 1
        elif src in ("proxy", "cascade"):
            self.proxy_answers += 1
        else:
            self.skipped += 1
        self.errors += outcome.error is not None and src != "skipped"

    def add_all(self, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            self.add(outcome)


#: The Outcome fields that become lineage columns, in LINEAGE_SCHEMA order.
_OUTCOME_FIELDS = ("request_key", "source", "source_row_id", "similarity", "raw_output", "value", "probabilities",
                   "error", "finish_reason", "prompt_tokens", "cached_prompt_tokens", "output_tokens", "latency_s",
                   "attempts", "note")
_fields_of = attrgetter(*_OUTCOME_FIELDS)


@dataclass
class LineageRecorder:
    """Collects lineage records and the prompts asked during a run, with flat memory.

    Recording keeps one tuple per cell (a single C-level attribute fetch). Every ``spill_rows``
    cells the records so far become a columnar part written to a Parquet file in a temporary
    directory (removed when the recorder is garbage-collected), so a run of millions of rows
    holds at most one part in memory; :meth:`to_frame` reads the parts back when lineage is
    asked for. Prompts are kept as (shared prefix, row text) pairs, spilled the same way.
    """

    enabled: bool = True
    spill_rows: int = 50_000
    _steps: list[tuple[int, str, str | None, str, pl.Series, list[tuple[Any, ...]]]] = field(default_factory=list)
    _pending: int = 0
    _parts: list[Path] = field(default_factory=list)
    #: (request key, prompt prefix shared by a step's requests, the row's own text)
    _prompt_rows: list[tuple[str, str, str]] = field(default_factory=list)
    _prompt_parts: list[Path] = field(default_factory=list)
    _dir: Path | None = None

    def record(self, step: int, operator: str, column: str | None, model: str,
               ids: pl.Series, outcomes: list[Outcome]) -> None:
        """One record per row: ``ids`` is the rows' provenance (see :mod:`.provenance`)."""
        if self.enabled:
            self._steps.append((step, operator, column, model, ids, list(map(_fields_of, outcomes))))
            self._pending += len(ids)
            if self._pending >= self.spill_rows:
                self._parts.append(self._write(self._build(), "lineage"))
                self._steps, self._pending = [], 0

    def remember_prompt(self, request: Request) -> None:
        """Keep the request's prompt (its shared prefix is one object for a whole step)."""
        if self.enabled:
            self._prompt_rows.append((request.key, *request.prompt_parts()))
            if len(self._prompt_rows) >= self.spill_rows:
                self._prompt_parts.append(self._write(self._prompts_part(), "prompts"))
                self._prompt_rows = []

    @property
    def prompts(self) -> dict[str, str]:
        """request key -> the full prompt text."""
        frame = self.prompts_frame()
        return dict(zip(frame["request_key"], frame["prompt"]))

    def scan(self) -> pl.LazyFrame:
        """Every record so far as a LazyFrame over the spilled parts (nothing is read yet)."""
        frames = [pl.scan_parquet(p) for p in self._parts]
        if self._steps or not frames:
            frames.append(self._build().lazy() if self._steps else pl.LazyFrame(schema=LINEAGE_SCHEMA))
        return pl.concat(frames) if len(frames) > 1 else frames[0]

    def to_frame(self) -> pl.DataFrame:
        """Every record so far, one row per cell."""
        frames = [pl.read_parquet(p) for p in self._parts]
        if self._steps:
            frames.append(self._build())
        if not frames:
            return pl.DataFrame(schema=LINEAGE_SCHEMA)
        return pl.concat(frames) if len(frames) > 1 else frames[0]

    def prompts_frame(self) -> pl.DataFrame:
        """``request_key`` -> full prompt text, one row per distinct request."""
        frames = [pl.read_parquet(p) for p in self._prompt_parts] + [self._prompts_part()]
        frame = pl.concat(frames) if len(frames) > 1 else frames[0]
        return frame.unique("request_key", keep="first", maintain_order=True)

    # ------------------------------------------------------------------ internals

    def _build(self) -> pl.DataFrame:
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
        cols["probabilities"] = _probabilities_column(cols["probabilities"])
        cols["row_id"] = pl.concat(row_ids).alias("row_id")
        cols["provenance"] = pl.concat(composite).alias("provenance")
        return pl.DataFrame({k: cols[k] for k in LINEAGE_SCHEMA}, schema=LINEAGE_SCHEMA)

    def _prompts_part(self) -> pl.DataFrame:
        rows = self._prompt_rows
        frame = pl.DataFrame(
            {"request_key": [r[0] for r in rows], "prefix": [r[1] for r in rows], "text": [r[2] for r in rows]},
            schema={"request_key": pl.String, "prefix": pl.String, "text": pl.String},
        )
        return frame.select("request_key", pl.concat_str("prefix", "text").alias("prompt"))

    def _write(self, frame: pl.DataFrame, kind: str) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="semframe-lineage-"))
            weakref.finalize(self, shutil.rmtree, str(self._dir), True)
        path = self._dir / f"{kind}-{len(self._parts) + len(self._prompt_parts):05d}.parquet"
        frame.write_parquet(path, compression="lz4")
        return path


def _provenance_text(ids: pl.Series) -> pl.Series:
    """Composite provenance (pairs, groups) as JSON text, one per row."""
    if ids.dtype == pl.Null:
        return pl.Series([None] * len(ids), dtype=pl.String)
    if ids.dtype == pl.Object:
        return pl.Series([None if v is None else json.dumps(v, default=str) for v in ids], dtype=pl.String)
    return pl.Series([None if v is None else json.dumps(v, default=str) for v in ids.to_list()], dtype=pl.String)


def _probabilities_column(values: list[dict[str, float] | None]) -> pl.Series:
    """Label probabilities as lineage stores them: ``[{label, probability}, ...]`` per cell."""
    dtype = LINEAGE_SCHEMA["probabilities"]
    if all(v is None for v in values):
        return pl.Series("probabilities", [None] * len(values), dtype=dtype)
    return pl.Series("probabilities", [None if v is None else [{"label": k, "probability": p} for k, p in v.items()]
                                       for v in values], dtype=dtype)


def _values_text(values: list[Any]) -> list[str | None] | pl.Series:
    """Parsed values as text: strings as they are, everything else as JSON, a missing value
    (a skipped or failed row) as a null, never the text ``'null'``.

    Struct values are encoded in one vectorized pass where they all have the same keys and each
    key one Python type (the values of one step do); otherwise each is ``json.dumps``-ed.
    """
    if all(v is None or type(v) is str for v in values):
        return values
    if _uniform_dicts(values):
        try:
            series = pl.Series("value", values, strict=True)
            encoded = series.struct.json_encode()
            if series.null_count():
                encoded = pl.select(pl.when(series.is_not_null()).then(encoded)).to_series().alias("value")
            return encoded
        except (pl.exceptions.PolarsError, TypeError, ValueError, OverflowError):
            pass
    return [_value_text(v) for v in values]


def _uniform_dicts(values: list[Any]) -> bool:
    """Whether every value is None or a dict with the same keys, each key holding one type (or None)."""
    keys = None
    types: dict[str, type] = {}
    for v in values:
        if v is None:
            continue
        if type(v) is not dict:
            return False
        if keys is None:
            keys = v.keys()
            if not keys:
                return False
        elif v.keys() != keys:
            return False
        for k, x in v.items():
            if x is not None and types.setdefault(k, type(x)) is not type(x):
                return False
    return keys is not None


def _value_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)
