"""What a run hands back: the frame, its row ids, lineage, metrics and cost.

>>> import polars as pl, semframe as sf
>>> df = pl.DataFrame({"title": ["Waterloo", "Soup", "Waterloo"]})
>>> result = df.lazy().semantic.classify("title", ["YES", "NO"], name="eu").run(sf.DeterministicEngine(), cache=False)
>>> result.with_row_ids().columns
['row_id', 'title', 'eu']
>>> result.lineage.select("row_id", "source").to_dicts()[2]
{'row_id': 2, 'source': 'dedup'}
>>> result.metrics.select("rows_in", "engine_requests", "dedup_hits").row(0)
(3, 2, 1)
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import polars as pl

from semframe.accounting.cost import CostReport, cost_report
from semframe.accounting.prices import MachinePrice, format_usd, machine_price
from semframe.accounting.tokens import heuristic_count_tokens
from semframe.execution.lineage import LineageRecorder, StepMetrics
from semframe.execution.profile import Profile
from semframe.plan.nodes import Node

_METRIC_DTYPES = {
    "step": pl.Int32, "operator": pl.String, "column": pl.String, "rows_in": pl.Int64, "rows_out": pl.Int64,
    "selectivity": pl.Float64, "engine_requests": pl.Int64, "engine_batches": pl.Int64,
    "engine_retries": pl.Int64, "engine_failures": pl.Int64, "cache_rejects": pl.Int64, "dedup_hits": pl.Int64,
    "exact_cache_hits": pl.Int64, "semantic_cache_hits": pl.Int64, "skipped": pl.Int64,
    "proxy_answers": pl.Int64, "errors": pl.Int64,
    "prompt_tokens": pl.Int64, "cached_prompt_tokens": pl.Int64, "output_tokens": pl.Int64,
    "engine_seconds": pl.Float64, "seconds": pl.Float64, "rows_per_s": pl.Float64, "tokens_per_s": pl.Float64,
    "cost_usd": pl.Float64,
}


@dataclass
class RunResult:
    """Everything a run produced.

    Attributes
    ----------
    df
        The result, as a plain polars DataFrame.
    row_ids
        For each result row, the input row(s) it came from (see :mod:`semframe.execution.provenance`):
        its position in the scanned input, stable across filters, sorts and heads; a struct
        ``{left, right}`` after a join, a list after a ``group_by().agg()``; null where a step keeps
        no link. Join it to :attr:`lineage` on ``row_id`` (see :meth:`with_row_ids`).
    lineage
        One row per output cell of every semantic step (see :mod:`semframe.execution.lineage`);
        read on first use from the parts the run spilled to disk (:meth:`scan_lineage` reads it
        lazily instead).
    prompts
        ``request_key`` -> full prompt text, one row per distinct request.
    recorder
        Where :attr:`lineage` and :attr:`prompts` come from.
    step_metrics
        One :class:`StepMetrics` per semantic step (:attr:`metrics` has them as a table).
    plan
        The plan that ran (after optimization).
    seconds
        Wall time of the run.
    engine_model
        The model that answered.
    machine
        The machine price the cost uses.
    complete
        False when a budget stopped the run early or an error ended it (then ``df`` holds the
        rows done so far, and :attr:`error` says what happened).
    error
        The error that ended the run (None for a complete run).
    semantic_hits
        Every semantic-cache reuse of the run (what ``audit_semantic_cache`` re-asks).
    rows_written
        Rows a ``sink_*`` run wrote to its file (then ``df`` is empty); None otherwise.
    physical
        The root of the physical operators that ran (what :meth:`profile` draws); None for a
        result made by hand.
    operator_stats
        ``id(operator) -> OpStats``: rows, batches and time of each operator (see
        :mod:`semframe.execution.profile`).
    options
        The run's :class:`~semframe.execution.context.RunOptions`.
    """

    df: pl.DataFrame
    row_ids: pl.Series
    recorder: LineageRecorder
    step_metrics: list[StepMetrics]
    plan: Node
    seconds: float
    engine_model: str
    machine: MachinePrice = field(default_factory=machine_price)
    complete: bool = True
    count_tokens: Callable[[str], int] = field(default=heuristic_count_tokens, repr=False)
    error: str | None = None
    semantic_hits: list[Any] = field(default_factory=list, repr=False)
    rows_written: int | None = None
    physical: Any = field(default=None, repr=False)
    operator_stats: dict[int, Any] = field(default_factory=dict, repr=False)
    options: Any = field(default=None, repr=False)

    @cached_property
    def lineage(self) -> pl.DataFrame:
        return self.recorder.to_frame()

    @cached_property
    def prompts(self) -> pl.DataFrame:
        return self.recorder.prompts_frame()

    def scan_lineage(self) -> pl.LazyFrame:
        """:attr:`lineage` as a LazyFrame over the parts the run wrote, without loading it all.

        Examples
        --------
        >>> import polars as pl, semframe as sf
        >>> r = pl.DataFrame({"t": ["a", "b", "a"]}).lazy().semantic.map("Say {t}", name="m").run(sf.DeterministicEngine())
        >>> r.scan_lineage().filter(pl.col("source") == "dedup").select("row_id").collect()["row_id"].to_list()
        [2]
        """
        return self.recorder.scan()

    # ------------------------------------------------------------------ metrics and cost

    @property
    def metrics(self) -> pl.DataFrame:
        """One row per semantic step, in run order.

        Rows in/out, ``selectivity`` (rows out / rows in, for ``filter`` only), engine requests
        and batches, reused answers by kind, tokens, time, ``rows_per_s`` (rows in per second of
        the step), ``tokens_per_s`` (prompt + output tokens per engine second) and ``cost_usd``
        (the step's engine seconds at the machine's hourly price; for an engine billed by the
        token, such as ``sf.OpenAIEngine(..., prices=...)``, its tokens at the engine's prices).
        """
        rows = []
        for m in self.step_metrics:
            row = vars(m).copy()
            row["selectivity"] = (m.rows_out / m.rows_in if m.rows_in else None) if m.operator == "filter" else None
            row["rows_per_s"] = m.rows_in / m.seconds if m.seconds > 0 else None
            tokens = m.prompt_tokens + m.output_tokens
            row["tokens_per_s"] = tokens / m.engine_seconds if m.engine_seconds > 0 else None
            # Tokens x prices for an engine billed by the token, else engine seconds x the machine's price.
            row["cost_usd"] = m.token_usd if m.pricing is not None else self.machine.cost(m.engine_seconds)
            rows.append(row)
        return pl.DataFrame(rows, schema=_METRIC_DTYPES)

    @property
    def engine_requests(self) -> int:
        return sum(m.engine_requests for m in self.step_metrics)

    @property
    def engine_seconds(self) -> float:
        return sum(m.engine_seconds for m in self.step_metrics)

    @cached_property
    def cost(self) -> CostReport:
        """The local cost, the same tokens priced as API calls, and the saving from reused answers."""
        return cost_report(self.step_metrics, self.machine, lineage=self.lineage, prompts=self.prompts,
                           count=self.count_tokens)

    def audit(self, k: int = 50, *, seed: int = 0, confidence: float = 0.95) -> Any:
        """Ask the oracle (the step's own engine) about ``k`` random cells a proxy answered.

        For approximate steps (``classify(..., approx=sf.Target(...))``): the cells' own requests
        go to the oracle engine, bypassing every cache, and the report gives the realised
        agreement with a Clopper-Pearson (and a Wilson) interval at ``confidence``; see
        :func:`semframe.execution.calibration.audit_agreement`.
        """
        from semframe.execution.calibration import audit_agreement

        pools = [m.notes["approx_audit"] for m in self.step_metrics if "approx_audit" in m.notes]
        return audit_agreement(pools, k, seed=seed, confidence=confidence)

    # ------------------------------------------------------------------ lineage

    def with_row_ids(self, name: str = "row_id") -> pl.DataFrame:
        """The result with the input row id as its first column (to join with :attr:`lineage`).

        Examples
        --------
        >>> import polars as pl, semframe as sf
        >>> r = pl.DataFrame({"t": ["a", "b"]}).lazy().semantic.map("Say {t}", name="m").run(sf.DeterministicEngine())
        >>> r.with_row_ids().join(r.lineage, on="row_id").select("row_id", "m", "source").shape
        (2, 3)
        """
        if name in self.df.columns:
            raise ValueError(f"the result already has a column {name!r}; pass name='...' with another name")
        return self.df.select(self.row_ids.alias(name), pl.all())

    def lineage_with_prompts(self) -> pl.DataFrame:
        """:attr:`lineage` with the full prompt text of each cell in a ``prompt`` column."""
        return self.lineage.join(self.prompts, on="request_key", how="left", maintain_order="left")

    def prompt(self, request_key: str) -> str:
        """The full prompt text of one request (by its ``request_key`` in :attr:`lineage`)."""
        hit = self.prompts.filter(pl.col("request_key") == request_key)
        if hit.is_empty():
            raise KeyError(f"no prompt with request_key {request_key!r} in this run "
                           "(was the run made with lineage=False?)")
        return hit["prompt"][0]

    def lineage_to_parquet(self, path: str | os.PathLike, *, with_prompts: bool = False) -> None:
        """Write :attr:`lineage` to a Parquet file (``with_prompts`` adds the prompt text per cell)."""
        frame = self.lineage_with_prompts() if with_prompts else self.lineage
        frame.write_parquet(path)

    def lineage_to_duckdb(self, con_or_path: Any, table: str = "semframe_lineage", *,
                          prompts_table: str | None = "semframe_prompts") -> None:
        """Write :attr:`lineage` (and the prompts) to DuckDB tables, replacing tables of those names.

        Parameters
        ----------
        con_or_path
            An open ``duckdb`` connection, or a database file path.
        table
            The lineage table.
        prompts_table
            The ``request_key -> prompt`` table (None skips it).
        """
        import duckdb

        con = duckdb.connect(str(con_or_path)) if isinstance(con_or_path, (str, os.PathLike)) else con_or_path
        try:
            for name, frame in ((table, self.lineage), (prompts_table, self.prompts)):
                if name is None:
                    continue
                view = "__semframe_export"
                con.register(view, frame.to_arrow())
                try:
                    con.execute(f'CREATE OR REPLACE TABLE "{name}" AS SELECT * FROM {view}')
                finally:
                    con.unregister(view)
        finally:
            if con is not con_or_path:
                con.close()

    # ------------------------------------------------------------------ display

    def summary(self) -> str:
        """A few lines: rows, steps, engine calls, reused answers, tokens, time and cost."""
        c = self.cost
        state = "" if self.complete else f" (stopped early: {self.error})" if self.error else " (stopped early)"
        saved = sum(c.saved_requests.values())
        rows = self.df.height if self.rows_written is None else self.rows_written
        return (
            f"run{state}: {rows:,} rows out, {len(self.step_metrics)} semantic step(s), "
            f"{self.seconds:.3f} s\n"
            f"engine ({self.engine_model or 'none'}): {c.engine_requests:,} requests, "
            f"{c.prompt_tokens:,} prompt + {c.output_tokens:,} output tokens, {c.engine_seconds:.3f} s; "
            f"{saved:,} answers reused\n"
            f"cost: {format_usd(c.local_usd)} local ({c.machine.name} at ${c.machine.hourly_usd:g}/h)"
        )

    def profile(self) -> Profile:
        """What each operator did, like polars' ``profile()`` or SQL's EXPLAIN ANALYZE.

        The operator tree that ran, each operator with its rows in and out, engine calls,
        answers reused (dedup, exact and semantic cache), tokens, own seconds and cost, and two
        charts: where the time went and where the money went. ``print(run.profile())`` shows it
        as a table; in Jupyter it draws as a tree; ``.to_frame()`` has one row per operator.

        Examples
        --------
        >>> import polars as pl, semframe as sf
        >>> r = pl.DataFrame({"t": ["a", "b", "a"]}).lazy().semantic.map("Say {t}", name="m").run(
        ...     sf.DeterministicEngine(), cache=False)
        >>> r.profile().to_frame()["operator"].to_list()
        ['SEMANTIC MAP → m', 'POLARS QUERY']
        """
        rows = self.df.height if self.rows_written is None else self.rows_written
        optimized = True if self.options is None else bool(getattr(self.options, "optimize", True))
        return Profile(self.physical, self.operator_stats, self.step_metrics, self.machine, self.seconds, rows,
                       complete=self.complete, optimized=optimized, error=self.error)

    def __repr__(self) -> str:
        return f"<RunResult>\n{self.summary()}"

    def _repr_html_(self) -> str:
        summary = "<br>".join(html.escape(line) for line in self.summary().splitlines())
        return (f"<div><p>{summary}</p><p><b>metrics</b></p>{self.metrics._repr_html_()}"
                f"<p><b>lineage</b> ({self.lineage.height:,} cells)</p>{self.lineage.head(10)._repr_html_()}"
                f"<details><summary><b>profile</b> (what each operator did; also <code>.profile()</code>)"
                f"</summary>{self.profile()._repr_html_()}</details></div>")
