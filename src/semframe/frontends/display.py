"""The drawn plan of ``SemLazyFrame._repr_html_``: the physical operators as a tree, with estimates.

Each operator is a box: what it is (``SEMANTIC CLASSIFY → eu``, ``POLARS QUERY`` with the
relational subtree it runs), the choices the planner made, and -- when every scan is in memory --
what the estimate expects of it: rows in and out, engine calls, tokens, time and cost. The figures
come from walking the very operators drawn, once, as ``estimate()`` does (an estimate reads the
data, so a plan over files is drawn without figures). Below the tree: the estimate's totals and,
folded, the same plan as text (what ``print(plan)`` shows).
"""

from __future__ import annotations

import html
from typing import Any

from semframe import config
from semframe.accounting.estimate import PlanEstimate, StepEstimate, _rng
from semframe.accounting.prices import format_usd, machine_price
from semframe.accounting.throughput import throughput_for
from semframe.accounting.tokens import token_counter
from semframe.execution.context import RunOptions
from semframe.execution.display import from_physical, tree_html
from semframe.physical.base import EstimateContext, EstState, PhysicalOp
from semframe.physical.executor import SAMPLE_PROMPTS
from semframe.physical.planner import render
from semframe.plan.nodes import Node, Scan, walk


def in_memory(plan: Node) -> bool:
    """Whether every scan of ``plan`` reads data already in memory (a DataFrame, or a LazyFrame
    over DataFrames only), so that estimating it for display reads no file and asks no database."""

    def frame_in_memory(source: Any) -> bool:
        if source.in_memory:
            return True
        try:  # polars names every scan it would make of a file or a Python source (DuckDB) "... SCAN"
            return "SCAN" not in source.frame.explain(optimized=False)
        except Exception:
            return False

    return all(frame_in_memory(n.source) for n in walk(plan) if isinstance(n, Scan))


def estimate_ops(root: PhysicalOp, engine: Any, *, filter_selectivity: float = 0.5,
                 sample: int = SAMPLE_PROMPTS) -> tuple[PlanEstimate, dict[int, EstState]]:
    """Estimate the plan under ``root`` as :func:`semframe.physical.executor.estimate_plan` does,
    keeping what each operator yields (by ``id(op)``)."""
    options = getattr(_first_semantic(root), "options", None)
    opts = options if options is not None else RunOptions.resolve(config.settings)
    states: dict[int, EstState] = {}
    for op in root.walk():
        _record(op, states)
    est = EstimateContext(engine=engine, count=token_counter(engine), options=opts,
                          filter_selectivity=filter_selectivity, sample=sample)
    try:
        root.estimate(est)
    finally:
        for op in root.walk():
            op.__dict__.pop("estimate", None)
    machine = machine_price(engine)
    tokenizer = (f"{getattr(engine, 'model', 'the engine')}'s tokenizer" if engine is not None
                 else "heuristic (~4 characters per token)")
    notes = ["answers already in the persistent cache are not subtracted (a rerun costs less)"]
    if engine is not None and not any(callable(getattr(engine, a, None)) for a in ("count_prompt_tokens", "render")):
        notes.append("the chat template's few tokens per message are not counted")
    return (PlanEstimate(tuple(sorted(est.steps, key=lambda s: s.step)), machine,
                         throughput_for(engine, machine.kind), tokenizer, filter_selectivity, tuple(notes)), states)


def _first_semantic(root: PhysicalOp) -> Any:
    return next((op for op in root.walk() if getattr(op, "index", None) is not None), None)


def _record(op: PhysicalOp, states: dict[int, EstState]) -> None:
    inner = op.estimate

    def estimate(est: EstimateContext) -> EstState:
        state = inner(est)
        states[id(op)] = state
        return state

    op.estimate = estimate  # type: ignore[method-assign]


def _rows(state: EstState | None) -> str | None:
    if state is None:
        return None
    text = _rng(state.rows_low, state.rows_high)
    return text if state.exact else f"{text} (est.)"


def _figures(est: PlanEstimate, states: dict[int, EstState]) -> Any:
    steps: dict[int, StepEstimate] = {s.step: s for s in est.steps}

    def figures(op: PhysicalOp) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        index = getattr(op, "index", None)
        s = steps.get(index) if index is not None else None
        if s is not None:
            out.append(("rows in", _rng(s.rows_high, s.rows_high) if s.rows_exact else _rng(s.rows_low, s.rows_high)))
            if s.skipped:
                out.append(("skipped", f"{s.skipped:,}"))
            out.append(("engine calls", _rng(s.calls_low, s.calls_high)))
            out.append(("tokens", "~" + _rng(s.prompt_tokens_low + s.output_tokens_low,
                                             s.prompt_tokens_high + s.output_tokens_high)))
            lo, hi = est.step_local_usd(s)
            out.append(("cost", format_usd(lo) if format_usd(lo) == format_usd(hi)
                        else f"{format_usd(lo)} - {format_usd(hi)}"))
        rows = _rows(states.get(id(op)))
        if rows is not None:
            out.append(("rows out", rows))
        return out

    return figures


def plan_html(header: str, root: PhysicalOp, *, estimate: bool, engine: Any = None) -> str:
    """The drawn plan (see the module docstring); ``estimate`` False draws it without figures."""
    text = f"{header}\n{render(root)}"
    est: PlanEstimate | None = None
    note = ""
    figures: Any = lambda op: []  # noqa: E731
    if estimate:
        try:
            est, states = estimate_ops(root, engine)
            figures = _figures(est, states)
        except Exception as exc:  # a display must never fail: show the plan without figures
            note = f"no estimate: {type(exc).__name__}: {exc}"
    else:
        note = ("no figures: the plan reads files, and showing it reads no data; "
                "call .estimate() or .explain(estimate=True) for rows, calls, tokens and cost")
    tree = from_physical(root, figures)
    footer = []
    if est is not None:
        lines = [line.strip() for line in str(est).splitlines()]
        keep = [line for line in lines[1:] if line.startswith(("total:", "time:", "cost:", "note:", "no semantic"))]
        footer.append(f"<div style='margin-top:4px'><b>{html.escape(lines[0])}</b><br>"
                      + "<br>".join(html.escape(line) for line in keep) + "</div>")
    if note:
        footer.append(f"<div style='color:#666;margin-top:4px'>{html.escape(note)}</div>")
    footer.append(f"<details style='margin-top:4px'><summary>the same plan as text</summary>"
                  f"<pre style='margin:0'>{html.escape(text)}</pre></details>")
    return tree_html(tree, header, subtitle="root on top; each operator's inputs below it (data flows up)",
                     footer="".join(footer))
