"""The executor: runs an (optimized) plan as a stream of polars batches.

Each node becomes an iterator of DataFrames (``_visit_<Node>``). A relational subtree over the
scan runs as one polars LazyFrame (polars pushes its own filters into file scans) and streams
out in batches; semantic steps consume batches of ``batch_size`` rows, so at most one batch of
prompts is rendered at a time; ``head`` stops pulling once it has its rows, so upstream steps
never ask the engine about rows nobody will see. A relational step that needs all its input at
once (a sort, an aggregate) gathers its input first.

Every batch carries the hidden ``__sf_row_id`` column assigned at the scan: that is how lineage
names input rows across filters, sorts and heads, and how pandas results get their index back.

Accounting rides on the runner's two hooks: before each engine batch a :class:`Budget` may stop
the run (``BudgetExceeded``, carrying the partial :class:`RunResult`), and after it the progress
display and the budget count what was spent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from semframe.accounting.budget import Budget
from semframe.accounting.prices import MachinePrice, machine_price
from semframe.accounting.tokens import token_counter
from semframe.engines.base import Completion, Engine, Request
from semframe.errors import BudgetExceeded, PlanError
from semframe.execution.lineage import LineageRecorder, StepMetrics
from semframe.execution.progress import Progress
from semframe.execution.result import RunResult
from semframe.execution.semantic import SemanticRunner
from semframe.plan.nodes import (
    ROW_ID,
    Filter,
    Head,
    Node,
    Relational,
    Scan,
    Select,
    SemanticStep,
    Sort,
    WithColumns,
    walk,
)


logger = logging.getLogger("semframe")

__all__ = ["Executor", "RunResult", "relational_frame"]


@dataclass
class Executor:
    """Runs plans on one engine.

    Parameters
    ----------
    engine
        What answers the semantic steps.
    batch_size
        Rows per semantic batch; each batch's distinct requests go to the engine in one call.
    exact_cache
        Optional persistent cache of answers (see :mod:`semframe.cache`).
    lineage
        Record per-cell lineage (on by default; cheap).
    before_engine_batch
        Called with each batch of requests before it is sent; may raise to stop (budgets).
    on_engine_batch
        Called with each engine batch's completions as it finishes (progress, budgets).
    budget
        Limits on tokens and cost; the run stops before an engine batch that would break them.
    progress
        Shows how far the run has got (rows of the first semantic step, calls, tokens, cost).
    machine
        The machine price for costs (default: by the engine's device and ``sf.configure``).
    """

    engine: Engine | None
    batch_size: int = 512
    exact_cache: Any = None
    lineage: bool = True
    before_engine_batch: Callable[[list[Request]], None] | None = None
    on_engine_batch: Callable[[list[Completion]], None] | None = None
    budget: Budget | None = None
    progress: Progress | None = None
    machine: MachinePrice | None = None
    _recorder: LineageRecorder = field(init=False)
    _metrics: list[StepMetrics] = field(init=False)
    _step_index: dict[int, int] = field(init=False)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def run(self, plan: Node) -> RunResult:
        """Run ``plan``; raise :class:`BudgetExceeded` (with ``.result``, the partial run) if a budget stops it."""
        start = time.perf_counter()
        self._recorder = LineageRecorder(enabled=self.lineage)
        self._metrics = []
        machine = self.machine or machine_price(self.engine)
        # Steps are numbered bottom-up: step 0 runs first.
        steps = [n for n in walk(plan) if isinstance(n, SemanticStep)][::-1]
        self._step_index = {id(s): i for i, s in enumerate(steps)}
        if steps and self.engine is not None:
            logger.info("run: %d semantic step(s) on engine %s (model %s), batch_size=%d, lineage %s",
                        len(steps), self.engine.name, self.engine.model, self.batch_size,
                        "on" if self.lineage else "off")
        batches: list[pl.DataFrame] = []
        stopped: BudgetExceeded | None = None
        try:
            for batch in self._stream(plan):
                batches.append(batch)
        except BudgetExceeded as exc:
            stopped = exc
        finally:
            if self.progress is not None:
                self.progress.close()
        frame = pl.concat(batches, how="vertical") if batches else self._empty(plan)
        row_ids = frame[ROW_ID] if ROW_ID in frame.columns else pl.Series(ROW_ID, [None] * frame.height, pl.UInt32)
        result = RunResult(
            df=frame.drop(ROW_ID, strict=False),
            row_ids=row_ids,
            lineage=self._recorder.to_frame(),
            prompts=self._recorder.prompts_frame(),
            step_metrics=sorted(self._metrics, key=lambda m: m.step),
            plan=plan,
            seconds=time.perf_counter() - start,
            engine_model=self.engine.model if self.engine is not None else "",
            machine=machine,
            complete=stopped is None,
            count_tokens=token_counter(self.engine),
        )
        if steps:
            logger.info("run %s: %d rows out, %d engine requests, %.3f s",
                        "stopped by a budget" if stopped else "done", result.df.height,
                        result.engine_requests, result.seconds)
        if stopped is not None:
            stopped.result = result
            raise stopped
        return result

    @staticmethod
    def _empty(plan: Node) -> pl.DataFrame:
        return pl.DataFrame(schema=dict(plan.schema) | {ROW_ID: pl.UInt32})

    # ------------------------------------------------------------------ dispatch

    def _stream(self, node: Node) -> Iterator[pl.DataFrame]:
        lazy = relational_frame(node)
        if lazy is not None:
            return self._stream_lazy(lazy, node)
        if isinstance(node, SemanticStep):
            return self._visit_semantic(node)
        visit = getattr(self, f"_visit_{type(node).__name__}", None)
        if visit is None:
            if isinstance(node, Relational):
                return self._visit_relational(node)
            raise PlanError(f"the executor cannot run {type(node).__name__} nodes")
        return visit(node)

    def _stream_lazy(self, lf: pl.LazyFrame, node: Node) -> Iterator[pl.DataFrame]:
        source = next(n for n in walk(node) if isinstance(n, Scan)).source
        if source.in_memory:
            yield from lf.collect().iter_slices(self.batch_size)
            return
        batches = lf.collect_batches(chunk_size=self.batch_size)
        try:
            yield from batches
        finally:
            stop = getattr(batches, "stop", None)
            if stop is not None:
                stop()

    # ------------------------------------------------------------------ relational over a stream

    def _visit_Head(self, node: Head) -> Iterator[pl.DataFrame]:
        remaining = node.n
        if remaining == 0:
            return
        for batch in self._stream(node.child):
            if batch.height >= remaining:
                yield batch.head(remaining)
                return
            remaining -= batch.height
            yield batch

    def _visit_relational(self, node: Relational) -> Iterator[pl.DataFrame]:
        child = self._stream(node.child)  # type: ignore[attr-defined]
        if node.is_elementwise:
            for batch in child:
                yield _apply(node, batch.lazy()).collect()
            return
        # Needs all rows at once (sort, aggregate, window): gather, apply, re-slice.
        gathered = list(child)
        if not gathered:
            gathered = [self._empty(node.child)]  # type: ignore[attr-defined]
        yield from _apply(node, pl.concat(gathered).lazy()).collect().iter_slices(self.batch_size)

    # ------------------------------------------------------------------ semantic

    def _visit_semantic(self, node: SemanticStep) -> Iterator[pl.DataFrame]:
        if self.engine is None:
            raise PlanError(f"semantic.{node.operator} needs an engine; pass engine=... or sf.configure(engine=...)")
        index = self._step_index[id(node)]
        metrics = StepMetrics(step=index, operator=node.operator, column=node.name)
        self._metrics.append(metrics)
        runner = SemanticRunner(
            step=node,
            step_index=index,
            engine=self.engine,
            recorder=self._recorder,
            metrics=metrics,
            exact_cache=self.exact_cache if node.cache is not False else None,
            before_engine_batch=self._before_hook(node, index, metrics),
            on_engine_batch=self._after_hook(),
        )
        progress = self.progress if index == 0 else None
        if progress is not None and progress.total_rows is None:
            progress.total_rows = _count_rows(node.child)
        for batch in _rebatch(self._stream(node.child), self.batch_size):
            out = runner.process(batch)
            if progress is not None:
                progress.rows(batch.height)
            yield out

    def _before_hook(self, node: SemanticStep, index: int,
                     metrics: StepMetrics) -> Callable[[list[Request]], None] | None:
        budget, user = self.budget, self.before_engine_batch
        if budget is None:
            return user

        def before(requests: list[Request]) -> None:
            where = f"engine batch {metrics.engine_batches + 1} of step {index} ({node.operator})"
            budget.check(requests, where)
            if user is not None:
                user(requests)

        return before

    def _after_hook(self) -> Callable[[list[Completion]], None] | None:
        hooks = [h for h in (self.budget and self.budget.spend, self.progress and self.progress.engine_batch,
                             self.on_engine_batch) if h]
        if not hooks:
            return None
        if len(hooks) == 1:
            return hooks[0]

        def after(completions: list[Completion]) -> None:
            for hook in hooks:
                hook(completions)

        return after


def _count_rows(node: Node) -> int | None:
    """Rows a relational subtree yields (polars counts them, from file metadata where it can); else None."""
    lf = relational_frame(node)
    if lf is None:
        return None
    try:
        return int(lf.select(pl.len()).collect().item())
    except pl.exceptions.PolarsError:
        return None


def relational_frame(node: Node) -> pl.LazyFrame | None:
    """The subtree as one polars query (with the row-id column), if it is relational down to the scan."""
    if isinstance(node, Scan):
        # Number the rows before projecting: a projection to no columns (``select(pl.len())``
        # reads none) must still keep every row.
        lf = node.source.frame.with_row_index(ROW_ID)
        if node.columns_read is not None:
            lf = lf.select(ROW_ID, *node.columns_read)
        return lf
    if isinstance(node, Relational):
        below = relational_frame(node.child)  # type: ignore[attr-defined]
        return None if below is None else _apply(node, below)
    return None


def _apply(node: Relational, lf: pl.LazyFrame) -> pl.LazyFrame:
    """Apply a relational step, keeping the hidden row-id column alive through selects."""
    if any(e.selects_all for e in node.expressions):
        return _apply_without_row_id(node, lf)
    if not isinstance(node, Select):
        return node.apply(lf)
    out = node.apply(lf)
    if ROW_ID in out.collect_schema().names():
        return out
    if all(e.expr.meta.is_length_preserving() for e in node.exprs):
        return lf.select([*(e.expr for e in node.exprs), pl.col(ROW_ID)])
    return out.with_columns(pl.lit(None, dtype=pl.UInt32).alias(ROW_ID))


_POS = "__sf_pos"
_KEEP = "__sf_keep"
_HEIGHT = "__sf_height"


def _apply_without_row_id(node: Relational, lf: pl.LazyFrame) -> pl.LazyFrame:
    """Apply a step whose expressions expand against the schema (``pl.all()``, ``pl.first()``,
    ``cs.numeric()``, ``pl.col("a", "b")``) where they cannot see the hidden row-id column, then
    attach each output row's id again."""
    data = lf.drop(ROW_ID)
    if isinstance(node, WithColumns):  # one output row per input row, in order
        return pl.concat([lf.select(ROW_ID), node.apply(data)], how="horizontal")
    if isinstance(node, Filter):
        keep = data.with_columns(node.predicate.expr.alias(_KEEP)).select(_KEEP)
        return pl.concat([lf, keep], how="horizontal").filter(pl.col(_KEEP)).drop(_KEEP)
    if isinstance(node, Sort):
        keys = data.select([e.expr.name.prefix(f"__sf_key{i}_") for i, e in enumerate(node.by)])
        names = keys.collect_schema().names()
        flags = node.descending
        descending = flags[0] if len(set(flags)) == 1 else list(flags)  # one flag fits any expansion
        return (pl.concat([lf, keys], how="horizontal")
                  .sort(names, descending=descending, nulls_last=node.nulls_last, maintain_order=True)
                  .drop(names))
    if isinstance(node, Select):
        # Row k of the output is input row k when the select kept the height; else (an
        # aggregate) the rows have no input row.
        out = data.select(*(e.expr for e in node.exprs), pl.len().alias(_HEIGHT)).with_row_index(_POS)
        ids = lf.select(ROW_ID).with_row_index(_POS)
        out = out.join(ids, on=_POS, how="left", maintain_order="left")
        same = pl.len() == pl.col(_HEIGHT)
        return out.with_columns(pl.when(same).then(pl.col(ROW_ID))).drop(_POS, _HEIGHT)
    return node.apply(lf)  # pragma: no cover - every step with expressions is listed above


def _rebatch(stream: Iterator[pl.DataFrame], size: int) -> Iterator[pl.DataFrame]:
    """Regroup a stream of batches of any size into batches of ``size`` rows (the last may be short)."""
    pending: list[pl.DataFrame] = []
    count = 0
    for batch in stream:
        if batch.height == 0:
            continue
        pending.append(batch)
        count += batch.height
        while count >= size:
            merged = pl.concat(pending) if len(pending) > 1 else pending[0]
            yield merged.head(size)
            rest = merged.slice(size)
            pending, count = ([rest], rest.height) if rest.height else ([], 0)
    if count:
        yield pl.concat(pending) if len(pending) > 1 else pending[0]
