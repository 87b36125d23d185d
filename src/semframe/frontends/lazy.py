"""``SemLazyFrame``: a lazy plan that mixes polars steps and semantic steps.

It is what ``pl.LazyFrame.semantic.<verb>`` returns, and it has the whole ``pl.LazyFrame`` API:

- ``filter``, ``select``, ``with_columns``, ``head``/``limit``, ``sort``, ``drop`` and ``rename``
  build nodes the optimizer understands (it moves filters, projections and heads through them);
- every other LazyFrame method -- ``join`` (with a polars frame or another semframe plan),
  ``group_by(...).agg(...)``, ``unique``, ``explode``, ``unnest``, ``with_row_index``,
  ``unpivot``, ... -- builds a :class:`~semframe.plan.nodes.PolarsCall` step through one
  mechanism (:meth:`SemLazyFrame.__getattr__`), so the API grows with polars'; the optimizer
  treats such steps as barriers;
- ``pipe`` calls a function with the plan, ``sink_parquet``/``sink_csv``/``sink_ndjson``/``sink_ipc``
  run the plan and write its result;
- ``.semantic`` adds more semantic steps, ``explain()`` shows the physical plan, ``estimate()``
  what it will cost, and ``collect()``/``run()`` run it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import reduce
from typing import Any

import polars as pl

from semframe.accounting.estimate import PlanEstimate
from semframe.engines.registry import existing_engine
from semframe.errors import PlanError
from semframe.execution.context import RunOptions
from semframe.execution.result import RunResult
from semframe.frontends.verbs import SemanticVerbs
from semframe.optimizer import RULES, optimize_traced
from semframe.physical.executor import estimate_plan, run_plan
from semframe.physical.planner import plan_physical, render
from semframe.plan.expr import PlExpr
from semframe.plan.nodes import (
    Call,
    Drop,
    Filter,
    Head,
    Node,
    PolarsCall,
    Rename,
    Scan,
    Select,
    Sort,
    Source,
    WithColumns,
    empty_frame,
    freeze,
    thaw,
)

#: Run options every runner accepts (``collect``, ``run``, ``sink_*``, eager verbs).
RUN_OPTIONS = ("engine", "batch_size", "cache", "lineage", "optimize", "max_cost", "max_tokens", "progress",
               "dedupe", "prompt_layout", "on_error")
#: LazyFrame methods that would run the query or have effects outside the plan when called.
_EAGER_PREFIXES = ("collect", "sink_", "profile", "show", "fetch", "explain", "serialize", "remote", "execute",
                   "describe", "deserialize", "from_")


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


def as_plan(value: Any) -> Node | None:
    """The plan of a frame-like value (a semframe plan, a polars LazyFrame or DataFrame), else None."""
    if isinstance(value, SemLazyFrame):
        return value.plan
    if isinstance(value, (pl.LazyFrame, pl.DataFrame)):
        return Scan(Source.from_data(value))
    return None


def _split_run_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: kwargs.pop(k) for k in list(kwargs) if k in RUN_OPTIONS}


def _planning_options() -> tuple[str, ...]:
    """What ``explain()`` and ``estimate()`` accept as ``**options`` (RunOptions' fields)."""
    from dataclasses import fields

    return tuple(f.name for f in fields(RunOptions))


def unexpected_arguments(where: str, given: Iterable[str], allowed: Sequence[str], *,
                         note: str = "") -> TypeError:
    """A TypeError naming ``where``, each unexpected argument (with the closest valid one) and the valid ones."""
    import difflib

    parts = []
    for name in sorted(given):
        close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
        parts.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    noun = "argument" if len(parts) == 1 else "arguments"
    return TypeError(f"{where} got an unexpected {noun} {', '.join(parts)}; "
                     f"its options are {', '.join(allowed)}{note}")


def verb_options(operator: str) -> tuple[str, ...]:
    """The keyword options of semantic verb ``operator`` (``"classify"`` ...), in signature order."""
    import inspect

    sig = inspect.signature(getattr(SemanticVerbs, operator))
    return tuple(p.name for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY)


def check_verb_options(operator: str, run_options: Mapping[str, Any], *, eager: bool) -> None:
    """Raise a clear TypeError for an argument a semantic verb does not take.

    An eager verb (``pl.DataFrame.semantic``, pandas) also takes the run options; a lazy step
    takes none (they go to ``collect()``).
    """
    where = f"semantic.{operator}()"
    own = verb_options(operator)
    runs = tuple(o for o in RUN_OPTIONS if o not in own)
    if eager:
        unknown = [k for k in run_options if k not in runs]
        if unknown:
            raise unexpected_arguments(where, unknown, own + runs)
        return
    if not run_options:
        return
    misplaced = sorted(k for k in run_options if k in runs)
    unknown = [k for k in run_options if k not in runs]
    if unknown:
        note = (f" (run options such as {', '.join(misplaced)} go to .collect() or .run())" if misplaced else "")
        raise unexpected_arguments(where, unknown, own, note=note)
    raise TypeError(f"{where}: {', '.join(misplaced)} {'is a run option' if len(misplaced) == 1 else 'are run options'}"
                    f" and a lazy step takes none; pass {', '.join(f'{k}=...' for k in misplaced)} to .collect() "
                    "or .run()")


class SemLazyFrame:
    """A lazy plan over a table; nothing runs until :meth:`collect`.

    Examples
    --------
    >>> import polars as pl, semframe as sf
    >>> lf = pl.DataFrame({"title": ["Waterloo", "Soup"], "year": [1815, 2001]}).lazy()
    >>> plan = lf.semantic.classify("title", ["YES", "NO"], name="eu").filter(pl.col("year") < 1900)
    >>> plan.collect(engine=sf.DeterministicEngine()).columns
    ['title', 'year', 'eu']
    >>> plan.with_row_index("i").collect(engine=sf.DeterministicEngine()).columns
    ['i', 'title', 'year', 'eu']
    """

    def __init__(self, plan: Node):
        self._plan_node = plan

    @classmethod
    def from_data(cls, data: pl.DataFrame | pl.LazyFrame, description: str | None = None) -> SemLazyFrame:
        return cls(Scan(Source.from_data(data, description)))

    # ------------------------------------------------------------------ plan

    @property
    def plan(self) -> Node:
        """The logical plan as built (before optimization)."""
        return self._plan_node

    @property
    def semantic(self) -> _PlanVerbs:
        """The semantic verbs: ``classify``, ``filter``, ``extract``, ``map``."""
        return _PlanVerbs(self)

    @property
    def sf(self) -> _PlanVerbs:
        """The alias of :attr:`semantic` (as ``.sf`` is on polars and pandas frames)."""
        return _PlanVerbs(self)

    @property
    def columns(self) -> list[str]:
        return list(self._plan_node.columns)

    def collect_schema(self) -> pl.Schema:
        return pl.Schema(dict(self._plan_node.schema))

    @property
    def schema(self) -> pl.Schema:
        return self.collect_schema()

    @property
    def dtypes(self) -> list[pl.DataType]:
        return [dtype for _, dtype in self._plan_node.schema]

    @property
    def width(self) -> int:
        return len(self._plan_node.schema)

    def lazy(self) -> SemLazyFrame:
        return self

    def _then(self, node: Node) -> SemLazyFrame:
        return SemLazyFrame(node)

    # ------------------------------------------------------------------ steps the optimizer understands

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
             nulls_last: bool = False, maintain_order: bool = False, multithreaded: bool = True) -> SemLazyFrame:
        """Sort rows (like ``pl.LazyFrame.sort``). Sorts here are always stable, so
        ``maintain_order`` is accepted and always holds; ``multithreaded`` is polars' business."""
        keys = _exprs("sort", (by, *more_by), {})
        flags = (descending,) * len(keys) if isinstance(descending, bool) else tuple(descending)
        return self._then(Sort(self._plan_node, keys, flags, nulls_last))

    def drop(self, *columns: Any, strict: bool = True) -> SemLazyFrame:
        """Drop columns by name (like ``pl.LazyFrame.drop``); selectors and expressions work too."""
        names: list[Any] = []
        for c in columns:
            names.extend([c] if isinstance(c, (str, pl.Expr)) else c)
        if any(not isinstance(c, str) for c in names):
            return self._call_method("drop", tuple(names), {"strict": strict})  # a polars step
        missing = [c for c in names if c not in self.columns]
        if missing and strict:
            raise PlanError(f"drop: column {missing[0]!r} not found; columns are "
                            f"{', '.join(map(repr, self.columns))}")
        return self._then(Drop(self._plan_node, tuple(c for c in names if c in self.columns)))

    def rename(self, mapping: Mapping[str, str] | Any, *, strict: bool = True) -> SemLazyFrame:
        """Rename columns (like ``pl.LazyFrame.rename``); ``strict=False`` skips names not present."""
        if not isinstance(mapping, Mapping):
            return self._call_method("rename", (mapping,), {"strict": strict})  # a function of names
        if not strict:
            mapping = {old: new for old, new in mapping.items() if old in self.columns}
        return self._then(Rename(self._plan_node, tuple(mapping.items())))

    # ------------------------------------------------------------------ the rest of polars' API

    def pipe(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        """``function(self, *args, **kwargs)``, as ``pl.LazyFrame.pipe``."""
        return function(self, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        attr = getattr(pl.LazyFrame, name, None)
        if attr is None or not callable(attr):
            raise AttributeError(f"'SemLazyFrame' object has no attribute {name!r} (nor has pl.LazyFrame)")
        if name.startswith(_EAGER_PREFIXES):
            raise AttributeError(
                f"SemLazyFrame.{name} is not available: it would run the query outside semframe. "
                f"Run the plan with .collect() (or .run()) and call .{name}() on the resulting DataFrame"
            )

        def method(*args: Any, **kwargs: Any) -> Any:
            return self._call_method(name, args, kwargs)

        method.__name__ = name
        method.__doc__ = f"``pl.LazyFrame.{name}`` as a plan step (see polars' documentation)."
        return method

    def _call_method(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return _Pending(self._plan_node, ()).call(name, args, kwargs)

    def __dir__(self) -> list[str]:
        own = set(super().__dir__())
        polars = {m for m in dir(pl.LazyFrame) if not m.startswith(("_", *_EAGER_PREFIXES))}
        return sorted(own | polars)

    # ------------------------------------------------------------------ writing results

    def _sink(self, method: str, path: Any, kwargs: dict[str, Any]) -> RunResult:
        from semframe.physical.sinks import SINKS

        executor = kwargs.pop("executor", None)
        options = _split_run_options(kwargs)
        if executor is None and options.get("engine") is not None:
            existing_engine(options["engine"])  # a clear error for anything but an Engine
        sink = SINKS[method](path, self.collect_schema(), **kwargs)
        if executor is not None:  # the executor checks the engine (a name or a function making one)
            return executor.run(self._plan_node, sink=sink, **options)
        return run_plan(self._plan_node, sink=sink, **options)

    def sink_parquet(self, path: Any, **kwargs: Any) -> RunResult:
        """Run the plan and write the result to Parquet, batch by batch (memory stays flat).

        Accepts ``compression``, ``compression_level``, ``statistics``, ``row_group_size`` and
        every run option of :meth:`run`. The file appears when the run completes. Returns the
        run's :class:`RunResult` (lineage, metrics, cost; ``rows_written``; an empty ``df``).

        Examples
        --------
        >>> import polars as pl, semframe as sf, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "out.parquet")
        >>> plan = pl.DataFrame({"t": ["a", "b"]}).lazy().semantic.classify("t", ["YES", "NO"], name="c")
        >>> plan.sink_parquet(path, engine=sf.DeterministicEngine()).rows_written
        2
        >>> pl.read_parquet(path).columns
        ['t', 'c']
        """
        return self._sink("sink_parquet", path, kwargs)

    def sink_csv(self, path: Any, **kwargs: Any) -> RunResult:
        """Run the plan and write the result to CSV, batch by batch (polars' ``write_csv`` options
        such as ``separator``; see :meth:`sink_parquet`)."""
        return self._sink("sink_csv", path, kwargs)

    def sink_ndjson(self, path: Any, **kwargs: Any) -> RunResult:
        """Run the plan and write the result as newline-delimited JSON (see :meth:`sink_parquet`)."""
        return self._sink("sink_ndjson", path, kwargs)

    def sink_ipc(self, path: Any, **kwargs: Any) -> RunResult:
        """Run the plan and write the result to an Arrow IPC file (``compression``; see :meth:`sink_parquet`)."""
        return self._sink("sink_ipc", path, kwargs)

    def write_batch(self, path: Any, engine: Any = None, **options: Any) -> Any:
        """Write the requests a run would still send (after dedup and the exact cache) as an
        OpenAI Batch API input file; load the answers with :func:`semframe.read_batch_results`.

        ``engine`` (None: the configured one) names the model and keys the cache; it is never
        asked. ``options``: planning options as for :meth:`run` (use the same for the run after).
        Returns a summary (``requests``, ``cached``, ``waiting`` steps, ``path``). See
        docs/engines.md, "Batch files".

        Examples
        --------
        >>> import polars as pl, semframe as sf, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "batch.jsonl")
        >>> df = pl.DataFrame({"t": ["batch me", "and me", "batch me"]})
        >>> plan = df.lazy().semantic.classify("t", ["YES", "NO"], name="c")
        >>> plan.write_batch(path, engine=sf.DeterministicEngine()).requests  # a repeat is asked once
        2
        """
        from semframe.physical.batchfile import write_batch

        _check_planning_options("write_batch()", options, extra=("engine",))
        if engine is not None:
            existing_engine(engine)  # a clear error for anything but an Engine
        return write_batch(self._plan_node, path, engine, **options)

    # ------------------------------------------------------------------ plans as files

    def serialize(self, file: Any = None, *, embed_limit: int | None = 1 << 20) -> str | None:
        """The whole plan as a versioned JSON plan file (``sf.deserialize`` reads it back).

        Scans of files are saved by path and options (build them with ``sf.scan_parquet`` ...),
        small in-memory data is embedded as Arrow IPC (at most ``embed_limit`` bytes, default 1 MiB;
        None: no limit), polars expressions in polars' JSON form, semantic steps with every option.
        A plan holding Python code (``pipe``, a UDF expression, a function argument) is refused.
        With ``file`` (a path or a text file object) the JSON is written there and None returned.
        The format is described in ``docs/cli.md`` ("Plan files").

        Examples
        --------
        >>> import polars as pl, semframe as sf
        >>> plan = pl.DataFrame({"t": ["a", "b"]}).lazy().semantic.classify("t", ["YES", "NO"], name="c")
        >>> again = sf.deserialize(plan.serialize())
        >>> again.collect(engine=sf.DeterministicEngine()).columns
        ['t', 'c']
        """
        from semframe.plan.serialize import dumps

        text = dumps(self._plan_node, embed_limit=embed_limit)
        if file is None:
            return text
        if hasattr(file, "write"):
            file.write(text)
        else:
            from pathlib import Path

            Path(file).expanduser().write_text(text + "\n", encoding="utf-8")
        return None

    # ------------------------------------------------------------------ inspection and execution

    def explain(self, *, optimized: bool = True, estimate: bool = False, engine: Any = None,
                filter_selectivity: float = 0.5, **options: Any) -> str:
        """The physical plan as text, root first (read it bottom-up), with the rewrites named.

        Parameters
        ----------
        optimized
            Show the plan after the optimizer's rules (default), or as it runs with ``optimize=False``.
        estimate
            Add the estimate of engine calls, tokens, time and cost (see :meth:`estimate`). This
            reads the data; without it, explain reads nothing.
        engine
            Count tokens with this engine's tokenizer (it is not asked anything). By default the
            configured engine, if one exists; the default vLLM engine is never started to explain.
        filter_selectivity
            The share of rows a semantic filter is assumed to keep in the low estimate.
        **options
            Planning options as for :meth:`run` (``dedupe``, ``prompt_layout``, ``cache`` ...).

        Examples
        --------
        >>> import polars as pl
        >>> lf = pl.DataFrame({"title": ["Waterloo", "Soup", "Waterloo"]}).lazy()
        >>> print(lf.semantic.classify("title", ["YES", "NO"], name="eu").explain())  # doctest: +ELLIPSIS
        PLAN (optimized; rewrites: none)
        SEMANTIC CLASSIFY -> eu (step 0) [one of YES, NO; max_tokens=5, dedupe, shared prefix first, exact cache]
            template: '{title}'
          POLARS QUERY
            SCAN LazyFrame [title]
        """
        _check_planning_options("explain()", options, extra=("optimized", "estimate", "engine", "filter_selectivity"))
        head, root = self._physical(optimized, options)
        text = f"{head}\n{render(root)}"
        if not estimate:
            return text
        est = estimate_plan(self._plan_node, existing_engine(engine), filter_selectivity=filter_selectivity,
                            **{**options, "optimize": optimized})
        return f"{text}\n{est}"

    def _physical(self, optimized: bool, options: Mapping[str, Any]) -> tuple[str, Any]:
        """The header that says which plan is shown, and its physical operators."""
        opts = RunOptions.resolve(_settings(), **{**options, "optimize": optimized})
        if optimized:
            plan, applied = optimize_traced(self._plan_node, RULES)
            head = f"PLAN (optimized; rewrites: {', '.join(applied) if applied else 'none'})"
        else:
            plan, head = self._plan_node, "PLAN (as built, not optimized)"
        return head, plan_physical(plan, opts)

    def estimate(self, engine: Any = None, *, filter_selectivity: float = 0.5, **options: Any) -> PlanEstimate:
        """Estimate engine calls, tokens, time and cost of running the plan, without running it.

        It walks the same physical operators the run executes, on the data (so it reads it).
        Tokens are counted with ``engine``'s tokenizer (or the configured engine's, if one exists);
        otherwise at about 4 characters per token. Planning options as for :meth:`run`.

        Examples
        --------
        >>> import polars as pl, semframe as sf
        >>> lf = pl.DataFrame({"title": ["a", "b", "a"]}).lazy()
        >>> est = lf.semantic.classify("title", ["YES", "NO"]).estimate(sf.DeterministicEngine())
        >>> est.calls
        (2, 2)
        """
        _check_planning_options("estimate()", options, extra=("engine", "filter_selectivity"))
        return estimate_plan(self._plan_node, existing_engine(engine), filter_selectivity=filter_selectivity,
                             **options)

    def run(self, engine: Any = None, *, batch_size: int | None = None, cache: bool | None = None,
            lineage: bool | None = None, optimize: bool | None = None, max_cost: float | None = None,
            max_tokens: int | None = None, progress: bool | None = None, dedupe: bool | None = None,
            prompt_layout: str | None = None, on_error: str | None = None, executor: Any = None) -> RunResult:
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
            ``False`` runs the plan as built, without the optimizer's rewrites (results are the
            same; the engine may be asked about more rows).
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
        dedupe
            ``False`` asks the engine once per row even for repeated requests.
        prompt_layout
            ``"shared_first"`` (default) or ``"inline"`` (see :mod:`semframe.physical.prompts`).
        on_error
            ``"null"`` (default): a batch the engine fails is retried, then split so that only the
            request(s) it cannot answer get a null (with the reason in the lineage) and the run
            completes; ``"raise"``: stop with :class:`semframe.EngineFailure` (naming the step and
            batch, with the partial result in ``err.result``).
        executor
            Where the plan runs: None (this process), or e.g. ``sf.RayExecutor(num_actors=2)`` to
            run its semantic steps on a Ray cluster (docs/scale-out.md).

        Examples
        --------
        >>> import polars as pl, semframe as sf
        >>> r = pl.DataFrame({"t": ["a", "b", "a"]}).lazy().semantic.classify("t", ["YES", "NO"]).run(
        ...     sf.DeterministicEngine(), cache=False)
        >>> r.metrics.select("rows_in", "engine_requests", "dedup_hits").row(0)
        (3, 2, 1)
        """
        if executor is not None:  # the executor checks the engine (a name or a function making one)
            return executor.run(self._plan_node, engine=engine, batch_size=batch_size, cache=cache, lineage=lineage,
                                optimize=optimize, max_cost=max_cost, max_tokens=max_tokens, progress=progress,
                                dedupe=dedupe, prompt_layout=prompt_layout, on_error=on_error)
        if engine is not None:
            existing_engine(engine)  # a clear error for anything but an Engine, also when no step needs one
        return run_plan(self._plan_node, engine=engine, batch_size=batch_size, cache=cache, lineage=lineage,
                        optimize=optimize, max_cost=max_cost, max_tokens=max_tokens, progress=progress,
                        dedupe=dedupe, prompt_layout=prompt_layout, on_error=on_error)

    def collect(self, engine: Any = None, *, executor: Any = None, **options: Any) -> pl.DataFrame:
        """Run the plan and return a polars DataFrame (options as for :meth:`run`)."""
        unknown = [k for k in options if k not in RUN_OPTIONS]
        if unknown:
            raise unexpected_arguments("collect()", unknown, RUN_OPTIONS)
        return self.run(engine, executor=executor, **options).df

    def __repr__(self) -> str:
        return f"<SemLazyFrame>\n{self.explain()}"

    def _repr_html_(self) -> str:
        """The drawn plan: the same plan as the text repr (the optimized physical plan, as the
        header says), as a tree of operators, each with its estimated rows, engine calls, tokens and
        cost -- estimated only when every scan is in memory (display never reads a file)."""
        from semframe.frontends.display import in_memory, plan_html

        head, root = self._physical(True, {})
        return plan_html(head, root, estimate=in_memory(self._plan_node), engine=existing_engine(None))


def _check_planning_options(where: str, options: Mapping[str, Any], extra: tuple[str, ...]) -> None:
    allowed = _planning_options()
    unknown = [k for k in options if k not in allowed]
    if unknown:
        raise unexpected_arguments(where, unknown, (*extra, *allowed))


def _settings() -> Any:
    from semframe import config

    return config.settings


class _Pending:
    """A chain of polars method calls not yet ending in a LazyFrame (``group_by(...)`` before ``.agg``)."""

    def __init__(self, base: Node, calls: tuple[Call, ...], inputs: tuple[Node, ...] = ()):
        self._base = base
        self._calls = calls
        self._inputs = inputs

    @property
    def semantic(self) -> Any:
        """``group_by("a", ...).semantic.aggregate(...)``: ``semantic.aggregate(..., by=["a", ...])``.

        Only right after one ``group_by`` of plain column names (else a PlanError says why).
        """
        from semframe.frontends.aggregate_verbs import GroupedSemantic, group_keys

        return GroupedSemantic(_PlanVerbs(SemLazyFrame(self._base)), group_keys(self._calls))

    def call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        inputs: list[Node] = list(self._inputs)
        shift = 1  # InputRef 0 is the frame the chain starts from
        extra: list[Node] = []
        frozen_args = tuple(freeze(a, extra, as_plan) for a in args)
        frozen_kwargs = tuple((k, freeze(v, extra, as_plan)) for k, v in kwargs.items())
        if extra:
            offset = len(inputs) + shift
            frozen_args = tuple(_renumber(a, offset) for a in frozen_args)
            frozen_kwargs = tuple((k, _renumber(v, offset)) for k, v in frozen_kwargs)
            inputs.extend(extra)
        calls = (*self._calls, Call(name, frozen_args, frozen_kwargs))
        all_inputs = (self._base, *inputs)
        frames = tuple(empty_frame(n.schema) for n in all_inputs)
        obj: Any = frames[0]
        where = ".".join(c.name for c in calls)
        try:
            for c in calls:
                obj = c.apply(obj, frames)
        except (pl.exceptions.PolarsError, TypeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PlanError(f"{where}: {first}; columns are {', '.join(map(repr, self._base.columns))}") from None
        if isinstance(obj, pl.LazyFrame):
            return SemLazyFrame(PolarsCall(all_inputs, calls))
        if isinstance(obj, (pl.DataFrame, pl.Series)) or not hasattr(obj, "__class__") or isinstance(
                obj, (int, float, str, bool, type(None))):
            raise PlanError(f"{where} does not return a LazyFrame; run the plan with .collect() first")
        return _Pending(self._base, calls, tuple(inputs))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)

        def method(*args: Any, **kwargs: Any) -> Any:
            return self.call(name, args, kwargs)

        method.__name__ = name
        return method


def _renumber(value: Any, offset: int) -> Any:
    """Shift the InputRefs of freshly frozen arguments past the inputs the chain already has."""
    from semframe.plan.nodes import FrozenDict, FrozenList, InputRef

    if isinstance(value, InputRef):
        return InputRef(value.index + offset)
    if isinstance(value, FrozenList):
        return FrozenList(_renumber(v, offset) for v in value)
    if isinstance(value, FrozenDict):
        return FrozenDict((k, _renumber(v, offset)) for k, v in value)
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_renumber(v, offset) for v in value)
    return value


class LazyVerbs(SemanticVerbs):
    """Semantic verbs that add a step to a plan and return a :class:`SemLazyFrame`."""

    def _finish(self, node: Node, run_options: dict[str, Any]) -> SemLazyFrame:
        # On a lazy step, engine= names the engine of that step (a model per step).
        engine = run_options.pop("engine", None)
        check_verb_options(node.operator, run_options, eager=False)  # type: ignore[attr-defined]
        if engine is not None:
            from dataclasses import replace

            from semframe.engines.registry import check_engine

            node = replace(node, engine=check_engine(engine, f"semantic.{node.operator}"))  # type: ignore[arg-type]
        return SemLazyFrame(node)


class _PlanVerbs(LazyVerbs):
    """``SemLazyFrame.semantic``: add a semantic step to the plan."""

    def __init__(self, frame: SemLazyFrame):
        self._frame = frame

    def _plan(self) -> Node:
        return self._frame.plan
