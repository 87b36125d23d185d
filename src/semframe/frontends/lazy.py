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

from semframe.accounting.estimate import PlanEstimate, estimate_plan
from semframe.config import existing_engine
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
    walk,
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

    def explain(self, *, optimized: bool = True, estimate: bool = True, engine: Any = None,
                filter_selectivity: float = 0.5) -> str:
        """The plan as text, root first (read it bottom-up), with the rewrites named and an estimate.

        Parameters
        ----------
        optimized
            Show the plan after the optimizer's rules (default) or as built.
        estimate
            Add the estimate of engine calls, tokens, time and cost (see :meth:`estimate`).
        engine
            Count tokens with this engine's tokenizer (it is not asked anything). By default the
            configured engine, if one exists; the default vLLM engine is never started to explain.
        filter_selectivity
            The share of rows a semantic filter is assumed to keep in the low estimate.

        Examples
        --------
        >>> import polars as pl
        >>> lf = pl.DataFrame({"title": ["Waterloo", "Soup", "Waterloo"]}).lazy()
        >>> print(lf.semantic.classify("title", ["YES", "NO"], name="eu").explain())  # doctest: +ELLIPSIS
        PLAN (optimized; rewrites: dedupe_prompts, shape_prompts)
        SEMANTIC CLASSIFY -> eu [one of YES, NO; max_tokens=5, dedupe, shared prefix first...]
        ...
        ESTIMATE (before running; tokens by heuristic (~4 characters per token))
          step 0 classify -> eu: 3 rows -> 2 engine calls; ~16 prompt + 1 output tokens per call
        ...
        """
        if not optimized:
            text = "PLAN (as built)\n" + explain_mod.render(self._plan_node)
            plan = optimize_traced(self._plan_node, RULES)[0] if estimate else None
        else:
            plan, applied = optimize_traced(self._plan_node, RULES)
            rewrites = ", ".join(applied) if applied else "none"
            text = f"PLAN (optimized; rewrites: {rewrites})\n" + explain_mod.render(plan)
        if not estimate:
            return text
        est = estimate_plan(plan, existing_engine(engine), filter_selectivity=filter_selectivity)
        return f"{text}\n{est}"

    def estimate(self, engine: Any = None, *, filter_selectivity: float = 0.5) -> PlanEstimate:
        """Estimate engine calls, tokens, time and cost of running the optimized plan, without running it.

        Tokens are counted with ``engine``'s tokenizer (or the configured engine's, if one exists);
        otherwise at about 4 characters per token. See :mod:`semframe.accounting.estimate`.

        Examples
        --------
        >>> import polars as pl, semframe as sf
        >>> lf = pl.DataFrame({"title": ["a", "b", "a"]}).lazy()
        >>> est = lf.semantic.classify("title", ["YES", "NO"]).estimate(sf.DeterministicEngine())
        >>> est.calls
        (2, 2)
        """
        plan = optimize_traced(self._plan_node, RULES)[0]
        return estimate_plan(plan, existing_engine(engine), filter_selectivity=filter_selectivity)

    def run(self, engine: Any = None, *, batch_size: int | None = None, cache: bool | None = None,
            lineage: bool | None = None, optimize: bool = True, max_cost: float | None = None,
            max_tokens: int | None = None, progress: bool | None = None) -> RunResult:
        """Run the plan and return the result with its lineage, metrics and cost.

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
        max_cost
            Stop before the local run's cost (engine seconds x the machine's hourly price) would
            exceed this many USD.
        max_tokens
            Stop before the engine's prompt + output tokens for the run would exceed this.
            On a stop, :class:`semframe.BudgetExceeded` is raised with the partial result in
            ``err.result``; answers already given stay in the cache for the next run.
        progress
            Show a progress bar (None: the ``sf.configure`` setting, which by default shows it
            only in a terminal or a notebook).

        Examples
        --------
        >>> import polars as pl, semframe as sf
        >>> r = pl.DataFrame({"t": ["a", "b", "a"]}).lazy().semantic.classify("t", ["YES", "NO"]).run(
        ...     sf.DeterministicEngine(), cache=False)
        >>> r.metrics.select("rows_in", "engine_requests", "dedup_hits").row(0)
        (3, 2, 1)
        """
        return run_plan(self._plan_node, engine=engine, batch_size=batch_size, cache=cache,
                        lineage=lineage, optimize=optimize, max_cost=max_cost, max_tokens=max_tokens,
                        progress=progress)

    def collect(self, engine: Any = None, **options: Any) -> pl.DataFrame:
        """Run the plan and return a polars DataFrame (options as for :meth:`run`)."""
        return self.run(engine, **options).df

    def __repr__(self) -> str:
        return f"<SemLazyFrame>\n{explain_mod.render(self._plan_node)}"

    def _repr_html_(self) -> str:
        import html

        plan, applied = optimize_traced(self._plan_node, RULES)
        text = f"PLAN (optimized; rewrites: {', '.join(applied) or 'none'})\n" + explain_mod.render(plan)
        out = f"<pre>{html.escape(text)}</pre>"
        # Estimating reads the data: do it for in-memory data only, never for a file scan on display.
        if all(n.source.in_memory for n in walk(plan) if isinstance(n, Scan)):
            out += estimate_plan(plan, existing_engine())._repr_html_()
        else:
            out += "<p>call .explain() or .estimate() for the estimated calls, tokens and cost</p>"
        return out


class LazyVerbs(SemanticVerbs):
    """Semantic verbs that add a step to a plan and return a :class:`SemLazyFrame`."""

    def _finish(self, node: Node, run_options: dict[str, Any]) -> SemLazyFrame:
        if run_options:
            raise TypeError(
                f"unexpected argument(s) {sorted(run_options)} for a lazy step; pass engine and run "
                "options to collect()"
            )
        return SemLazyFrame(node)


class _PlanVerbs(LazyVerbs):
    """``SemLazyFrame.semantic``: add a semantic step to the plan."""

    def __init__(self, frame: SemLazyFrame):
        self._frame = frame

    def _plan(self) -> Node:
        return self._frame.plan
