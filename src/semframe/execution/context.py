"""Run-scoped state: the options of one run, what it is using, and what it produced.

Nothing a run needs lives in process globals: :class:`RunOptions` are resolved once, at the
start of the run, from the process defaults (``sf.configure``) and the run's own arguments;
:class:`RunContext` holds the engine, the answer resolver, the lineage recorder, the per-step
metrics and the observers of that run only. The one process-level record is the last run's
result (``sf.last_run()``), set when a run ends -- also when it fails, so that it never names
an older run.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from semframe.execution.lineage import LineageRecorder, StepMetrics
from semframe.execution.resolver import AnswerResolver

#: Prompt layouts (see :mod:`semframe.physical.prompts`).
PROMPT_LAYOUTS = ("shared_first", "inline")


@dataclass(frozen=True)
class RunOptions:
    """How one run is planned and executed (like polars' optimization flags).

    Parameters
    ----------
    batch_size
        Rows per engine batch.
    dedupe
        Ask the engine each distinct request once per run (greedy steps only).
    prompt_layout
        ``"shared_first"`` (the instruction first, in a system message, so the engine's prefix
        cache reuses it) or ``"inline"`` (the row's text first, in one user message).
    cache
        Use the persistent exact cache.
    lineage
        Record per-cell lineage.
    progress
        Show progress (None: only in a terminal or a notebook).
    optimize
        Apply the optimizer's rewrites (they never change results).
    memo_size
        The most distinct answers the in-run memo keeps (memory stays flat on any number of rows);
        repeats older than that come from the exact cache, or are asked again with the cache off.
    on_error
        ``"null"``: a request the engine cannot answer (after retries) gets a null and a reason,
        and the run goes on; ``"raise"``: the run stops with ``EngineFailure``.
    """

    batch_size: int = 512
    dedupe: bool = True
    prompt_layout: str = "shared_first"
    cache: bool = True
    lineage: bool = True
    progress: bool | None = None
    optimize: bool = True
    on_error: str = "null"
    memo_size: int = 100_000

    def __post_init__(self) -> None:
        b = self.batch_size
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ValueError(f"batch_size must be a positive integer, got {b!r}")
        if self.prompt_layout not in PROMPT_LAYOUTS:
            raise ValueError(f"prompt_layout must be one of {', '.join(map(repr, PROMPT_LAYOUTS))}, "
                             f"got {self.prompt_layout!r}")
        for name in ("dedupe", "cache", "lineage", "optimize"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        m = self.memo_size
        if isinstance(m, bool) or not isinstance(m, int) or m < 0:
            raise ValueError(f"memo_size must be a non-negative integer, got {m!r}")
        if self.on_error not in ("null", "raise"):
            raise ValueError(f"on_error must be 'null' or 'raise', got {self.on_error!r}")
        if self.progress not in (None, True, False):
            raise ValueError(f"progress must be True, False or None, got {self.progress!r}")

    @classmethod
    def resolve(cls, defaults: Any, **overrides: Any) -> RunOptions:
        """Options from the process ``defaults`` (an object with these attributes, e.g.
        ``semframe.config.settings``), each replaced by an override that is not None."""
        base = {f.name: getattr(defaults, f.name) for f in fields(cls) if hasattr(defaults, f.name)}
        base.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(base) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown run option(s): {', '.join(sorted(unknown))}")
        return cls(**base)

    def with_(self, **changes: Any) -> RunOptions:
        return replace(self, **changes)


@dataclass
class RunContext:
    """Everything one run uses while it executes (handed to every physical operator)."""

    engine: Any
    options: RunOptions
    resolver: AnswerResolver
    recorder: LineageRecorder
    progress: Any = None
    metrics: list[StepMetrics] = field(default_factory=list)
    #: The machine price the run is charged at (read once, when it starts).
    machine: Any = None
    #: The run's budget (:class:`~semframe.accounting.budget.Budget`), if it has limits.
    budget: Any = None

    @property
    def model(self) -> str:
        return self.engine.model if self.engine is not None else ""

    def engine_for(self, ref: Any) -> Any:
        """The engine a step names (an engine or a name), or the run's engine for None."""
        if ref is None:
            return self.engine
        from semframe.engines.registry import resolve_engine

        return resolve_engine(ref)


# --------------------------------------------------------------------------- the last run

_last_run: Any = None


def last_run() -> Any:
    """The result of the most recent run in this process (eager verbs return only the frame).

    After a run that failed or was stopped by a budget, it is that run's partial result
    (``complete`` is False), never an older run.
    """
    return _last_run


def set_last_run(result: Any) -> None:
    global _last_run
    _last_run = result
