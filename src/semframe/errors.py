"""Exceptions raised by semframe. All derive from :class:`SemframeError`."""

from __future__ import annotations


class SemframeError(Exception):
    """Base class of every error semframe raises on purpose.

    An error that ends a run carries the run's partial result in ``result`` (a RunResult with
    ``complete=False``; also what ``sf.last_run()`` returns), else None.
    """

    result = None


class PlanError(SemframeError, ValueError):
    """The plan cannot be built: unknown column, bad labels or schema, name clash ...

    Raised while the plan is built, before any engine call.
    """


class OutputError(SemframeError, ValueError):
    """A model answer does not fit the output spec. Never escapes a run: the row gets a null."""


class EngineError(SemframeError, RuntimeError):
    """The engine could not be created or failed as a whole (not a single bad row)."""


class BudgetExceeded(SemframeError):
    """A run stopped because its budget (cost or tokens) would be exceeded; done work is kept.

    ``result`` is the partial RunResult (rows that went through every step, with lineage and
    metrics); ``spent_tokens`` and ``spent_usd`` are what the run used before it stopped.
    """

    def __init__(self, message: str, *, spent_tokens: int = 0, spent_usd: float = 0.0, result=None):
        super().__init__(message)
        self.spent_tokens = spent_tokens
        self.spent_usd = spent_usd
        self.result = result


class EngineFailure(SemframeError, RuntimeError):
    """An engine batch failed and the run was told to stop on errors (``on_error="raise"``).

    The message names the step and the engine batch; ``__cause__`` is the engine's own error and
    ``result`` the partial run (every batch answered before it, also in the cache).
    """
