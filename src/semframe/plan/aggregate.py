"""The semantic aggregate node: one answer per group of rows (``semantic.aggregate``).

``SemAggregate`` says *what* is asked: a task ("Summarize the complaints") over the rendered
rows of each group (``by`` = the group key columns; none: the whole input is one group), in a
fixed order (input row id, or ``order_by`` first), answered as text or as a struct (``spec``).
*How* the rows are packed into requests and reduced level by level is the physical operator's
business (:mod:`semframe.physical.aggregate`).

The output has one row per group: the key columns, then the answer column. Rows change, so the
node is a barrier for the optimizer: ``rows == "other"``, not elementwise, and no column passes
through it "unchanged" -- no relational filter ever moves below it (not even one on the group
keys, which would be correct, but is kept out for simplicity).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import polars as pl

from semframe.errors import PlanError
from semframe.plan.nodes import RESERVED_PREFIX, Needed, Node, Schema
from semframe.plan.semantic import SemanticNode, option_flags
from semframe.plan.spec import JsonSpec, OutputSpec, TextSpec
from semframe.plan.template import Template

#: Context window assumed when neither the step (``context_window=``) nor the engine says one.
DEFAULT_CONTEXT_WINDOW = 2048


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True)
class SemAggregate(SemanticNode):
    """One answer per group of the child's rows.

    Parameters
    ----------
    child
        The input.
    task
        What to answer about each group's rows (the shared instruction), e.g.
        ``"Summarize the complaints"``.
    template
        Each row's text (``{column}`` references).
    spec
        The answer: :class:`~semframe.plan.spec.TextSpec` or a
        :class:`~semframe.plan.spec.JsonSpec` (a struct column).
    by
        The group key columns (empty: one group, the whole input).
    name
        The answer column.
    order_by
        Columns that order the rows inside a group before packing (ascending, nulls last, ties
        by input row id); empty: input row id order.
    instruction
        Extra guidance added after the task (style, length, language ...).
    max_tokens
        The most tokens per answer, partial or final (default: from the spec).
    context_window
        The window (prompt plus answer, in tokens) requests are packed to; None: the engine's
        (``Engine.context_window``), else :data:`DEFAULT_CONTEXT_WINDOW`.
    cache
        ``False`` keeps this step out of the persistent exact cache.
    engine
        The engine that answers this step (None: the run's).
    """

    child: Node
    task: str
    template: Template
    spec: OutputSpec
    by: tuple[str, ...] = ()
    name: str = "aggregate"
    order_by: tuple[str, ...] = ()
    instruction: str | None = None
    max_tokens: int | None = None
    context_window: int | None = None
    cache: bool | None = None
    engine: Any = None

    operator: ClassVar[str] = "aggregate"
    rows: ClassVar[str] = "other"

    def __post_init__(self) -> None:
        where = "semantic.aggregate"
        if not isinstance(self.task, str) or not self.task.strip():
            raise PlanError(f"{where}: the task must be a non-empty string such as 'Summarize the complaints', "
                            f"got {self.task!r}")
        if not isinstance(self.spec, (TextSpec, JsonSpec)):
            raise PlanError(f"{where}: the answer is text or a struct (schema=...), got {type(self.spec).__name__}")
        cols = self.child.columns
        self.template.check_columns(cols, where)
        self.template.check_renderable(dict(self.child.schema), where)
        for kind, names in (("by", self.by), ("order_by", self.order_by)):
            if not isinstance(names, tuple) or not all(isinstance(n, str) for n in names):
                raise PlanError(f"{where}: {kind} must be column names, got {names!r}")
            missing = [n for n in names if n not in cols]
            if missing:
                raise PlanError(f"{where}: {kind} column {missing[0]!r} not found; columns are "
                                f"{', '.join(map(repr, cols))}")
            if len(set(names)) != len(names):
                raise PlanError(f"{where}: {kind} names a column twice: {names!r}")
        if not isinstance(self.name, str) or not self.name:
            raise PlanError(f"{where}: name must be a non-empty string, got {self.name!r}")
        if self.name.startswith(RESERVED_PREFIX):
            raise PlanError(f"{where}: name {self.name!r} uses the reserved prefix {RESERVED_PREFIX!r}")
        if self.name in self.by:
            raise PlanError(f"{where}: the answer column {self.name!r} is also a group key; pass name='...' "
                            "with another name")
        if self.instruction is not None and not isinstance(self.instruction, str):
            raise PlanError(f"{where}: instruction must be a string, got {type(self.instruction).__name__}")
        if self.max_tokens is not None and not _positive_int(self.max_tokens):
            raise PlanError(f"{where}: max_tokens must be a positive integer, got {self.max_tokens!r}")
        if self.context_window is not None:
            if not _positive_int(self.context_window):
                raise PlanError(f"{where}: context_window must be a positive integer (tokens), "
                                f"got {self.context_window!r}")
            check_window(self.context_window, self.effective_max_tokens)
        super().__post_init__()

    # ------------------------------------------------------------------ schema and properties

    @property
    def effective_max_tokens(self) -> int:
        return self.max_tokens if self.max_tokens is not None else self.spec.default_max_tokens()

    @property
    def output_dtype(self) -> pl.DataType:
        return self.spec.polars_dtype() if isinstance(self.spec, JsonSpec) else pl.String()

    def _compute_schema(self) -> Schema:
        types = dict(self.child.schema)
        return tuple((k, types[k]) for k in self.by) + ((self.name, self.output_dtype),)

    @property
    def elementwise(self) -> bool:
        return False  # a group's answer depends on all its rows

    @property
    def unchanged(self) -> frozenset[str]:
        return frozenset()  # one row per group: no column holds its input rows' values row for row

    @property
    def produces(self) -> frozenset[str]:
        return frozenset((self.name,))

    @property
    def removable_if_unread(self) -> bool:
        return False  # it changes which rows exist

    def columns_needed(self, needed: Needed) -> tuple[Needed, ...]:
        return (frozenset(self.by) | frozenset(self.order_by) | frozenset(self.template.columns),)

    # ------------------------------------------------------------------ display

    def describe(self) -> str:
        flags = [f"by {', '.join(self.by)}" if self.by else "one group", f"max_tokens={self.effective_max_tokens}"]
        if self.context_window is not None:
            flags.append(f"context_window={self.context_window}")
        flags += option_flags(self)
        return f"SEMANTIC AGGREGATE -> {self.name} [{self.spec.describe()}; {', '.join(flags)}]"

    def detail_lines(self) -> list[str]:
        lines = [f"task: {self.task!r}", f"template: {self.template.source!r}"]
        if self.order_by:
            lines.append(f"order_by: {', '.join(self.order_by)}")
        if self.instruction:
            lines.append(f"instruction: {self.instruction!r}")
        return lines


def check_window(window: int, max_tokens: int) -> None:
    """A window too small for any reduce: it must hold two partial answers and the answer."""
    if window < 3 * max_tokens + 1:
        raise PlanError(
            f"semantic.aggregate: a context window of {window} tokens cannot hold two partial answers of "
            f"max_tokens={max_tokens} plus the answer ({3 * max_tokens} tokens before any instruction); "
            "lower max_tokens or use a larger context_window"
        )
