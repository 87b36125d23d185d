"""Estimate a plan's engine calls, tokens, time and cost before it runs.

Walks the optimized plan from the scan up, the way the executor will run it:

- Rows: the relational part below the semantic steps is counted exactly with polars (for a
  file scan, only the columns the prompts read are collected). Above a semantic ``filter`` (or
  a relational filter that reads a model's answer) the number of rows is unknown: the estimate
  gives the most (the filter keeps every row) and an expected count at ``filter_selectivity``.
- Engine calls: each step's template is rendered for every row whose inputs are known (with
  polars, no per-row Python); rows with null or empty input are skipped, and a step that dedupes
  asks each distinct prompt once, as the run will.
- Prompt tokens: a sample of distinct rendered prompts is turned into requests and counted by
  the engine's tokenizer if an engine object exists, else at about 4 characters per token (the
  estimate says which). Nothing starts an engine to explain a plan.
- Output tokens: a range per output spec (see :func:`semframe.accounting.tokens.output_tokens`).
- Time and cost: tokens through :mod:`semframe.accounting.throughput` at the machine's hourly
  price, and priced on each registered API model.

Answers already in the persistent cache are not subtracted: a rerun costs less than estimated.
"""

from __future__ import annotations

import html
import math
import random
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from semframe.accounting.prices import TOKEN_PRICES, MachinePrice, format_usd, machine_price
from semframe.accounting.throughput import Throughput, throughput_for
from semframe.accounting.tokens import output_tokens, request_prompt_tokens, token_counter
from semframe.execution.executor import relational_frame
from semframe.execution.prompts import build_request, shared_text
from semframe.execution.semantic import render_exprs
from semframe.plan.nodes import ROW_ID, Filter, Head, Node, Relational, SemanticStep, SemFilter, walk

#: Distinct prompts tokenized per step.
SAMPLE_PROMPTS = 256


@dataclass(frozen=True)
class StepEstimate:
    """What one semantic step is expected to ask.

    ``*_low`` figures assume the expected rows (semantic filters keeping ``filter_selectivity``)
    and the shortest answers; ``*_high`` figures assume every row reaches the step and every
    answer runs to ``max_tokens``.
    """

    step: int
    operator: str
    column: str | None
    rows_low: int
    rows_high: int
    skipped: int
    calls_low: int
    calls_high: int
    rows_exact: bool
    prompt_tokens_per_call: float
    output_tokens_per_call: tuple[float, float, float]  # low, typical, high

    @property
    def prompt_tokens_low(self) -> float:
        return self.calls_low * self.prompt_tokens_per_call

    @property
    def prompt_tokens_high(self) -> float:
        return self.calls_high * self.prompt_tokens_per_call

    @property
    def output_tokens_low(self) -> float:
        return self.calls_low * self.output_tokens_per_call[0]

    @property
    def output_tokens_high(self) -> float:
        return self.calls_high * self.output_tokens_per_call[2]


@dataclass(frozen=True)
class PlanEstimate:
    """The estimate for a whole plan; ``str()`` is what ``explain()`` prints.

    Examples
    --------
    >>> import polars as pl, semframe as sf
    >>> df = pl.DataFrame({"title": ["Waterloo", "Soup", "Waterloo", None]})
    >>> est = df.lazy().semantic.classify("title", ["YES", "NO"]).estimate()
    >>> est.steps[0].calls_high, est.steps[0].skipped
    (2, 1)
    >>> est.tokenizer
    'heuristic (~4 characters per token)'
    """

    steps: tuple[StepEstimate, ...]
    machine: MachinePrice
    throughput: Throughput
    tokenizer: str
    filter_selectivity: float
    notes: tuple[str, ...] = field(default=())

    # ------------------------------------------------------------------ totals

    @property
    def calls(self) -> tuple[int, int]:
        return sum(s.calls_low for s in self.steps), sum(s.calls_high for s in self.steps)

    @property
    def prompt_tokens(self) -> tuple[float, float]:
        return sum(s.prompt_tokens_low for s in self.steps), sum(s.prompt_tokens_high for s in self.steps)

    @property
    def output_tokens(self) -> tuple[float, float]:
        return sum(s.output_tokens_low for s in self.steps), sum(s.output_tokens_high for s in self.steps)

    @property
    def seconds(self) -> tuple[float, float]:
        (p_lo, p_hi), (o_lo, o_hi) = self.prompt_tokens, self.output_tokens
        return self.throughput.seconds(p_lo, o_lo), self.throughput.seconds(p_hi, o_hi)

    @property
    def local_usd(self) -> tuple[float, float]:
        lo, hi = self.seconds
        return self.machine.cost(lo), self.machine.cost(hi)

    def api_usd(self) -> dict[str, tuple[float, float]]:
        """Model -> (low, high) USD for the same tokens on each registered API price."""
        (p_lo, p_hi), (o_lo, o_hi) = self.prompt_tokens, self.output_tokens
        return {m: (p.cost(prompt_tokens=p_lo, output_tokens=o_lo), p.cost(prompt_tokens=p_hi, output_tokens=o_hi))
                for m, p in TOKEN_PRICES.items()}

    def to_frame(self) -> pl.DataFrame:
        """One row per semantic step."""
        return pl.DataFrame(
            [{
                "step": s.step, "operator": s.operator, "column": s.column,
                "rows_low": s.rows_low, "rows_high": s.rows_high, "rows_exact": s.rows_exact,
                "skipped": s.skipped, "calls_low": s.calls_low, "calls_high": s.calls_high,
                "prompt_tokens_per_call": round(s.prompt_tokens_per_call, 1),
                "output_tokens_low": s.output_tokens_low, "output_tokens_high": s.output_tokens_high,
            } for s in self.steps],
            schema={"step": pl.Int32, "operator": pl.String, "column": pl.String, "rows_low": pl.Int64,
                    "rows_high": pl.Int64, "rows_exact": pl.Boolean, "skipped": pl.Int64, "calls_low": pl.Int64,
                    "calls_high": pl.Int64, "prompt_tokens_per_call": pl.Float64,
                    "output_tokens_low": pl.Float64, "output_tokens_high": pl.Float64},
        )

    # ------------------------------------------------------------------ display

    def __str__(self) -> str:
        lines = [f"ESTIMATE (before running; tokens by {self.tokenizer})"]
        for s in self.steps:
            name = f"{s.operator}" + (f" -> {s.column}" if s.column else "")
            rows = f"{s.rows_high:,} rows" if s.rows_exact else f"{_rng(s.rows_low, s.rows_high)} rows"
            skip = f", {s.skipped:,} null/empty skipped" if s.skipped and s.rows_exact else ""
            o_lo, _, o_hi = s.output_tokens_per_call
            lines.append(
                f"  step {s.step} {name}: {rows}{skip} -> {_rng(s.calls_low, s.calls_high)} engine calls; "
                f"~{s.prompt_tokens_per_call:,.0f} prompt + {_rng(o_lo, o_hi)} output tokens per call"
            )
        if not self.steps:
            lines.append("  no semantic steps: no engine calls")
            return "\n".join(lines)
        (c_lo, c_hi), (p_lo, p_hi), (o_lo, o_hi) = self.calls, self.prompt_tokens, self.output_tokens
        t_lo, t_hi = self.seconds
        u_lo, u_hi = self.local_usd
        lines.append(f"  total: {_rng(c_lo, c_hi)} engine calls, {_rng(p_lo, p_hi)} prompt tokens, "
                     f"{_rng(o_lo, o_hi)} output tokens")
        lines.append(f"  time: {_secs(t_lo)} - {_secs(t_hi)} ({self.throughput.basis})")
        lines.append(f"  cost: {format_usd(u_lo)} - {format_usd(u_hi)} local ({self.machine.name} at ${self.machine.hourly_usd:g}/h)")
        api = "; ".join(f"{m} {format_usd(lo)} - {format_usd(hi)}" for m, (lo, hi) in self.api_usd().items())
        if api:
            lines.append(f"  same tokens as API calls: {api}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        text = str(self).splitlines()
        body = "<br>".join(html.escape(line.strip()) for line in text[len(self.steps) + 1:])
        return f"<div><p><b>{html.escape(text[0])}</b></p>{self.to_frame()._repr_html_()}<p>{body}</p></div>"


def _rng(lo: float, hi: float) -> str:
    return f"{lo:,.0f}" if round(lo) == round(hi) else f"{lo:,.0f}-{hi:,.0f}"


def _secs(s: float) -> str:
    if s < 120:
        return f"{s:.3g} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


# --------------------------------------------------------------------------- the walk


@dataclass
class _State:
    """What is known at one point of the plan while walking up from the scan."""

    frame: pl.DataFrame | None  # the rows at this point, or a superset of them when not ``exact``
    rows_low: float
    rows_high: float
    exact: bool = True  # False once a step with unknown selectivity ran
    typical_tokens: dict[str, float] = field(default_factory=dict)  # model-written column -> tokens


def estimate_plan(plan: Node, engine: Any = None, *, filter_selectivity: float = 0.5,
                  sample: int = SAMPLE_PROMPTS) -> PlanEstimate:
    """Estimate an (optimized) plan. ``engine`` only counts tokens; it is never asked anything.

    Parameters
    ----------
    plan
        The plan as it will run (after ``optimize``).
    engine
        An existing engine whose ``count_tokens`` to use; None uses ~4 characters per token.
    filter_selectivity
        The fraction of rows a semantic filter is assumed to keep for the low estimate.
    sample
        Distinct prompts tokenized per step.
    """
    if not 0.0 <= filter_selectivity <= 1.0:
        raise ValueError(f"filter_selectivity must be between 0 and 1, got {filter_selectivity!r}")
    count = token_counter(engine)
    chain = list(walk(plan))[::-1]  # scan first
    base_index = max(i for i, n in enumerate(chain) if relational_frame(n) is not None)
    needed = {c for n in chain if isinstance(n, SemanticStep) for c in n.template.columns}
    state = _State(_collect(chain[base_index], needed), 0, 0)
    state.rows_low = state.rows_high = state.frame.height  # type: ignore[union-attr]
    steps: list[StepEstimate] = []
    for node in chain[base_index + 1:]:
        if isinstance(node, SemanticStep):
            steps.append(_estimate_step(node, len(steps), state, engine, count, sample))
            if isinstance(node, SemFilter):
                state.exact = False
                state.rows_low *= filter_selectivity
        elif isinstance(node, Head):
            state.rows_low, state.rows_high = min(state.rows_low, node.n), min(state.rows_high, node.n)
            if state.frame is not None and state.exact:
                state.frame = state.frame.head(node.n)
        elif isinstance(node, Relational):
            _apply_relational(node, state, filter_selectivity)
    machine = machine_price(engine)
    notes = ["answers already in the persistent cache are not subtracted (a rerun costs less)"]
    if engine is not None and not any(callable(getattr(engine, a, None)) for a in ("count_prompt_tokens", "render")):
        notes.append("the chat template's few tokens per message are not counted")
    tokenizer = (f"{getattr(engine, 'model', 'the engine')}'s tokenizer" if engine is not None
                 else "heuristic (~4 characters per token)")
    return PlanEstimate(tuple(steps), machine, throughput_for(engine, machine.kind), tokenizer,
                        filter_selectivity, tuple(notes))


def _collect(base: Node, needed: set[str]) -> pl.DataFrame:
    lf = relational_frame(base)
    assert lf is not None
    names = lf.collect_schema().names()
    cols = [c for c in names if c in needed or c == ROW_ID]
    return lf.select(cols).collect()


def _apply_relational(node: Relational, state: _State, selectivity: float) -> None:
    """Apply a relational step to the known rows if it can run on them, else widen the estimate."""
    if state.frame is not None:
        try:
            state.frame = node.apply(state.frame.lazy()).collect()
            if state.exact:
                state.rows_low = state.rows_high = state.frame.height
            else:  # the frame is a superset of the rows: it bounds them
                state.rows_high = min(state.rows_high, state.frame.height)
                state.rows_low = min(state.rows_low, state.rows_high)
            return
        except pl.exceptions.PolarsError:
            state.frame = None  # it reads a column the model writes, or one not collected
    state.exact = False
    if isinstance(node, Filter):
        state.rows_low *= selectivity


def _estimate_step(step: SemanticStep, index: int, state: _State, engine: Any, count: Any,
                   sample: int) -> StepEstimate:
    known = state.frame is not None and all(c in state.frame.columns for c in step.template.columns)
    max_tokens = step.effective_max_tokens
    out = output_tokens(step.spec, max_tokens, count)
    written = sum(state.typical_tokens.get(c, 0.0) for c in step.template.columns)
    shared = shared_text(step)
    if known:
        texts = _rendered(step, state.frame)  # type: ignore[arg-type]
        valid = texts.drop_nulls()
        skipped = texts.len() - valid.len()
        distinct = valid.unique(maintain_order=True)
        n_calls = distinct.len() if step.dedupe else valid.len()
        exact = state.exact and state.rows_low == state.rows_high == texts.len()
        per_row = n_calls / texts.len() if texts.len() else 0.0
        calls_low = n_calls if exact else round(min(state.rows_low * per_row, n_calls))
        calls_high = n_calls if exact else math.ceil(min(state.rows_high * (valid.len() / max(texts.len(), 1)),
                                                         distinct.len() if step.dedupe else state.rows_high))
        pool = distinct.to_list()
    else:
        # Inputs written by an earlier step: every row is a call, its text is that step's answer.
        skipped, exact = 0, False
        calls_low, calls_high = round(state.rows_low), round(state.rows_high)
        pool = [_placeholder(step, state)] if state.frame is None or state.frame.height else []
    if len(pool) > sample:
        pool = random.Random(0).sample(pool, sample)
    prompt_tokens = (sum(request_prompt_tokens(build_request(step, t, shared), engine) for t in pool) / len(pool)
                     if pool else 0.0) + written
    if step.name is not None:
        state.typical_tokens[step.name] = out.typical
    return StepEstimate(
        step=index, operator=step.operator, column=step.name,
        rows_low=round(state.rows_low), rows_high=round(state.rows_high), skipped=skipped,
        calls_low=calls_low, calls_high=calls_high, rows_exact=exact,
        prompt_tokens_per_call=prompt_tokens, output_tokens_per_call=(out.low, out.typical, out.high),
    )


def _placeholder(step: SemanticStep, state: _State) -> str:
    """The template with known columns' first values and model-written columns empty."""
    first = state.frame.row(0, named=True) if state.frame is not None and state.frame.height else {}
    return step.template.render({c: "" if first.get(c) is None else str(first[c]) for c in step.template.columns})


def _rendered(step: SemanticStep, frame: pl.DataFrame) -> pl.Series:
    """Every row's rendered text (null where the run would skip the row), as the run renders it."""
    text, has_null, all_empty = render_exprs(step, frame.schema)
    return frame.select(pl.when(has_null | all_empty).then(None).otherwise(text).alias("text"))["text"]
