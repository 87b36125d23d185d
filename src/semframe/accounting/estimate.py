"""What a plan is expected to cost before it runs: the estimate's figures and how they print.

The estimate itself is made by walking the plan's physical operators
(:func:`semframe.physical.executor.estimate_plan`, what ``explain(estimate=True)`` and
``estimate()`` call), the same objects the run executes:

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
from dataclasses import dataclass, field

import polars as pl

from semframe.accounting.prices import TOKEN_PRICES, MachinePrice, format_usd
from semframe.accounting.throughput import Throughput


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

    def step_seconds(self, s: StepEstimate) -> tuple[float, float]:
        """One step's (low, high) engine seconds."""
        return (self.throughput.seconds(s.prompt_tokens_low, s.output_tokens_low),
                self.throughput.seconds(s.prompt_tokens_high, s.output_tokens_high))

    def step_local_usd(self, s: StepEstimate) -> tuple[float, float]:
        """One step's (low, high) local cost."""
        lo, hi = self.step_seconds(s)
        return self.machine.cost(lo), self.machine.cost(hi)

    def table(self) -> str:
        """The steps as a text table: rows, skipped, engine calls, tokens, time and cost of each."""
        header = ("step", "operator", "rows", "skipped", "engine calls", "prompt tok/call", "output tok/call",
                  "tokens", "time", "cost")
        rows = []
        for s in self.steps:
            name = s.operator + (f" -> {s.column}" if s.column else "")
            o_lo, _, o_hi = s.output_tokens_per_call
            t_lo, t_hi = self.step_seconds(s)
            u_lo, u_hi = self.step_local_usd(s)
            rows.append((
                str(s.step), name, _rng(s.rows_high, s.rows_high) if s.rows_exact else _rng(s.rows_low, s.rows_high),
                f"{s.skipped:,}" if s.rows_exact or not s.skipped else f"<={s.skipped:,}",
                _rng(s.calls_low, s.calls_high),
                f"~{s.prompt_tokens_per_call:,.0f}", _rng(o_lo, o_hi),
                _rng(s.prompt_tokens_low + s.output_tokens_low, s.prompt_tokens_high + s.output_tokens_high),
                _secs_rng(t_lo, t_hi), _usd_rng(u_lo, u_hi),
            ))
        return text_table(header, rows, left=(1,))

    def __str__(self) -> str:
        lines = [f"ESTIMATE (before running; tokens by {self.tokenizer})"]
        if not self.steps:
            lines.append("  no semantic steps: no engine calls")
            return "\n".join(lines)
        lines.extend("  " + line for line in self.table().splitlines())
        (c_lo, c_hi), (p_lo, p_hi), (o_lo, o_hi) = self.calls, self.prompt_tokens, self.output_tokens
        t_lo, t_hi = self.seconds
        u_lo, u_hi = self.local_usd
        skipped = sum(s.skipped for s in self.steps if s.rows_exact)
        skip = f"; {skipped:,} null/empty skipped" if skipped else ""
        lines.append(f"  total: {_rng(c_lo, c_hi)} engine calls, {_rng(p_lo, p_hi)} prompt tokens, "
                     f"{_rng(o_lo, o_hi)} output tokens{skip}")
        lines.append(f"  time: {_secs(t_lo)} - {_secs(t_hi)} ({self.throughput.basis})")
        lines.append(f"  cost: {format_usd(u_lo)} - {format_usd(u_hi)} local ({self.machine.name} at ${self.machine.hourly_usd:g}/h)")
        api = "; ".join(f"{m} {format_usd(lo)} - {format_usd(hi)}" for m, (lo, hi) in self.api_usd().items())
        if api:
            lines.append(f"  same tokens as API calls: {api}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        text = str(self).splitlines()
        body = "<br>".join(html.escape(line.strip()) for line in text if line.startswith(("  total", "  time",
                                                                                          "  cost", "  same", "  note")))
        if not self.steps:
            body = html.escape(text[-1].strip())
        return f"<div><p><b>{html.escape(text[0])}</b></p>{self.to_frame()._repr_html_()}<p>{body}</p></div>"


def text_table(header: tuple[str, ...], rows: list[tuple[str, ...]], left: tuple[int, ...] = (0,)) -> str:
    """A plain text table: the columns in ``left`` left-aligned, the others right-aligned.

    >>> print(text_table(("name", "n"), [("a", "1"), ("bb", "22")]))
    name   n
    a      1
    bb    22
    """
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]

    def fmt(r: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    return "\n".join(fmt(r) for r in (header, *rows))


def _secs_rng(lo: float, hi: float) -> str:
    a, b = _secs(lo), _secs(hi)
    return a if a == b else f"{a} - {b}"


def _usd_rng(lo: float, hi: float) -> str:
    a, b = format_usd(lo), format_usd(hi)
    return a if a == b else f"{a} - {b}"


def _rng(lo: float, hi: float) -> str:
    return f"{lo:,.0f}" if round(lo) == round(hi) else f"{lo:,.0f}-{hi:,.0f}"


def _secs(s: float) -> str:
    if s < 120:
        return f"{s:.3g} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"
