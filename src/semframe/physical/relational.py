"""Physical operators for the relational steps: polars does the work.

- :class:`PolarsQuery`: a subtree that is relational down to its scans runs as one polars query
  (polars pushes its own filters and projections into file scans) and streams out in batches.
- :class:`PolarsStep`: one relational step over inputs that are not plain polars (semantic
  steps below it). An elementwise step runs batch by batch; ``head`` stops pulling once it has
  its rows, so nothing below asks the engine about rows nobody will see; any other step (a
  sort, a join, an aggregate) gathers its inputs first.

Both move provenance through polars with :mod:`semframe.execution.provenance`, in the run and in
the estimate alike.
"""

from __future__ import annotations

from collections.abc import Iterator

import polars as pl

from semframe.execution import provenance
from semframe.execution.context import RunContext
from semframe.execution.provenance import Batch
from semframe.physical.base import EstimateContext, EstState, PhysicalOp
from semframe.plan.expr import PlExpr, reads
from semframe.plan.nodes import Filter, Head, Node, PolarsCall, Relational, Rename, Scan, walk


def rebatch(stream: Iterator[Batch], size: int) -> Iterator[Batch]:
    """Regroup a stream of batches of any size into batches of ``size`` rows (the last may be short)."""
    pending: list[Batch] = []
    count = 0
    for batch in stream:
        if batch.height == 0:
            continue
        pending.append(batch)
        count += batch.height
        while count >= size:
            merged = Batch.concat(pending)
            yield merged.slice(0, size)
            rest = merged.slice(size)
            pending, count = ([rest], rest.height) if rest.height else ([], 0)
    if count:
        yield Batch.concat(pending)


def _slices(batch: Batch, size: int) -> Iterator[Batch]:
    for offset in range(0, batch.height, size):
        yield batch.slice(offset, size)


class PolarsQuery(PhysicalOp):
    """A relational subtree over scans, run as one polars query, streamed in batches."""

    def __init__(self, node: Node):
        super().__init__(node)
        self.sources = tuple(n.source for n in walk(node) if isinstance(n, Scan))

    @property
    def in_memory(self) -> bool:
        return all(s.in_memory for s in self.sources)

    def frame(self) -> pl.LazyFrame:
        lf = provenance.query(self.node)
        assert lf is not None, "a PolarsQuery is relational down to its scans"
        return lf

    def execute(self, ctx: RunContext) -> Iterator[Batch]:
        lf = self.frame()
        size = ctx.options.batch_size
        if self.in_memory:
            for frame in lf.collect().iter_slices(size):
                yield provenance.to_batch(frame)
            return
        batches = lf.collect_batches(chunk_size=size)
        try:
            for frame in batches:
                yield provenance.to_batch(frame)
        finally:
            stop = getattr(batches, "stop", None)
            if stop is not None:
                stop()

    def count_rows(self) -> int | None:
        """The rows it yields, when that is cheap to know; else None.

        Only data in memory and Parquet / IPC files (polars counts those from their metadata)
        are counted: a CSV or NDJSON file is never read a second time, a Python source (DuckDB's
        ``.pl(lazy=True)``) never asked. Never fails a run (progress asks this).
        """
        try:
            if not all(s.in_memory or _counted_from_metadata(s.frame) for s in self.sources):
                return None
            return int(self.frame().select(pl.len()).collect().item())
        except Exception:  # counting is a nicety: whatever goes wrong, there is no total
            return None

    def estimate(self, est: EstimateContext) -> EstState:
        return EstState.of(provenance.to_batch(self.frame().collect()))

    def describe(self) -> str:
        return "POLARS QUERY"

    def detail_lines(self) -> list[str]:
        return []


#: Polars methods whose output over a superset of the rows is a superset of the true output.
_SUPERSET_METHODS = frozenset({"explode", "drop_nulls", "drop_nans", "filter"})


def _call_reads(node: PolarsCall) -> frozenset[str] | None:
    """The columns a polars method reads, where its arguments name them all (else None)."""
    if len(node.calls) != 1 or node.calls[0].name not in ("explode", "drop_nulls", "drop_nans"):
        return None
    call = node.calls[0]
    values = list(call.args) + [v for k, v in call.kwargs if k == "subset"]
    names: set[str] = set()
    for v in values:
        for item in (v if isinstance(v, tuple) else (v,)):
            if isinstance(item, str):
                names.add(item)
            elif isinstance(item, PlExpr) and not item.selects_all:
                names |= item.root_names
            else:
                return None
    return frozenset(names) if names else None  # no columns named: it reads every one


def _keeps_supersets(node: Relational) -> bool:
    if not isinstance(node, PolarsCall) or len(node.calls) != 1:
        return False
    call = node.calls[0]
    if call.name in _SUPERSET_METHODS:
        return True
    how = dict(call.kwargs).get("how", "inner")
    return call.name == "join" and how in ("inner", "semi", "cross")  # more rows in, more pairs out


def _counted_from_metadata(lf: pl.LazyFrame) -> bool:
    """True if every scan in ``lf``'s query is in memory or a Parquet/IPC file."""
    scans = [line for line in lf.explain(optimized=False).splitlines() if "SCAN" in line]
    return all(line.lstrip().startswith(("Parquet SCAN", "Ipc SCAN", "IPC SCAN")) for line in scans)


class PolarsStep(PhysicalOp):
    """One relational step over inputs that produce batches (see the module docstring)."""

    node: Relational

    def execute(self, ctx: RunContext) -> Iterator[Batch]:
        node = self.node
        size = ctx.options.batch_size
        if isinstance(node, Head):
            yield from self._head(ctx, node.n)
            return
        if len(self.inputs) == 1 and node.elementwise and node.rows in ("aligned", "subset"):
            for batch in self.inputs[0].execute(ctx):
                yield provenance.to_batch(provenance.apply(node, batch.with_carrier().lazy()).collect())
            return
        # Needs all rows at once (sort, join, aggregate, window): gather, apply, re-slice.
        gathered = [self._gather(ctx, op, child) for op, child in zip(self.inputs, node.children)]
        out = provenance.apply(node, *(b.with_carrier().lazy() for b in gathered)).collect()
        yield from _slices(provenance.to_batch(out), size)

    @staticmethod
    def _gather(ctx: RunContext, op: PhysicalOp, child: Node) -> Batch:
        batches = list(op.execute(ctx))
        return Batch.concat(batches) if batches else Batch.empty(child.schema)

    def _head(self, ctx: RunContext, n: int) -> Iterator[Batch]:
        remaining = n
        if remaining == 0:
            return
        for batch in self.inputs[0].execute(ctx):
            if batch.height >= remaining:
                yield batch.slice(0, remaining)
                return
            remaining -= batch.height
            yield batch

    def estimate(self, est: EstimateContext) -> EstState:
        node = self.node
        est.under_head += isinstance(node, Head)
        try:
            states = [op.estimate(est) for op in self.inputs]
        finally:
            est.under_head -= isinstance(node, Head)
        if isinstance(node, Head):
            (s,) = states
            batch = s.batch.slice(0, node.n) if s.batch is not None and s.exact else s.batch
            return EstState(batch, min(s.rows_low, node.n), min(s.rows_high, node.n), s.exact, s.unknown)
        unknown = frozenset().union(*(s.unknown for s in states))
        if isinstance(node, Rename) and unknown:  # a model's column keeps being unknown under its new name
            mapping = dict(node.mapping)
            unknown = frozenset(mapping.get(c, c) for c in unknown)
            states = [EstState(s.batch, s.rows_low, s.rows_high, s.exact, unknown) for s in states]
        # A polars method may name columns as strings (subset=["c"], by="c") or read them all.
        read = _call_reads(node) if isinstance(node, PolarsCall) else reads(node.expressions)
        touches_unknown = bool(unknown) and (read is None or bool(read & unknown) or len(states) > 1)
        # Over a superset of the rows, only a step that treats rows one by one gives a superset.
        row_by_row = (node.rows == "permutation" or (node.elementwise and node.rows in ("aligned", "subset"))
                      or _keeps_supersets(node))
        if (all(s.batch is not None for s in states) and not (touches_unknown and node.rows != "aligned")
                and (row_by_row or all(s.exact for s in states))):
            out = provenance.to_batch(
                provenance.apply(node, *(s.batch.with_carrier().lazy() for s in states)).collect())  # type: ignore[union-attr]
            written = node.produces
            if touches_unknown:  # aligned: the rows are known, the columns it writes are not
                unknown = unknown | (written if written is not None else frozenset(out.frame.columns))
            if all(s.exact for s in states):
                return EstState(out, out.height, out.height, True, unknown)
            # The inputs are supersets of the rows: the output bounds the rows.
            high = min(out.height, max(s.rows_high for s in states)) if node.rows != "other" else out.height
            low = min(min(s.rows_low for s in states), high)
            return EstState(out, low, high, False, unknown)
        s = states[0]
        low, high = s.rows_low, s.rows_high
        if isinstance(node, Filter):
            low *= est.filter_selectivity
        elif node.rows == "other":
            low, high = 0, max(st.rows_high for st in states)
        return EstState(None, low, high, False, unknown | (node.produces or frozenset()))
