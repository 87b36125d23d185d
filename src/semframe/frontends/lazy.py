"""``SemLazyFrame``: a lazy plan that mixes polars steps and semantic steps.

It is what ``pl.LazyFrame.semantic.<verb>`` returns. Relational methods mirror polars'
(``filter``, ``select``, ``with_columns``, ``head``/``limit``, ``sort``, ``drop``, ``rename``),
``.semantic`` adds more semantic steps, ``explain()`` shows the optimized plan and
``collect()`` runs it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import reduce
from typing import Any

import polars as pl

from semframe.errors import PlanError
from semframe.execution.executor import RunResult
from semframe.execution.run import run_plan
from semframe.frontends.verbs import SemanticVerbs
from semframe.optimizer import RULES, optimize_traced
from semframe.plan import explain as explain_mod
from semframe.plan.nodes import (
    Drop,
    Filter,
    Head,
    Node,
    PlExpr,
    Rename,
    Scan,
    Select,
    Sort,
    Source,
    WithColumns,
)


def _exprs(where: str, exprs: Iterable[Any], named: Mapping[str, Any]) -> tuple[PlExpr, ...]:
    flat: list[Any] = []
    for e in exprs:
        flat.extend(e if isinstance(e, (list, tuple)) else [e])
    out = [PlExpr.of(e, where) for e in flat]
    for alias, e in named.items():
        expr = e if isinstance(e, pl.Expr) else pl.lit(e)
        out.append(PlExpr(expr.alias(alias)))
    if not out:
        raise PlanError(f"{where}: give at least one column or expression")
    return tuple(out)


class SemLazyFrame:
    """A lazy plan over a table; nothing runs until :meth:`collect`.

    Examples
    --------
    >>> import polars as pl, semframe as sf
    >>> lf = pl.DataFrame({"title": ["Waterloo", "Soup"], "year": [1815, 2001]}).lazy()
    >>> plan = lf.semantic.classify("title", ["YES", "NO"], name="eu").filter(pl.col("year") < 1900)
    >>> plan.collect(engine=sf.DeterministicEngine()).columns
    ['title', 'year', 'eu']
    """

    def __init__(self, plan: Node):
        self._plan_node = plan

    @classmethod
    def from_data(cls, data: pl.DataFrame | pl.LazyFrame, description: str | None = None) -> SemLazyFrame:
        return cls(Scan(Source.from_data(data, description)))

    # ------------------------------------------------------------------ plan

    @property
    def plan(self) -> Node:
        """The plan as built (before optimization)."""
        return self._plan_node

    @property
    def semantic(self) -> _PlanVerbs:
        """The semantic verbs: ``classify``, ``filter``, ``extract``, ``map``."""
        return _PlanVerbs(self)

    @property
    def columns(self) -> list[str]:
        return list(self._plan_node.columns)

    def collect_schema(self) -> pl.Schema:
        return pl.Schema(dict(self._plan_node.schema))

    @property
    def schema(self) -> pl.Schema:
        return self.collect_schema()

    def _then(self, node: Node) -> SemLazyFrame:
        return SemLazyFrame(node)

    # ------------------------------------------------------------------ relational steps

    def filter(self, *predicates: Any, **constraints: Any) -> SemLazyFrame:
        """Keep rows where every predicate holds (like ``pl.LazyFrame.filter``)."""
        exprs = [p.expr for p in _exprs("filter", predicates, {})] if predicates else []
        exprs += [pl.col(name) == value for name, value in constraints.items()]
        if not exprs:
            raise PlanError("filter: give at least one predicate")
        return self._then(Filter(self._plan_node, PlExpr(reduce(lambda a, b: a & b, exprs))))

    def select(self, *exprs: Any, **named: Any) -> SemLazyFrame:
        return self._then(Select(self._plan_node, _exprs("select", exprs, named)))

    def with_columns(self, *exprs: Any, **named: Any) -> SemLazyFrame:
        return self._then(WithColumns(self._plan_node, _exprs("with_columns", exprs, named)))

    def head(self, n: int = 5) -> SemLazyFrame:
        return self._then(Head(self._plan_node, n))

    limit = head

    def sort(self, by: Any, *more_by: Any, descending: bool | Sequence[bool] = False,
             nulls_last: bool = False) -> SemLazyFrame:
        keys = _exprs("sort", (by, *more_by), {})
        flags = (descending,) * len(keys) if isinstance(descending, bool) else tuple(descending)
        return self._then(Sort(self._plan_node, keys, flags, nulls_last))

    def drop(self, *columns: str | Sequence[str]) -> SemLazyFrame:
        names: list[str] = []
        for c in columns:
            names.extend([c] if isinstance(c, str) else c)
        return self._then(Drop(self._plan_node, tuple(names)))

    def rename(self, mapping: Mapping[str, str]) -> SemLazyFrame:
        return self._then(Rename(self._plan_node, tuple(mapping.items())))

    # ------------------------------------------------------------------ inspection and execution

    def explain(self, *, optimized: bool = True) -> str:
        """The plan as text, root first (read it bottom-up), with the rewrites named.

        Parameters
        ----------
        optimized
            Show the plan after the optimizer's rules (default) or as built.
        """
        if not optimized:
            return "PLAN (as built)\n" + explain_mod.render(self._plan_node)
        plan, applied = optimize_traced(self._plan_node, RULES)
        rewrites = ", ".join(applied) if applied else "none"
        return f"PLAN (optimized; rewrites: {rewrites})\n" + explain_mod.render(plan)

    def run(self, engine: Any = None, *, batch_size: int | None = None, cache: bool | None = None,
            lineage: bool | None = None, optimize: bool = True) -> RunResult:
        """Run the plan and return the result with its lineage and metrics.

        Parameters
        ----------
        engine
            Overrides the process default (``sf.configure(engine=...)``) for this run.
        batch_size
            Rows per engine batch.
        cache
            ``False`` skips the persistent exact cache for this run.
        lineage
            ``False`` skips per-cell lineage recording.
        optimize
            ``False`` runs the plan as built (for comparisons).
        """
        return run_plan(self._plan_node, engine=engine, batch_size=batch_size, cache=cache,
                        lineage=lineage, optimize=optimize)

    def collect(self, engine: Any = None, **options: Any) -> pl.DataFrame:
        """Run the plan and return a polars DataFrame (options as for :meth:`run`)."""
        return self.run(engine, **options).df

    def __repr__(self) -> str:
        return f"<SemLazyFrame>\n{explain_mod.render(self._plan_node)}"

    def _repr_html_(self) -> str:
        import html

        return f"<pre>{html.escape(self.explain(optimized=False))}</pre>"


class _PlanVerbs(SemanticVerbs):
    """``SemLazyFrame.semantic``: add a semantic step to the plan."""

    def __init__(self, frame: SemLazyFrame):
        self._frame = frame

    def _plan(self) -> Node:
        return self._frame.plan

    def _finish(self, node: Node, run_options: dict[str, Any]) -> SemLazyFrame:
        if run_options:
            raise TypeError(
                f"unexpected argument(s) {sorted(run_options)} for a lazy step; pass engine and run "
                "options to collect()"
            )
        return SemLazyFrame(node)
