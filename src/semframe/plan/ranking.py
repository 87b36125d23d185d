"""Ranking plan nodes: ``semantic.topk`` (the k best rows, best first) and ``semantic.sort``
(every row, best first), decided by pairwise comparisons the model answers.

A ranking node says *what* to compare: the question (a template naming the two items as ``{a}``
and ``{b}``), what an item is (a per-row template, usually one column), how many rows to keep,
and the algorithm the user asked for (``"auto"``, ``"quickselect"`` or ``"score"``). *How* the
comparisons are organised into rounds is the physical operator's business
(:mod:`semframe.physical.ranking`).

A ranking is a barrier for the optimizer: which rows are compared decides which rows come out
(and in which order), so ``unchanged`` is empty on purpose and no relational filter ever moves
below one; ``head(n)`` over a ranking becomes a smaller ranking instead
(:mod:`semframe.optimizer.limit_rankings`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import polars as pl

from semframe.errors import PlanError
from semframe.plan.nodes import RESERVED_PREFIX, Needed, Node, Schema
from semframe.plan.semantic import SemanticNode, option_flags
from semframe.plan.spec import ChoiceSpec
from semframe.plan.template import Template

#: The algorithms a ranking may be asked to use (``"auto"`` lets the planner choose).
ALGORITHMS = ("auto", "quickselect", "score")

#: The answer of one comparison: which of the two items shown is the better one.
COMPARISON_SPEC = ChoiceSpec(("A", "B"))

#: The answer of one rating (``algorithm="score"``): an integer from 1 to 10.
SCORE_SPEC = ChoiceSpec(tuple(str(i) for i in range(1, 11)))

#: The names the question must use for the two items.
ITEM_NAMES = ("a", "b")


@dataclass(frozen=True)
class SemRank(SemanticNode):
    """Base of :class:`SemTopK` and :class:`SemSort`: rows ordered by the model's comparisons.

    Parameters
    ----------
    child
        The input.
    question
        The comparison, naming the two items as ``{a}`` and ``{b}``, e.g.
        ``"Which complaint is more urgent: {a} or {b}?"``.
    item
        Each row's text as an item (a column's text, or a template of columns).
    k
        How many rows to keep (None: every row, a full order).
    instruction
        Extra text shared by every comparison (put before the answer format).
    algorithm
        ``"auto"``, ``"quickselect"`` (pairwise comparisons in rounds) or ``"score"`` (each row
        rated once, 1-10; cheaper, coarser). ``"auto"`` means quickselect: see docs/ranking.md.
    both_orders
        Ask each comparison in both orders (twice the calls) and count an item the winner only
        if both answers agree; a disagreement is a tie, won by the earlier row.
    name
        The rank column (1 = best; UInt32).
    cache
        ``False`` keeps this step out of the persistent exact cache.
    engine
        The engine of this step (None: the run's).
    """

    child: Node
    question: Template
    item: Template
    k: int | None
    instruction: str | None = None
    algorithm: str = "auto"
    both_orders: bool = True
    name: str = "rank"
    cache: bool | None = None
    engine: Any = None

    operator: ClassVar[str] = "rank"
    temperature: ClassVar[float] = 0.0  # comparisons are greedy: reruns and dedup depend on it

    def __post_init__(self) -> None:
        where = f"semantic.{self.operator}"
        if not isinstance(self.question, Template):
            raise PlanError(f"{where}: the question must be a template string such as "
                            "'Which is more urgent: {a} or {b}?'")
        names = set(self.question.columns)
        if names != set(ITEM_NAMES):
            extra = sorted(names - set(ITEM_NAMES))
            hint = (f"; it names {', '.join('{' + c + '}' for c in extra)}: say which column the items come "
                    f"from with column=... (e.g. column={extra[0]!r})" if extra else "")
            raise PlanError(f"{where}: the question {self.question.source!r} must name both items as {{a}} and "
                            f"{{b}}, e.g. 'Which is more urgent: {{a}} or {{b}}?'{hint}")
        self.item.check_columns(self.child.columns, where)
        self.item.check_renderable(dict(self.child.schema), where)
        if self.k is not None and (not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 0):
            raise PlanError(f"{where}: k must be a non-negative integer, got {self.k!r}")
        if self.algorithm not in ALGORITHMS:
            raise PlanError(f"{where}: algorithm must be one of {', '.join(map(repr, ALGORITHMS))}, "
                            f"got {self.algorithm!r}")
        if not isinstance(self.both_orders, bool):
            raise PlanError(f"{where}: both_orders must be True or False, got {self.both_orders!r}")
        if self.instruction is not None and not isinstance(self.instruction, str):
            raise PlanError(f"{where}: instruction must be a string, got {type(self.instruction).__name__}")
        if not isinstance(self.name, str) or not self.name:
            raise PlanError(f"{where}: name must be a non-empty string, got {self.name!r}")
        if self.name.startswith(RESERVED_PREFIX):
            raise PlanError(f"{where}: name {self.name!r} uses the reserved prefix {RESERVED_PREFIX!r}")
        if self.name in self.child.columns:
            raise PlanError(f"{where}: the rank column {self.name!r} already exists; pass name='...' with a new "
                            f"name (columns are {', '.join(map(repr, self.child.columns))})")
        super().__post_init__()

    def _compute_schema(self) -> Schema:
        return self.child.schema + ((self.name, pl.UInt32()),)

    # ------------------------------------------------------------------ properties read by rules

    @property
    def elementwise(self) -> bool:
        return False  # a row's rank depends on every other row

    @property
    def unchanged(self) -> frozenset[str]:
        # Empty on purpose: a filter above a ranking must stay above it (the rows compared
        # decide the ranking), so pushdown_predicates never moves one below.
        return frozenset()

    @property
    def produces(self) -> frozenset[str]:
        return frozenset((self.name,))

    def columns_needed(self, needed: Needed) -> tuple[Needed, ...]:
        if needed is None:
            return (None,)
        return ((needed - self.produces) | set(self.item.columns),)

    @property
    def removable_if_unread(self) -> bool:
        return False  # it chooses and orders rows

    @property
    def effective_algorithm(self) -> str:
        """The algorithm that runs: ``"auto"`` is quickselect (see docs/ranking.md)."""
        return "quickselect" if self.algorithm == "auto" else self.algorithm

    # ------------------------------------------------------------------ display

    def flags(self) -> list[str]:
        flags = [self.effective_algorithm + (" (auto)" if self.algorithm == "auto" else "")]
        if self.effective_algorithm == "quickselect":
            flags.append("both orders" if self.both_orders else "one order")
        return flags + option_flags(self)

    def head_label(self) -> str:
        return f"SEMANTIC {self.operator.upper()}" + (f" {self.k}" if self.k is not None else "")

    def describe(self) -> str:
        return f"{self.head_label()} -> {self.name} [{', '.join(self.flags())}]"

    def detail_lines(self) -> list[str]:
        lines = [f"question: {self.question.source!r}", f"item: {self.item.source!r}"]
        if self.instruction:
            lines.append(f"instruction: {self.instruction!r}")
        return lines


@dataclass(frozen=True)
class SemTopK(SemRank):
    """The ``k`` best rows, best first, with their rank (1..k) in ``name``.

    Rows whose item text is null or blank are never compared and never returned -- unless
    ``keep_unranked`` (set by the optimizer when it folds ``sort().head(n)`` into a top-k): then
    they fill the k rows after the ranked ones, unranked, as the sort's head would show them.
    """

    keep_unranked: bool = False

    operator: ClassVar[str] = "topk"

    def flags(self) -> list[str]:
        flags = super().flags()
        return [*flags, "unranked rows last"] if self.keep_unranked else flags
    rows: ClassVar[str] = "subset"  # some input rows (reordered; elementwise is False: a barrier)

    def __post_init__(self) -> None:
        if self.k is None:
            raise PlanError("semantic.topk: give k, the number of rows to keep (semantic.sort orders every row)")
        super().__post_init__()


@dataclass(frozen=True)
class SemSort(SemRank):
    """Every row, best first, with its rank in ``name``; rows whose item text is null or blank
    come last, in input order, with a null rank."""

    k: int | None = None

    operator: ClassVar[str] = "sort"
    rows: ClassVar[str] = "permutation"

    def __post_init__(self) -> None:
        if self.k is not None:
            raise PlanError("semantic.sort orders every row; use semantic.topk(k, ...) for the k best")
        super().__post_init__()
