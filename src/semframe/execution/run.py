"""Run a plan: optimize it, pick the engine and the caches, execute, remember the result."""

from __future__ import annotations

import logging
from typing import Any

from semframe import config
from semframe.execution.executor import Executor, RunResult
from semframe.optimizer import optimize as optimize_plan
from semframe.plan.nodes import Node, SemanticStep, walk

logger = logging.getLogger("semframe")

_last_run: RunResult | None = None


def last_run() -> RunResult | None:
    """The result of the most recent run in this process (eager verbs return only the frame)."""
    return _last_run


def run_plan(plan: Node, *, engine: Any = None, batch_size: int | None = None, cache: bool | None = None,
             lineage: bool | None = None, optimize: bool = True) -> RunResult:
    """Optimize and execute ``plan``; see :meth:`semframe.SemLazyFrame.run`."""
    global _last_run
    settings = config.settings
    if optimize:
        plan = optimize_plan(plan)
    has_semantic = any(isinstance(n, SemanticStep) for n in walk(plan))
    # A plan without semantic steps never starts an engine.
    eng = config.resolve_engine(engine) if has_semantic else None
    use_cache = settings.cache if cache is None else cache
    executor = Executor(
        engine=eng,
        batch_size=batch_size or settings.batch_size,
        exact_cache=_open_exact_cache() if (use_cache and has_semantic) else None,
        lineage=settings.lineage if lineage is None else lineage,
    )
    result = executor.run(plan)
    _last_run = result
    return result


def _open_exact_cache() -> Any:
    """The persistent exact cache, once the cache layer provides one."""
    try:
        from semframe.cache import open_exact_cache
    except ImportError:
        return None
    return open_exact_cache(config.cache_dir())
