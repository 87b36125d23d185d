"""Run a plan: optimize it, plan its physical operators, execute them, hand back the result.

:func:`run_plan` is what ``collect()`` / ``run()`` call. It resolves the run's options from the
process defaults and its own arguments (:class:`~semframe.execution.context.RunOptions`), picks
the engine (started only if a semantic step needs one) and the caches, builds the run's context
(resolver, lineage recorder, observers: budget and progress), and pulls batches from the root
operator. :func:`estimate_plan` walks the very same operators without asking an engine.

Whatever happens, the run's result is what ``sf.last_run()`` returns afterwards: complete, or
partial with ``complete=False`` when a budget stopped it (``BudgetExceeded.result``) or an error
ended it (``SemframeError.result`` where the error is semframe's own).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import polars as pl

from semframe import config
from semframe.accounting.budget import Budget
from semframe.accounting.estimate import PlanEstimate
from semframe.accounting.prices import machine_price
from semframe.accounting.throughput import throughput_for
from semframe.accounting.tokens import token_counter
from semframe.engines.registry import resolve_engine
from semframe.errors import BudgetExceeded, SemframeError
from semframe.execution.context import RunContext, RunOptions, set_last_run
from semframe.execution.lineage import LineageRecorder
from semframe.execution.profile import instrument
from semframe.execution.progress import Progress, progress_mode
from semframe.execution.provenance import Batch
from semframe.execution.resolver import AnswerResolver
from semframe.execution.result import RunResult
from semframe.optimizer import optimize as optimize_plan
from semframe.physical.base import EstimateContext, PhysicalOp
from semframe.physical.planner import plan_physical
from semframe.physical.semantic import SemanticOperator
from semframe.plan.nodes import Node, walk
from semframe.plan.semantic import SemanticNode

logger = logging.getLogger("semframe")

#: Distinct prompts tokenized per step in an estimate.
SAMPLE_PROMPTS = 256


def has_semantic(plan: Node) -> bool:
    return any(isinstance(n, SemanticNode) for n in walk(plan))


def uses_llm(node: Node) -> bool:
    return isinstance(node, SemanticNode) and node.uses_llm


def prepare(plan: Node, options: RunOptions) -> tuple[Node, PhysicalOp]:
    """The plan as it will run (optimized if the options say so) and its physical operators."""
    if options.optimize:
        plan = optimize_plan(plan)
    return plan, plan_physical(plan, options)


def run_plan(plan: Node, *, engine: Any = None, max_cost: float | None = None, max_tokens: int | None = None,
             sink: Any = None, **options: Any) -> RunResult:
    """Optimize and execute ``plan``; see :meth:`semframe.SemLazyFrame.run` for the arguments.

    ``sink`` (a :mod:`semframe.physical.sinks` sink, made with the plan's schema) receives every
    output batch instead of the result frame, so the run's memory does not grow with its rows.
    """
    try:
        opts = RunOptions.resolve(config.settings, **options)
        plan, root = prepare(plan, opts)
        semantic = has_semantic(plan)
        # The run's engine is made (and started) only if a step has no engine of its own.
        needs_default = any(uses_llm(n) and n.engine is None for n in walk(plan))  # type: ignore[attr-defined]
        eng = resolve_engine(engine) if needs_default else None
        if eng is None and any(uses_llm(n) for n in walk(plan)):
            first = next(n for n in walk(plan) if uses_llm(n))
            machine_engine = resolve_engine(first.engine)  # type: ignore[attr-defined]
        else:
            machine_engine = eng
        machine = machine_price(machine_engine)
        observers: list[Any] = []
        budget = None
        if max_cost is not None or max_tokens is not None:
            budget = Budget(max_tokens=max_tokens, max_cost=max_cost, machine=machine,
                            throughput=throughput_for(machine_engine, machine.kind), engine=machine_engine)
            observers.append(budget)
        mode = progress_mode(opts.progress) if semantic else None
        progress = Progress(mode, machine=machine) if mode else None
        if progress is not None:
            progress.plan_steps((op.index, op.node.operator, op.node.output_name)
                                for op in root.walk() if isinstance(op, SemanticOperator))
            observers.append(progress)
        exact_cache = _open_exact_cache() if (opts.cache and semantic) else None
        if exact_cache is not None:
            logger.info("exact cache: %s", getattr(exact_cache, "path", config.cache_dir()))
        recorder = LineageRecorder(enabled=opts.lineage)
        ctx = RunContext(engine=eng, options=opts, recorder=recorder, progress=progress, machine=machine, budget=budget,
                         resolver=AnswerResolver(eng, exact_cache=exact_cache, recorder=recorder, observers=observers,
                                                 on_error=opts.on_error, memo_size=opts.memo_size,
                                                 pipeline=True))
        steps = sum(1 for n in walk(plan) if isinstance(n, SemanticNode))
        if eng is not None:
            logger.info("run: %d semantic step(s) on engine %s (model %s), batch_size=%d, lineage %s",
                        steps, eng.name, eng.model, opts.batch_size, "on" if opts.lineage else "off")
    except BaseException as exc:  # the run could not start: no file, and last_run says so
        if sink is not None:
            sink.close(ok=False)
        _failed_to_start(plan, exc)
        raise
    return execute(root, ctx, plan, sink)


def _failed_to_start(plan: Node, error: BaseException) -> None:
    """``sf.last_run()`` after a run that failed before its first batch: that run, empty."""
    result = RunResult(
        df=Batch.empty(plan.schema).frame, row_ids=pl.Series("row_id", [], dtype=pl.UInt32),
        recorder=LineageRecorder(enabled=False), step_metrics=[], plan=plan, seconds=0.0, engine_model="",
        complete=False, error=f"{type(error).__name__}: {error}",
    )
    set_last_run(result)
    if isinstance(error, SemframeError) and getattr(error, "result", None) is None:
        error.result = result  # type: ignore[attr-defined]


def execute(root: PhysicalOp, ctx: RunContext, plan: Node, sink: Any = None) -> RunResult:
    """Pull every batch from ``root``; the result (also a partial one) becomes ``sf.last_run()``."""
    start = time.perf_counter()
    stats = instrument(root)  # rows and time per operator, for RunResult.profile()
    batches: list[Batch] = []
    error: BaseException | None = None
    try:
        for batch in root.execute(ctx):
            if sink is None:
                batches.append(batch)
            else:
                sink.write(batch.frame)
    except BaseException as exc:  # noqa: BLE001 - the partial result is kept, the error re-raised
        error = exc
    finally:
        if error is not None and isinstance(error, Exception):
            ctx.resolver.settle()  # batches in flight when the run stopped: into the cache and budget
        ctx.resolver.close(wait=error is None or isinstance(error, Exception))
        if ctx.progress is not None:
            ctx.progress.close()
        if sink is not None:
            try:
                sink.close(ok=error is None)
            except Exception as exc:  # a sink that cannot finish its file fails the run
                error = error or exc
    result = _result(batches, plan, ctx, time.perf_counter() - start, error)
    result.physical, result.operator_stats, result.options = root, stats, ctx.options
    if sink is not None:
        result.rows_written = sink.rows
    set_last_run(result)
    if error is not None:
        if isinstance(error, SemframeError):
            error.result = result  # type: ignore[attr-defined]
        if isinstance(error, BudgetExceeded) and ctx.budget is not None:
            # Batches answered after the refusal (those in flight, and the rows passed on
            # before it was raised) are spent too: the error says what the run spent in all.
            error.spent_tokens, error.spent_usd = ctx.budget.spent_tokens, ctx.budget.spent_usd
        raise error
    if ctx.engine is not None:
        rows = result.df.height if result.rows_written is None else result.rows_written
        logger.info("run done: %d rows out, %d engine requests, %.3f s", rows,
                    result.engine_requests, result.seconds)
    return result


def _result(batches: list[Batch], plan: Node, ctx: RunContext, seconds: float,
            error: BaseException | None) -> RunResult:
    if batches:
        out = Batch.concat(batches)
    else:
        out = Batch.empty(plan.schema)
    ids = out.ids.alias("row_id")
    if ids.dtype == pl.Null:
        ids = ids.cast(pl.UInt32)
    return RunResult(
        df=out.frame,
        row_ids=ids,
        recorder=ctx.recorder,
        step_metrics=sorted(ctx.metrics, key=lambda m: m.step),
        plan=plan,
        seconds=seconds,
        engine_model=ctx.model,
        machine=ctx.machine if ctx.machine is not None else machine_price(ctx.engine),
        complete=error is None,
        count_tokens=token_counter(ctx.engine),
        error=None if error is None else f"{type(error).__name__}: {error}",
        semantic_hits=ctx.resolver.semantic_hits,
    )


def _open_exact_cache() -> Any:
    from semframe.cache import open_exact_cache

    return open_exact_cache(config.cache_dir())


# --------------------------------------------------------------------------- estimate


def estimate_plan(plan: Node, engine: Any = None, *, filter_selectivity: float = 0.5,
                  sample: int = SAMPLE_PROMPTS, **options: Any) -> PlanEstimate:
    """Estimate a plan's engine calls, tokens, time and cost by walking its physical operators.

    ``engine`` only counts tokens; it is never asked anything (None: ~4 characters per token).
    The plan is optimized and planned exactly as :func:`run_plan` would, with the same options.
    """
    if not 0.0 <= filter_selectivity <= 1.0:
        raise ValueError(f"filter_selectivity must be between 0 and 1, got {filter_selectivity!r}")
    opts = RunOptions.resolve(config.settings, **options)
    _, root = prepare(plan, opts)
    est = EstimateContext(engine=engine, count=token_counter(engine), options=opts,
                          filter_selectivity=filter_selectivity, sample=sample)
    root.estimate(est)
    machine = machine_price(engine)
    notes = ["answers already in the persistent cache are not subtracted (a rerun costs less)"]
    if engine is not None and not any(callable(getattr(engine, a, None)) for a in ("count_prompt_tokens", "render")):
        notes.append("the chat template's few tokens per message are not counted")
    tokenizer = (f"{getattr(engine, 'model', 'the engine')}'s tokenizer" if engine is not None
                 else "heuristic (~4 characters per token)")
    return PlanEstimate(tuple(sorted(est.steps, key=lambda s: s.step)), machine,
                        throughput_for(engine, machine.kind), tokenizer, filter_selectivity, tuple(notes))
