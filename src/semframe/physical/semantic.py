"""Row-wise semantic operators: a request builder and a row emitter over the answer resolver.

:class:`RowOperator` does what every row-wise verb shares: it renders the template for a batch
(vectorized, values inserted literally, null or blank input skipped), builds one request per
row, asks the resolver once per batch, records lineage and metrics, and hands the answers to
:meth:`RowOperator.emit`. A verb is a subclass that says what its shared instruction is and
how answers become rows -- about ten lines each (classify, filter, extract, map below).

Operators for new logical nodes register with :func:`physical_for`; the planner looks them up
by node type.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import polars as pl

from semframe.accounting.estimate import StepEstimate
from semframe.accounting.tokens import output_tokens, request_prompt_tokens
from semframe.execution.context import RunContext, RunOptions
from semframe.execution.lineage import Outcome, StepMetrics
from semframe.execution.provenance import Batch, scalar_ids
from semframe.execution.render import render_exprs, render_texts
from semframe.execution.resolver import StepInfo
from semframe.physical.base import EstimateContext, EstState, PhysicalOp
from semframe.physical.prompts import RequestBuilder, field_words
from semframe.physical.relational import PolarsQuery, rebatch
from semframe.plan.semantic import SemanticNode, SemanticStep, SemClassify, SemExtract, SemFilter, SemMap, engine_label

#: Logical node type -> physical operator class.
OPERATORS: dict[type, type[PhysicalOp]] = {}


def physical_for(node_type: type) -> Callable[[type[PhysicalOp]], type[PhysicalOp]]:
    """Class decorator: the physical operator the planner makes of ``node_type`` nodes."""

    def register(cls: type[PhysicalOp]) -> type[PhysicalOp]:
        OPERATORS[node_type] = cls
        return cls

    return register


@dataclass
class StepRun:
    """One semantic operator's bookkeeping while it runs: its metrics, what the resolver needs to
    know about it, and the model that answers it (for lineage)."""

    metrics: StepMetrics
    info: StepInfo
    model: str


class SemanticOperator(PhysicalOp):
    """Base of every semantic operator's physical form: its step number and options, and one way
    to ask the answer resolver (:meth:`ask`) that records lineage and metrics.

    An operator opens its step once (:meth:`open_step`), asks as many rounds as its algorithm
    needs (a join's candidate pairs, a reduce's levels, a top-k's comparison rounds: each one
    :meth:`ask`), and closes it (:meth:`close_step`). Each request goes through the memo, the
    exact cache and the engine like any row-wise verb's, so dedup and reruns are free for every
    operator.
    """

    node: SemanticNode

    def __init__(self, node: SemanticNode, inputs: tuple[PhysicalOp, ...], index: int, options: RunOptions):
        super().__init__(node, inputs)
        self.index = index
        self.options = options
        self.dedupe = options.dedupe and getattr(node, "temperature", 0.0) == 0
        self.exact_cache = options.cache and getattr(node, "cache", None) is not False

    def semantic_key(self) -> dict[str, Any]:
        """What identifies the step for the semantic cache (only row-wise verbs use one)."""
        return {}

    def step_info(self, metrics: StepMetrics, engine: Any = None) -> StepInfo:
        node = self.node
        return StepInfo(index=self.index, operator=node.operator, column=node.output_name, metrics=metrics,
                        engine=engine, dedupe=self.dedupe, exact_cache=self.exact_cache,
                        semantic_threshold=getattr(node, "semantic_cache", None), semantic_key=self.semantic_key())

    def planning_flags(self) -> list[str]:
        """What explain shows of the planner's choices for the step: dedupe, the prompt layout,
        the exact cache."""
        return [*(["dedupe"] if self.dedupe else []),
                "shared prefix first" if self.options.prompt_layout == "shared_first" else "inline prompt",
                "exact cache" if self.exact_cache else "exact cache off"]

    def open_step(self, ctx: RunContext, expected: int | None = None) -> StepRun:
        """Register the step's metrics and progress line; ``expected``: its input rows, if known."""
        node = self.node
        metrics = StepMetrics(step=self.index, operator=node.operator, column=node.output_name)
        ctx.metrics.append(metrics)
        engine = getattr(node, "engine", None)
        own = ctx.engine_for(engine) if engine is not None else None
        if ctx.progress is not None:
            ctx.progress.start_step(self.index, node.operator, node.output_name, expected, metrics)
        return StepRun(metrics, self.step_info(metrics, own), own.model if own is not None else ctx.model)

    def ask(self, ctx: RunContext, run: StepRun, requests: list[Any], texts: list[str | None], ids: pl.Series,
            reasons: list[str | None] | None = None) -> list[Outcome]:
        """One resolver round: an outcome per request (``None`` requests are skipped rows, with
        ``reasons[i]`` as the recorded reason); lineage names each request's rows by ``ids``."""
        return self.take(ctx, run, self.send(ctx, run, requests, texts, ids), ids, reasons)

    def send(self, ctx: RunContext, run: StepRun, requests: list[Any], texts: list[str | None], ids: pl.Series,
             *, overlap: bool = False) -> Any:
        """The first half of :meth:`ask`: the round submitted (its engine batch in flight in the
        background where ``overlap`` and the resolver allow); :meth:`take` attaches its answers."""
        return ctx.resolver.submit(run.info, requests, texts, scalar_ids(ids), overlap=overlap)

    def take(self, ctx: RunContext, run: StepRun, sent: Any, ids: pl.Series,
             reasons: list[str | None] | None = None) -> list[Outcome]:
        """The second half of :meth:`ask`: wait for the round's answers, record lineage and metrics."""
        outcomes = sent.result()
        for i, o in enumerate(outcomes):
            if o is None:
                outcomes[i] = Outcome(None, "skipped", error=reasons[i] if reasons else "no request")
        done: list[Outcome] = outcomes  # type: ignore[assignment]
        ctx.recorder.record(self.index, self.node.operator, self.node.output_name, run.model, ids, done)
        run.metrics.add_all(done)
        return done

    def close_step(self, ctx: RunContext, run: StepRun) -> None:
        if ctx.progress is not None:
            ctx.progress.end_step(self.index)


def gather(op: PhysicalOp, ctx: RunContext) -> Batch:
    """Every batch ``op`` yields, as one batch (for an operator that needs a whole input)."""
    batches = list(op.execute(ctx))
    return Batch.concat(batches) if batches else Batch.empty(op.node.schema)


class RowOperator(SemanticOperator):
    """One row-wise semantic step: one request per row, one resolver round per batch."""

    node: SemanticStep

    #: Whether a consumer above reads every batch (no ``head`` that may stop early): then the
    #: step submits its next batch before it attaches this one's answers (the planner sets it).
    reads_on: bool = True

    def __init__(self, node: SemanticStep, inputs: tuple[PhysicalOp, ...], index: int, options: RunOptions):
        super().__init__(node, inputs, index, options)
        self.builder = RequestBuilder(self.shared_text(), node.spec, node.effective_max_tokens,
                                      node.temperature, options.prompt_layout)

    # ------------------------------------------------------------------ what a verb says

    def shared_text(self) -> str:  # pragma: no cover - abstract
        """The part of every prompt of the step that does not depend on the row."""
        raise NotImplementedError

    def emit(self, batch: Batch, values: list[Any]) -> Batch:
        """The output rows for a batch and its answers (default: the answers as a new column)."""
        node = self.node
        series = pl.Series(node.name, values, dtype=node.output_dtype, strict=False)
        return Batch(batch.frame.with_columns(series), batch.ids)

    def emit_outcomes(self, batch: Batch, outcomes: list[Outcome]) -> Batch:
        """The output rows from the batch's whole outcomes (default: :meth:`emit` of the values);
        a verb that shows more than the value (classify's probabilities) overrides this."""
        return self.emit(batch, [o.value for o in outcomes])

    # ------------------------------------------------------------------ execution

    def semantic_key(self) -> dict[str, Any]:
        node = self.node
        return {"operator": node.operator, "shared": self.builder.shared,
                "template": node.template.source, "spec": node.spec.to_dict(),
                "max_tokens": node.effective_max_tokens, "temperature": node.temperature,
                "layout": self.options.prompt_layout}

    def execute(self, ctx: RunContext) -> Iterator[Batch]:
        node = self.node
        progress = ctx.progress
        run = self.open_step(ctx, expected_rows(self.inputs[0], progress) if progress is not None else None)
        metrics, build = run.metrics, self.builder.build_all
        # With ``reads_on``, batch i+1 is submitted before batch i's answers are attached: against
        # a pipelined engine its requests are in flight meanwhile (AnswerResolver.submit). When
        # the step's input fails or a budget refuses the next batch, the batches already sent are
        # passed on first, as they would have been one at a time; a batch still in flight when
        # the consumer stops is settled by the executor (AnswerResolver.settle: cache and budget).
        pending: deque[tuple[Batch, Any, list[str | None], float]] = deque()

        def finish(batch: Batch, sent: Any, reasons: list[str | None], seconds: float) -> Batch:
            start = time.perf_counter()
            done = self.take(ctx, run, sent, batch.ids, reasons)
            metrics.rows_in += batch.height
            out = self.emit_outcomes(batch, done)
            metrics.rows_out += out.height
            metrics.seconds += seconds + time.perf_counter() - start
            if progress is not None:
                progress.rows(batch.height, step=self.index)
            return out

        def drain(keep: int) -> Iterator[Batch]:
            """Pass on answered batches, oldest first, leaving ``keep`` in flight."""
            while len(pending) > keep:
                out = finish(*pending[0])
                pending.popleft()
                yield out

        source = iter(rebatch(self.inputs[0].execute(ctx), ctx.options.batch_size))
        while True:
            try:
                batch = next(source)
            except StopIteration:
                break
            except BaseException:  # the input failed: the batches answered so far go on first
                yield from drain(0)
                raise
            start = time.perf_counter()
            texts, reasons = render_texts(node.template, batch.frame)
            try:
                sent = self.send(ctx, run, build(texts), texts, batch.ids, overlap=self.reads_on)
            except BaseException:  # e.g. a budget refused this batch: the ones before go on first
                yield from drain(0)
                raise
            pending.append((batch, sent, reasons, time.perf_counter() - start))
            yield from drain(1 if sent.in_flight else 0)
        yield from drain(0)
        self.close_step(ctx, run)

    def describe(self) -> str:
        flags = [f"max_tokens={self.node.effective_max_tokens}"]
        flags += self.planning_flags()
        if self.node.semantic_cache is not None:
            flags.append(f"semantic cache >= {self.node.semantic_cache:g}")
        if self.node.temperature:
            flags.append(f"temperature={self.node.temperature:g}")
        if self.node.engine is not None:
            flags.append(f"engine {engine_label(self.node.engine)}")
        name = f" -> {self.node.name}" if self.node.name else ""
        return (f"SEMANTIC {self.node.operator.upper()}{name} (step {self.index}) "
                f"[{self.node.spec.describe()}; {', '.join(flags)}]")

    # ------------------------------------------------------------------ estimation

    def estimate(self, est: EstimateContext) -> EstState:
        node = self.node
        state = self.inputs[0].estimate(est)
        cols = node.template.columns
        count = est.count
        out = output_tokens(node.spec, node.effective_max_tokens, count,
                            est.engine if node.engine is None else node.engine)  # the engine that answers
        written = sum(est.typical_tokens.get(c, 0.0) for c in cols)
        batch = state.batch
        known = batch is not None and not (set(cols) & state.unknown)
        if known:
            texts = _rendered(node, batch.frame)  # type: ignore[union-attr]
            valid = texts.drop_nulls()
            skipped = texts.len() - valid.len()
            distinct = valid.unique(maintain_order=True)
            # A head above may stop pulling rows before this step has asked about all of them.
            sure = state.exact and state.rows_low == state.rows_high == texts.len() and not est.under_head
            exact = sure
            if self.dedupe:
                b = self.builder
                # Requests are equal when the text is, within one memo (one per engine).
                same = (b.shared, b.spec, b.max_tokens, b.temperature, b.layout, _engine_key(node.engine))
                seen, maybe = est.seen.get(same), est.seen.get(("maybe", same))
                fresh = distinct if seen is None else distinct.filter(~distinct.is_in(seen.implode()))
                n_calls = fresh.len()
                if maybe is not None and fresh.is_in(maybe.implode()).any():
                    exact = False  # an earlier step may or may not have asked these already
                # Only prompts surely asked may be subtracted from later steps.
                slot = same if sure else ("maybe", same)
                before = est.seen.get(slot)
                est.seen[slot] = distinct if before is None else pl.concat([before, distinct]).unique()
                memo_used = est.seen.get(same)
                if not self.exact_cache and memo_used is not None and memo_used.len() > self.options.memo_size:
                    exact = False  # repeats further apart than the memo holds may be asked again
            else:
                n_calls = valid.len()
            if node.semantic_cache is not None:
                exact = False  # near-duplicates may be answered from each other
            per_row = n_calls / texts.len() if texts.len() else 0.0
            calls_low = n_calls if exact else round(min(state.rows_low * per_row, n_calls))
            if node.semantic_cache is not None:
                calls_low = min(1, n_calls)
            calls_high = n_calls if exact else math.ceil(min(
                state.rows_high, distinct.len() if self.dedupe else valid.len()))
            pool = distinct.to_list()
        else:
            # Inputs written by an earlier step: every row is a call, its text is that step's answer.
            skipped, exact = 0, False
            calls_low, calls_high = round(state.rows_low), round(state.rows_high)
            pool = [self._placeholder(batch)] if batch is None or batch.height else []
        if len(pool) > est.sample:
            pool = random.Random(0).sample(pool, est.sample)
        prompt_tokens = (sum(request_prompt_tokens(self.builder.build(t), est.engine) for t in pool) / len(pool)
                         if pool else 0.0) + written
        if node.name is not None:
            est.typical_tokens[node.name] = out.typical
        est.steps.append(StepEstimate(
            step=self.index, operator=node.operator, column=node.name,
            rows_low=round(state.rows_low), rows_high=round(state.rows_high), skipped=skipped,
            calls_low=calls_low, calls_high=calls_high, rows_exact=exact,
            prompt_tokens_per_call=prompt_tokens, output_tokens_per_call=(out.low, out.typical, out.high),
        ))
        return self.estimate_output(state, est)

    def estimate_output(self, state: EstState, est: EstimateContext) -> EstState:
        """What leaves the step: the same rows, with the model's column as an unknown placeholder."""
        node = self.node
        if state.batch is None or node.name is None:
            return state
        frame = state.batch.frame.with_columns(pl.lit(None, dtype=node.output_dtype).alias(node.name))
        return EstState(Batch(frame, state.batch.ids), state.rows_low, state.rows_high, state.exact,
                        state.unknown | {node.name})

    def _placeholder(self, batch: Batch | None) -> str:
        """The template with known columns' first values and model-written columns empty."""
        frame = batch.frame if batch is not None else None
        first = frame.row(0, named=True) if frame is not None and frame.height else {}
        cols = self.node.template.columns
        return self.node.template.render({c: "" if first.get(c) is None else str(first[c]) for c in cols})


def expected_rows(op: PhysicalOp, progress: Any) -> int | None:
    """The rows ``op`` will yield, for the progress display, when that is cheap to know; else None.

    A polars query counts them (only where that reads no file twice, see ``PolarsQuery.count_rows``),
    once per run; a step that keeps every row (classify, extract, map, ``with_columns``, a sort)
    yields what its input does; anything else (a filter, a join, a head) is not known ahead.
    """
    if isinstance(op, PolarsQuery):
        return progress.count_once(id(op), op.count_rows)
    if len(op.inputs) == 1 and op.node.rows in ("aligned", "permutation"):
        return expected_rows(op.inputs[0], progress)
    return None


def _engine_key(engine: Any) -> Any:
    """Which memo a step's answers go to in the estimate: the run engine's, or its own engine's."""
    return None if engine is None else (engine if isinstance(engine, str) else id(engine))


def _rendered(node: SemanticStep, frame: pl.DataFrame) -> pl.Series:
    """Every row's rendered text (null where the run would skip the row), as the run renders it."""
    text, has_null, all_empty = render_exprs(node.template, frame.schema)
    return frame.select(pl.when(has_null | all_empty).then(None).otherwise(text).alias("text"))["text"]


# --------------------------------------------------------------------------- the four verbs


@physical_for(SemClassify)
class ClassifyOp(RowOperator):
    node: SemClassify

    def shared_text(self) -> str:
        lead = self.node.instruction or "Classify the text."
        return f"{lead}\nAnswer with exactly one of: {', '.join(self.node.spec.labels)}."  # type: ignore[attr-defined]

    def step_info(self, metrics: StepMetrics, engine: Any = None) -> StepInfo:
        step = super().step_info(metrics, engine)
        step.probabilities = self.node.probabilities
        return step

    def emit_outcomes(self, batch: Batch, outcomes: list[Outcome]) -> Batch:
        out = self.emit(batch, [o.value for o in outcomes])
        column = self.node.probabilities_column
        if column is None:
            return out
        # A row without probabilities (skipped, failed, or the engine gave none) is a null struct.
        probs = pl.Series(column, [o.probabilities if o.value is not None else None for o in outcomes],
                          dtype=self.node.probabilities_dtype)
        return Batch(out.frame.with_columns(probs), out.ids)

    def describe(self) -> str:
        text = super().describe()
        return text[:-1] + ", probabilities]" if self.node.probabilities else text

    def estimate_output(self, state: EstState, est: EstimateContext) -> EstState:
        state = super().estimate_output(state, est)
        column = self.node.probabilities_column
        if column is None or state.batch is None:
            return state
        frame = state.batch.frame.with_columns(pl.lit(None, dtype=self.node.probabilities_dtype).alias(column))
        return EstState(Batch(frame, state.batch.ids), state.rows_low, state.rows_high, state.exact,
                        state.unknown | {column})


@physical_for(SemFilter)
class FilterOp(RowOperator):
    def shared_text(self) -> str:
        lead = self.node.instruction or "Answer the question about the text."
        return f"{lead}\nAnswer with exactly one word: YES or NO."

    def emit(self, batch: Batch, values: list[Any]) -> Batch:
        return batch.filter(pl.Series([v == "YES" for v in values], dtype=pl.Boolean))

    def estimate_output(self, state: EstState, est: EstimateContext) -> EstState:
        # Which rows the model keeps is unknown: at most all of them, expected the selectivity.
        return EstState(state.batch, state.rows_low * est.filter_selectivity, state.rows_high, False, state.unknown)


@physical_for(SemExtract)
class ExtractOp(RowOperator):
    def shared_text(self) -> str:
        lead = self.node.instruction or "Extract the following fields from the text."
        return f"{lead}\nReply with a JSON object with the fields {field_words(self.node.spec)}."  # type: ignore[arg-type]


@physical_for(SemMap)
class MapOp(RowOperator):
    def shared_text(self) -> str:
        return self.node.instruction or ""
