"""SQL functions in DuckDB: ``sem_classify``, ``sem_filter``, ``sem_extract``, ``sem_map``.

``sf.duckdb.register(con)`` adds four SQL functions to a DuckDB connection::

    sem_classify(text, labels [, instruction] [, max_tokens := n])  -> VARCHAR (one of labels, or NULL)
    sem_filter(text, question [, max_tokens := n])                  -> BOOLEAN (NULL where no answer)
    sem_extract(text, schema [, instruction] [, max_tokens := n])   -> STRUCT typed by the schema
    sem_map(text, template [, instruction] [, max_tokens := n])     -> VARCHAR

``text`` is any expression (cast to VARCHAR); the other arguments are constants (they may vary
by row: rows are grouped by their arguments, each group one step). ``question`` and ``template``
may reference the text as ``{text}`` (``'Is {text} about a war?'``); without a reference they are
the instruction and the text follows. ``schema`` is JSON text in the short form
(``'{"place": "str", "year": "int"}'``, DuckDB type names work too) or a JSON Schema (see
:mod:`semframe.frontends.schemas`).

**One run per query.** DuckDB calls a vectorized (Arrow) function once per chunk of up to 2048
rows, on whatever thread runs that pipeline. The functions share one *run* -- one answer
resolver (the in-run dedup memo, the exact cache, the semantic cache), one lineage recorder,
one budget and one set of step metrics -- so a query of a million rows is deduped, budgeted and
accounted as one run, exactly as the DataFrame API's ``run()``. Which run a call belongs to:

- ``fns.run(query)`` runs one query (all of it, fetched as a polars DataFrame) as one run and
  returns its :class:`~semframe.RunResult` (``.df`` is the query's result; lineage, metrics and
  cost as for a plan); ``with fns.scope() as scope:`` makes one run of several statements (a
  ``CREATE TABLE AS``, a ``COPY ... TO``), ``scope.result`` after the block;
- a call outside both (a plain ``con.sql(...)``) joins the connection's *open run*, started by
  the first such call and ended by ``fns.finish()`` (which returns its result); a budget stop also
  ends it.

**Lineage in SQL.** DuckDB does not tell a function which table row it is evaluating, so a
lineage record's ``row_id`` is the value's position among those its step saw in the run (in the
order chunks arrived), and ``column`` is the function's name (as in the metrics); the prompt (with the text) is in
``result.prompts``, and how each value was answered (engine, dedup, cache, skipped for NULL or
blank text) and why it failed are as for a plan. A step is one function with one set of constant
arguments. DuckDB may evaluate a function on rows a later operator drops, and not at all on rows
a filter below it removes.

**Errors.** A mistake in a call (labels that are not a list of strings, a template naming
something other than ``{text}``, a bad schema) raises a :class:`~semframe.PlanError` naming the
SQL function; DuckDB shows it as ``Invalid Input Error: Python exception occurred while executing
the UDF: PlanError: sem_classify: ...`` and ``fns.run`` raises the PlanError itself. A budget stop
fails the query (DuckDB has no partial results): ``fns.run`` raises :class:`~semframe.BudgetExceeded`
with the partial run (lineage and metrics of what was answered) in ``err.result``; every answer
already given is in the exact cache for the rerun.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import polars as pl

from semframe import config
from semframe.accounting.budget import Budget
from semframe.accounting.prices import machine_price
from semframe.accounting.throughput import throughput_for
from semframe.accounting.tokens import token_counter
from semframe.engines.registry import check_engine, resolve_engine
from semframe.errors import BudgetExceeded, PlanError, SemframeError
from semframe.execution.context import RunOptions, set_last_run
from semframe.execution.lineage import LineageRecorder, Outcome, StepMetrics
from semframe.execution.render import render_texts
from semframe.execution.resolver import AnswerResolver
from semframe.execution.result import RunResult
from semframe.frontends.schemas import duckdb_structure, spec_from_json
from semframe.physical.semantic import OPERATORS
from semframe.plan.nodes import Scan, Source
from semframe.plan.semantic import SemClassify, SemExtract, SemFilter, SemMap
from semframe.plan.spec import ChoiceSpec, TextSpec
from semframe.plan.template import Template

#: The SQL functions :func:`register` adds.
FUNCTIONS = ("sem_classify", "sem_filter", "sem_extract", "sem_map")
_INTERNAL = "__semframe_"
_TEXT = "text"
_RUN_OPTIONS = ("batch_size", "cache", "lineage", "dedupe", "prompt_layout", "on_error")


def register(con: Any, engine: Any = None, *, max_cost: float | None = None, max_tokens: int | None = None,
             batch_size: int | None = None, cache: bool | None = None, lineage: bool | None = None,
             dedupe: bool | None = None, prompt_layout: str | None = None,
             on_error: str | None = None) -> SemanticSQL:
    """Add ``sem_classify``, ``sem_filter``, ``sem_extract`` and ``sem_map`` to a DuckDB connection.

    Parameters
    ----------
    con
        A ``duckdb`` connection.
    engine
        The engine that answers (an engine, or a name such as ``"deterministic"``); None: the
        configured one (``sf.configure(engine=...)``), else the default vLLM engine. It is made when
        the first call needs it, never at registration.
    max_cost, max_tokens
        A budget per run (see the module docstring for what a run is in SQL).
    batch_size, cache, lineage, dedupe, prompt_layout, on_error
        Run options, as for ``SemLazyFrame.run`` (None: the ``sf.configure`` defaults).

    Returns the :class:`SemanticSQL` handle: ``fns.run(query)``, ``fns.scope()``, ``fns.finish()``.
    Registering again on the same connection replaces the functions (the new handle owns them).

    Examples
    --------
    >>> import duckdb, semframe as sf
    >>> con = duckdb.connect()
    >>> fns = sf.duckdb.register(con, engine="deterministic")
    >>> con.sql("SELECT sem_classify('Battle of Waterloo', ['YES', 'NO'], 'Is it about a war?') AS war").fetchall()
    [('NO',)]
    """
    check_engine(engine, "sf.duckdb.register(engine=...)")
    options = {k: v for k, v in dict(batch_size=batch_size, cache=cache, lineage=lineage, dedupe=dedupe,
                                      prompt_layout=prompt_layout, on_error=on_error).items() if v is not None}
    RunOptions.resolve(config.settings, **options)  # a bad value fails here, not in the first query
    Budget(max_tokens=max_tokens, max_cost=None)  # checks the numbers
    if max_cost is not None and (isinstance(max_cost, bool) or not isinstance(max_cost, (int, float)) or max_cost < 0):
        raise ValueError(f"max_cost must be a non-negative number of USD, got {max_cost!r}")
    fns = SemanticSQL(con, engine, options, max_cost, max_tokens)
    fns._install()
    return fns


@dataclass
class SqlScope:
    """One explicit run (``with fns.scope() as scope:``); ``result`` is set when the block ends."""

    result: RunResult | None = None


class SemanticSQL:
    """The SQL functions registered on one connection, and the runs they belong to."""

    def __init__(self, con: Any, engine: Any, options: dict[str, Any], max_cost: float | None,
                 max_tokens: int | None):
        self.con = con
        self.engine = engine
        self.options = options
        self.max_cost = max_cost
        self.max_tokens = max_tokens
        self._lock = threading.RLock()
        self._scoped: _SqlRun | None = None
        self._open: _SqlRun | None = None

    def __repr__(self) -> str:
        return f"<semframe SQL functions {', '.join(FUNCTIONS)} on {self.con!r}>"

    # ------------------------------------------------------------------ runs

    def run(self, query: str, params: Any = None) -> RunResult:
        """Run one SQL query as one semframe run; its rows are ``result.df`` (a polars DataFrame).

        A statement without rows (``CREATE TABLE ... AS``, ``COPY``) gives DuckDB's count.
        Raises the semframe error (PlanError, BudgetExceeded, ...) a function raised, with the
        partial run in ``err.result``; a SQL error DuckDB raises is raised as it is.
        """
        with self.scope() as scope:
            table = self.con.sql(query, params=params).to_arrow_table()
            self._scoped.df = pl.from_arrow(table)  # type: ignore[union-attr]
        return scope.result  # type: ignore[return-value]

    @contextlib.contextmanager
    def scope(self) -> Iterator[SqlScope]:
        """One run for every function call in the block (statements executed on this connection)."""
        with self._lock:
            if self._scoped is not None:
                raise RuntimeError("a semframe SQL run is already open on this connection; runs do not nest")
            run = self._scoped = _SqlRun(self)
        handle = SqlScope()
        try:
            yield handle
        except BaseException as exc:
            with self._lock:
                self._scoped = None
            own = run.error
            handle.result = run.finish(own or exc)
            if isinstance(own, SemframeError) and own is not exc:
                own.result = handle.result  # type: ignore[attr-defined]
                raise own from None
            if isinstance(exc, SemframeError):
                exc.result = handle.result  # type: ignore[attr-defined]
            raise
        with self._lock:
            self._scoped = None
        handle.result = run.finish(None)

    def finish(self) -> RunResult | None:
        """End the connection's open run (calls made outside ``run()``/``scope()``) and return its
        result (None if there was none); the next such call starts a new run."""
        with self._lock:
            run, self._open = self._open, None
        return None if run is None else run.finish(run.error)

    def _current(self) -> _SqlRun:
        if self._scoped is not None:
            return self._scoped
        if self._open is None:
            self._open = _SqlRun(self)
        return self._open

    # ------------------------------------------------------------------ the functions

    def _install(self) -> None:
        import duckdb

        con = self.con
        udfs = (
            ("classify", ["VARCHAR", "VARCHAR", "VARCHAR", "BIGINT"], "VARCHAR"),
            ("filter", ["VARCHAR", "VARCHAR", "BIGINT"], "BOOLEAN"),
            ("extract", ["VARCHAR", "VARCHAR", "VARCHAR", "BIGINT"], "VARCHAR"),
            ("map", ["VARCHAR", "VARCHAR", "VARCHAR", "BIGINT"], "VARCHAR"),
        )
        for verb, params, returns in udfs:
            name = f"{_INTERNAL}{verb}"
            with contextlib.suppress(duckdb.Error):
                con.remove_function(name)
            con.create_function(name, self._udf(verb), params, returns, type="arrow", null_handling="special",
                                side_effects=False)
        structure = f"{_INTERNAL}structure"
        with contextlib.suppress(duckdb.Error):
            con.remove_function(structure)
        con.create_function(structure, self._structure_udf, ["VARCHAR"], "VARCHAR", type="arrow",
                            null_handling="special")
        v, i = "CAST({} AS VARCHAR)", "CAST(max_tokens AS BIGINT)"
        macros = {
            "sem_classify": ("text, labels, instruction := NULL, max_tokens := NULL",
                             f"{_INTERNAL}classify({v.format('text')}, CAST(to_json(labels) AS VARCHAR), "
                             f"{v.format('instruction')}, {i})"),
            "sem_filter": ("text, question, max_tokens := NULL",
                           f"{_INTERNAL}filter({v.format('text')}, {v.format('question')}, {i})"),
            # from_json's structure must be a constant: the structure function folds at bind time.
            # (DuckDB checks that when the macro is created, and refuses it there unless the answer's
            # type is still open, hence the CASE around the call; a NULL text is NULL either way.)
            "sem_extract": ("text, schema, instruction := NULL, max_tokens := NULL",
                            f"from_json(CASE WHEN text IS NULL THEN NULL ELSE {_INTERNAL}extract({v.format('text')}, "
                            f"{v.format('schema')}, {v.format('instruction')}, {i}) END, "
                            f"{structure}({v.format('schema')}))"),
            "sem_map": ("text, template, instruction := NULL, max_tokens := NULL",
                        f"{_INTERNAL}map({v.format('text')}, {v.format('template')}, {v.format('instruction')}, {i})"),
        }
        for name, (args, body) in macros.items():
            con.execute(f"CREATE OR REPLACE TEMP MACRO {name}({args}) AS {body}")

    def _udf(self, verb: str) -> Any:
        def call(text: Any, *args: Any) -> Any:
            with self._lock:
                run = self._current()
                try:
                    return run.call(verb, text, args)
                except BaseException as exc:
                    if run.error is None:
                        run.error = exc
                    if run is self._open and isinstance(exc, BudgetExceeded):
                        self._open = None  # a stop ends the open run; sf.last_run() has it
                        exc.result = run.finish(exc)  # type: ignore[attr-defined]
                    raise

        # DuckDB counts the function's parameters: give it exactly as many as the SQL function has.
        if verb == "filter":
            def function(text: Any, question: Any, max_tokens: Any) -> Any:
                return call(text, question, max_tokens)
        else:
            def function(text: Any, spec: Any, instruction: Any, max_tokens: Any) -> Any:  # type: ignore[misc]
                return call(text, spec, instruction, max_tokens)

        function.__name__ = f"sem_{verb}"
        return function


    def _structure_udf(self, schema: Any) -> Any:
        """sem_extract's result type for a schema (DuckDB folds it when it binds the query)."""
        try:
            return _structures(schema)
        except BaseException as exc:
            with self._lock:
                if self._scoped is not None and self._scoped.error is None:
                    self._scoped.error = exc
            raise


def _structures(schema: Any) -> Any:
    import pyarrow as pa

    out = []
    cache: dict[str, str] = {}
    for s in schema.to_pylist():
        if s is None:
            raise PlanError("sem_extract: the schema is NULL; give a JSON schema such as "
                            "'{\"place\": \"str\", \"year\": \"int\"}'")
        if s not in cache:
            cache[s] = duckdb_structure(spec_from_json(s, "sem_extract"))
        out.append(cache[s])
    return pa.array(out, pa.string())


# --------------------------------------------------------------------------- one run


@dataclass
class _SqlStep:
    index: int
    function: str
    node: Any
    op: Any
    info: Any
    metrics: StepMetrics
    seen: int = 0


class _SqlRun:
    """What one SQL run holds: like the DataFrame API's RunContext, shared by every chunk."""

    def __init__(self, owner: SemanticSQL):
        self.owner = owner
        self.options = RunOptions.resolve(config.settings, **owner.options)
        self.start = time.perf_counter()
        self.recorder = LineageRecorder(enabled=self.options.lineage)
        self.steps: dict[tuple[Any, ...], _SqlStep] = {}
        self.engine: Any = None
        self.resolver: AnswerResolver | None = None
        self.machine: Any = None
        self.error: BaseException | None = None
        self.df: pl.DataFrame | None = None
        self.result: RunResult | None = None

    def _resolver(self) -> AnswerResolver:
        if self.resolver is None:
            owner = self.owner
            self.engine = resolve_engine(owner.engine)  # made on the first call that needs it
            self.machine = machine_price(self.engine)
            observers: list[Any] = []
            if owner.max_cost is not None or owner.max_tokens is not None:
                observers.append(Budget(max_tokens=owner.max_tokens, max_cost=owner.max_cost, machine=self.machine,
                                        throughput=throughput_for(self.engine, self.machine.kind),
                                        engine=self.engine))
            exact = None
            if self.options.cache:
                from semframe.cache import open_exact_cache

                exact = open_exact_cache(config.cache_dir())
            self.resolver = AnswerResolver(self.engine, exact_cache=exact, recorder=self.recorder, observers=observers,
                                           on_error=self.options.on_error, memo_size=self.options.memo_size)
        return self.resolver

    # ------------------------------------------------------------------ a chunk

    def call(self, verb: str, text: Any, args: tuple[Any, ...]) -> Any:
        import pyarrow as pa

        texts = text.to_pylist()
        n = len(texts)
        columns = [a.to_pylist() for a in args]
        groups: dict[tuple[Any, ...], list[int]] = {}
        if all(len(set(map(_hashable, c))) <= 1 for c in columns):
            groups[tuple(_hashable(c[0]) if c else None for c in columns)] = list(range(n))
        else:
            for i in range(n):
                groups.setdefault(tuple(_hashable(c[i]) for c in columns), []).append(i)
        values: list[Any] = [None] * n
        for key, rows in groups.items():
            step = self.step(verb, key)
            answers = self.answer(step, [texts[i] for i in rows])
            for i, v in zip(rows, answers):
                values[i] = v
        if verb == "filter":
            return pa.array([None if v is None else v == "YES" for v in values], pa.bool_())
        if verb == "extract":
            return pa.array([None if v is None else json.dumps(v, ensure_ascii=False) for v in values], pa.string())
        return pa.array(values, pa.string())

    def answer(self, step: _SqlStep, texts: list[str | None]) -> list[Any]:
        resolver = self._resolver()
        node, op, info, metrics = step.node, step.op, step.info, step.metrics
        size = self.options.batch_size
        out: list[Any] = []
        for lo in range(0, len(texts), size):
            began = time.perf_counter()
            part = texts[lo:lo + size]
            frame = pl.DataFrame({_TEXT: part}, schema={_TEXT: pl.String})
            ids = pl.Series("row_id", range(step.seen, step.seen + len(part)), dtype=pl.UInt32)
            step.seen += len(part)
            rendered, reasons = render_texts(node.template, frame)
            outcomes = resolver.resolve(info, op.builder.build_all(rendered), rendered, ids.to_list())
            done: list[Outcome] = [o if o is not None else Outcome(None, "skipped", error=reasons[i])
                                   for i, o in enumerate(outcomes)]
            self.recorder.record(step.index, node.operator, step.function, self.engine.model, ids, done)
            metrics.add_all(done)
            values = [o.value for o in done]
            metrics.rows_in += len(part)
            metrics.rows_out += sum(v == "YES" for v in values) if node.operator == "filter" else len(part)
            metrics.seconds += time.perf_counter() - began
            out.extend(values)
        return out

    def step(self, verb: str, key: tuple[Any, ...]) -> _SqlStep:
        full = (verb, *key)
        step = self.steps.get(full)
        if step is None:
            node = _node(verb, key)
            index = len(self.steps)
            op = OPERATORS[type(node)](node, (), index, self.options)
            metrics = StepMetrics(step=index, operator=node.operator, column=f"sem_{verb}")
            step = _SqlStep(index, f"sem_{verb}", node, op, op.step_info(metrics), metrics)
            self.steps[full] = step
        return step

    # ------------------------------------------------------------------ the end

    def finish(self, error: BaseException | None) -> RunResult:
        if self.result is not None:
            return self.result
        df = self.df if self.df is not None and error is None else pl.DataFrame()
        result = RunResult(
            df=df,
            row_ids=pl.Series("row_id", [None] * df.height, dtype=pl.UInt32),
            recorder=self.recorder,
            step_metrics=[s.metrics for s in sorted(self.steps.values(), key=lambda s: s.index)],
            plan=None,  # type: ignore[arg-type]  # a SQL query has no semframe plan
            seconds=time.perf_counter() - self.start,
            engine_model=self.engine.model if self.engine is not None else "",
            machine=self.machine if self.machine is not None else machine_price(self.engine),
            complete=error is None,
            count_tokens=token_counter(self.engine),
            error=None if error is None else f"{type(error).__name__}: {error}",
            semantic_hits=self.resolver.semantic_hits if self.resolver is not None else [],
        )
        result.options = self.options
        self.result = result
        set_last_run(result)
        return result


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _node(verb: str, key: tuple[Any, ...]) -> Any:
    """The semantic node of one SQL call site (its constant arguments), over a one-column input."""
    fn = f"sem_{verb}"
    child = Scan(Source.from_data(pl.DataFrame(schema={_TEXT: pl.String}), "SQL values"))
    bare = Template.for_column(_TEXT)
    max_tokens = key[-1]
    try:
        if verb == "classify":
            labels_json, instruction = key[0], key[1]
            return SemClassify(child, bare, instruction, _labels(labels_json, fn), fn, max_tokens)
        if verb == "filter":
            question = key[0]
            if question is None:
                raise PlanError("the question is NULL; write e.g. sem_filter(title, 'Is it about a war?')")
            template, instruction = _template_or_instruction(question, fn)
            return SemFilter(child, template, instruction, ChoiceSpec(("YES", "NO")), None, max_tokens)
        if verb == "extract":
            schema, instruction = key[0], key[1]
            if schema is None:
                raise PlanError("the schema is NULL; give a JSON schema such as '{\"place\": \"str\", \"year\": \"int\"}'")
            return SemExtract(child, bare, instruction, spec_from_json(schema, fn), fn, max_tokens)
        template_text, instruction = key[0], key[1]
        if template_text is None:
            raise PlanError("the template is NULL; write e.g. sem_map(title, 'Summarize {text} in five words.')")
        template, own = _template_or_instruction(template_text, fn)
        if own is not None and instruction is not None:
            own = f"{instruction}\n{own}"
        return SemMap(child, template, own if own is not None else instruction, TextSpec(), fn, max_tokens)
    except PlanError as exc:
        message = str(exc)
        for prefix in (f"semantic.{verb}: ", f"{fn}: "):
            if message.startswith(prefix):
                message = message[len(prefix):]
        raise PlanError(f"{fn}: {message}") from None


def _labels(labels_json: Any, fn: str) -> ChoiceSpec:
    if labels_json is None:
        raise PlanError("labels is NULL; write the labels as a list, e.g. ['YES', 'NO']")
    labels = json.loads(labels_json)
    if isinstance(labels, str):
        raise PlanError(f"labels must be a list such as ['YES', 'NO'], got the string {labels!r}"
                        + (f"; write {[s.strip() for s in labels.split(',')]!r}" if "," in labels else ""))
    if not isinstance(labels, list):
        raise PlanError(f"labels must be a list of strings such as ['YES', 'NO'], got {labels!r}")
    return ChoiceSpec(tuple(labels))


def _template_or_instruction(text: str, fn: str) -> tuple[Template, str | None]:
    """A text that names ``{text}`` is the template; any other text is the instruction, the row follows."""
    template = Template.parse(text)
    other = [c for c in template.columns if c != _TEXT]
    if other:
        raise PlanError(f"the template may reference only {{text}} (the function's first argument), but it names "
                        f"{{{other[0]}}}; pass that column as the first argument, e.g. "
                        f"{fn}({other[0]}, '{text.replace('{' + other[0] + '}', '{text}')}')")
    if template.columns:
        return template, None
    return Template.for_column(_TEXT), text
