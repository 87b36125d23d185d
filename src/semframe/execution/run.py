"""Run a plan: optimize it, pick the engine and the caches, execute, remember the result."""

from __future__ import annotations

import logging
from typing import Any

from semframe import config
from semframe.accounting.budget import Budget
from semframe.accounting.prices import machine_price
from semframe.accounting.throughput import throughput_for
from semframe.errors import BudgetExceeded
from semframe.execution.executor import Executor, RunResult
from semframe.execution.progress import Progress, progress_mode
from semframe.optimizer import optimize as optimize_plan
from semframe.plan.nodes import Node, SemanticStep, walk

logger = logging.getLogger("semframe")

_last_run: RunResult | None = None


def last_run() -> RunResult | None:
    """The result of the most recent run in this process (eager verbs return only the frame)."""
    return _last_run


def run_plan(plan: Node, *, engine: Any = None, batch_size: int | None = None, cache: bool | None = None,
             lineage: bool | None = None, optimize: bool = True, max_cost: float | None = None,
             max_tokens: int | None = None, progress: bool | None = None) -> RunResult:
    """Optimize and execute ``plan``; see :meth:`semframe.SemLazyFrame.run`."""
    global _last_run
    settings = config.settings
    if optimize:
        plan = optimize_plan(plan)
    has_semantic = any(isinstance(n, SemanticStep) for n in walk(plan))
    # A plan without semantic steps never starts an engine.
    eng = config.resolve_engine(engine) if has_semantic else None
    use_cache = settings.cache if cache is None else cache
    machine = machine_price(eng)
    budget = None
    if max_cost is not None or max_tokens is not None:
        budget = Budget(max_tokens=max_tokens, max_cost=max_cost, machine=machine,
                        throughput=throughput_for(eng, machine.kind), engine=eng)
    mode = progress_mode(settings.progress if progress is None else progress) if has_semantic else None
    exact_cache = _open_exact_cache() if (use_cache and has_semantic) else None
    if exact_cache is not None:
        logger.info("exact cache: %s", getattr(exact_cache, "path", config.cache_dir()))
    executor = Executor(
        engine=eng,
        batch_size=batch_size or settings.batch_size,
        exact_cache=exact_cache,
        lineage=settings.lineage if lineage is None else lineage,
        budget=budget,
        progress=Progress(mode, machine=machine) if mode else None,
        machine=machine,
    )
    try:
        result = executor.run(plan)
    except BudgetExceeded as exc:
        _last_run = exc.result
        raise
    _last_run = result
    return result


def _open_exact_cache() -> Any:
    """The persistent exact cache, once the cache layer provides one."""
    try:
        from semframe.cache import open_exact_cache
    except ImportError:
        return None
    return open_exact_cache(config.cache_dir())
