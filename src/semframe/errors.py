"""Exceptions raised by semframe. All derive from :class:`SemframeError`."""

from __future__ import annotations


class SemframeError(Exception):
    """Base class of every error semframe raises on purpose."""


class PlanError(SemframeError, ValueError):
    """The plan cannot be built: unknown column, bad labels or schema, name clash ...

    Raised while the plan is built, before any engine call.
    """


class OutputError(SemframeError, ValueError):
    """A model answer does not fit the output spec. Never escapes a run: the row gets a null."""


class EngineError(SemframeError, RuntimeError):
    """The engine could not be created or failed as a whole (not a single bad row)."""


class BudgetExceeded(SemframeError):
    """A run stopped because its budget (cost or tokens) would be exceeded; done work is kept."""
