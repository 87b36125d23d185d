"""Provenance beside the data: which input rows each row of a batch came from.

Every batch that flows between physical operators is a :class:`Batch`: the user's frame and,
beside it (never inside it), one provenance value per row:

- a row of a scanned input: its position in that input (``UInt32``);
- a row of a join: a struct ``{left, right}`` of the two sides' provenance;
- a row of a group (``group_by().agg()``): the list of its input rows' provenance;
- null where a step keeps no link to input rows (a polars method semframe does not know).

Polars queries, though, move rows around inside polars, so while a relational subtree runs the
provenance rides in one *carrier* column. This module is the only code that knows about that
column: :func:`scan_frame` adds it at a scan, :func:`apply` runs any relational node with the
carrier kept right (and invisible to selectors such as ``pl.all()`` or ``cs.integer()``), and
:func:`to_batch` takes it out again. The executor and the estimator both go through here, so
they cannot disagree on which rows a step sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from semframe.plan.nodes import (
    Call,
    Filter,
    FrozenList,
    Node,
    PolarsCall,
    Relational,
    Scan,
    Select,
    Sort,
    WithColumns,
    thaw,
)

#: The carrier column: a row's provenance while a polars query runs. Never in a user's frame.
CARRIER = "__sf_row"
_RIGHT = "__sf_row_right"
_POS = "__sf_pos"
_KEEP = "__sf_keep"
_HEIGHT = "__sf_height"


@dataclass(frozen=True)
class Batch:
    """Rows in flight: the frame and, beside it, one provenance value per row."""

    frame: pl.DataFrame
    ids: pl.Series

    @property
    def height(self) -> int:
        return self.frame.height

    def slice(self, offset: int, length: int | None = None) -> Batch:
        return Batch(self.frame.slice(offset, length), self.ids.slice(offset, length))

    def filter(self, mask: pl.Series) -> Batch:
        return Batch(self.frame.filter(mask), self.ids.filter(mask))

    def with_carrier(self) -> pl.DataFrame:
        return self.frame.with_columns(self.ids.alias(CARRIER))

    @staticmethod
    def empty(schema: Sequence[tuple[str, pl.DataType]], ids_dtype: pl.DataType = pl.UInt32()) -> Batch:
        return Batch(pl.DataFrame(schema=dict(schema)), pl.Series(CARRIER, [], dtype=ids_dtype))

    @staticmethod
    def concat(batches: Sequence[Batch]) -> Batch:
        if len(batches) == 1:
            return batches[0]
        frame = pl.concat([b.frame for b in batches], how="vertical")
        shapes = {b.ids.dtype for b in batches if b.ids.dtype != pl.Null}
        if len(shapes) == 1:  # batches that lost their provenance are nulls of the same shape
            (shape,) = shapes
            ids = pl.concat([b.ids if b.ids.dtype == shape else b.ids.cast(shape) for b in batches])
        elif not shapes:
            ids = pl.concat([b.ids for b in batches])
        else:  # provenance of different shapes (rare): keep each value as it is
            ids = pl.Series(CARRIER, [v for b in batches for v in b.ids.to_list()], dtype=pl.Object)
        return Batch(frame, ids)


def to_batch(frame: pl.DataFrame) -> Batch:
    """Split a frame with the carrier column into a :class:`Batch`."""
    return Batch(frame.drop(CARRIER), frame.get_column(CARRIER))


def scan_frame(node: Scan) -> pl.LazyFrame:
    """The scan's data with the carrier: each row's position in the source."""
    # Number the rows before projecting: a projection to no columns (``select(pl.len())``
    # reads none) must still keep every row.
    lf = node.source.frame.with_row_index(CARRIER)
    if node.columns_read is not None:
        lf = lf.select(*node.columns_read, CARRIER)
    return lf


def query(node: Node) -> pl.LazyFrame | None:
    """The subtree as one polars query with the carrier, if it is relational down to its scans."""
    if isinstance(node, Scan):
        return scan_frame(node)
    if isinstance(node, Relational):
        below = [query(c) for c in node.children]
        if any(b is None for b in below):
            return None
        return apply(node, *below)  # type: ignore[arg-type]
    return None


# --------------------------------------------------------------------------- one node


def apply(node: Relational, *frames: pl.LazyFrame) -> pl.LazyFrame:
    """Apply a relational node to frames that carry provenance; the result carries it too."""
    if isinstance(node, PolarsCall):
        return _apply_call(node, frames)
    (lf,) = frames
    if node.expands_schema:
        return _apply_expanding(node, lf)
    if isinstance(node, Select):
        out = node.apply(lf)
        if CARRIER in out.collect_schema().names():
            return out
        if all(e.is_elementwise and e.keeps_length for e in node.exprs):
            return lf.select([*(e.expr for e in node.exprs), pl.col(CARRIER)])
        return _lost(out)  # a sort, a reverse, an aggregate: row k is not input row k
    return node.apply(lf)


def _apply_expanding(node: Relational, lf: pl.LazyFrame) -> pl.LazyFrame:
    """Apply a step whose expressions expand against the schema (``pl.all()``, ``pl.first()``,
    ``cs.numeric()``, ``pl.col("a", "b")``) where they cannot see the carrier, then attach each
    output row's provenance again."""
    data = lf.drop(CARRIER)
    if isinstance(node, WithColumns):  # one output row per input row, in order
        return pl.concat([node.apply(data), lf.select(CARRIER)], how="horizontal")
    if isinstance(node, Filter):
        keep = data.with_columns(node.predicate.expr.alias(_KEEP)).select(_KEEP)
        return pl.concat([lf, keep], how="horizontal").filter(pl.col(_KEEP)).drop(_KEEP)
    if isinstance(node, Sort):
        parts = [data.select(e.expr.name.prefix(f"__sf_key{i}_")) for i, e in enumerate(node.by)]
        widths = [len(p.collect_schema()) for p in parts]  # a selector key sorts by each of its columns
        keys = pl.concat(parts, how="horizontal")
        names = keys.collect_schema().names()
        descending = [d for d, w in zip(node.descending, widths) for _ in range(w)]
        return (pl.concat([lf, keys], how="horizontal")
                  .sort(names, descending=descending, nulls_last=node.nulls_last, maintain_order=True)
                  .drop(names))
    if isinstance(node, Select):
        if not all(e.is_elementwise_per_column for e in node.exprs):
            return _lost(node.apply(data))  # it reorders or aggregates: row k is not input row k
        # Row k of the output is input row k when the select kept the height; else (an
        # aggregate) the rows have no input row.
        out = data.select(*(e.expr for e in node.exprs), pl.len().alias(_HEIGHT)).with_row_index(_POS)
        ids = lf.select(CARRIER).with_row_index(_POS)
        out = out.join(ids, on=_POS, how="left", maintain_order="left")
        same = pl.len() == pl.col(_HEIGHT)
        return out.with_columns(pl.when(same).then(pl.col(CARRIER))).drop(_POS, _HEIGHT)
    return _lost(node.apply(data))


# --------------------------------------------------------------------------- any polars method

#: Methods whose output row i is input row i: run them on the data, put the provenance back.
ALIGNED_METHODS = frozenset({
    "with_columns", "with_columns_seq", "cast", "fill_null", "fill_nan", "unnest", "with_row_index",
    "interpolate", "drop", "rename", "set_sorted", "inspect", "clone", "cache",
})
#: Methods that keep, drop, repeat or reorder whole rows: the carrier rides along as a column.
ROW_METHODS = frozenset({
    "filter", "sort", "head", "tail", "slice", "limit", "gather_every", "explode", "drop_nulls",
    "drop_nans", "reverse", "unique", "top_k", "bottom_k", "remove",
})
#: Methods that only look at the data columns when told no subset: given the data columns.
_SUBSET_METHODS = frozenset({"unique", "drop_nulls", "drop_nans"})
JOIN_METHODS = frozenset({"join", "join_asof", "join_where"})


def _apply_call(node: PolarsCall, frames: Sequence[pl.LazyFrame]) -> pl.LazyFrame:
    calls = node.calls
    first = calls[0].name
    expanding = node.expands_schema
    if len(calls) == 1 and len(frames) == 1 and not expanding:
        if first in ALIGNED_METHODS:
            lf = frames[0]
            return pl.concat([node.apply(lf.drop(CARRIER)), lf.select(CARRIER)], how="horizontal")
        if first in ROW_METHODS:
            return _with_subset(calls[0], frames[0]).apply(frames[0], tuple(frames))
    if first in JOIN_METHODS and len(calls) == 1 and len(frames) == 2 and not expanding:
        return _join(node, frames)
    if (first == "group_by" and len(calls) == 2 and calls[1].name == "agg" and len(frames) == 1
            and not expanding):
        lf = frames[0]
        grouped = calls[0].apply(lf, tuple(frames))
        aggs = [thaw(a, tuple(frames)) for a in calls[1].args]
        named = {k: thaw(v, tuple(frames)) for k, v in calls[1].kwargs}
        return grouped.agg(*aggs, pl.col(CARRIER), **named)
    return _lost(node.apply(*(f.drop(CARRIER) for f in frames)))


def _with_subset(call: Call, lf: pl.LazyFrame) -> Call:
    """``unique()`` / ``drop_nulls()`` / ``drop_nans()`` with no subset look at every column:
    name the data ones (for ``drop_nans``, the float ones)."""
    if call.name not in _SUBSET_METHODS:
        return call
    kwargs = dict(call.kwargs)
    args = list(call.args)
    subset = args[0] if args else kwargs.get("subset")
    if subset is not None:
        return call
    if args:
        args = args[1:]  # subset=None given by position
    schema = lf.collect_schema()
    data = [c for c, dt in schema.items() if c != CARRIER and (call.name != "drop_nans" or dt.is_float())]
    kwargs["subset"] = FrozenList(data)
    return Call(call.name, tuple(args), tuple(kwargs.items()))


def _join(node: PolarsCall, frames: Sequence[pl.LazyFrame]) -> pl.LazyFrame:
    left, right = frames[0], frames[1].rename({CARRIER: _RIGHT})
    out = node.apply(left, right)
    names = out.collect_schema().names()
    if _RIGHT not in names:  # semi / anti joins keep left rows only
        return out
    if CARRIER not in names:  # pragma: no cover - every join keeps the left carrier
        return _lost(out.drop(_RIGHT))
    pair = pl.struct(pl.col(CARRIER).alias("left"), pl.col(_RIGHT).alias("right"))
    return out.with_columns(pair.alias(CARRIER)).drop(_RIGHT)


def _lost(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Rows whose link to input rows is unknown: null provenance."""
    return lf.with_columns(pl.lit(None, dtype=pl.Null).alias(CARRIER))


def scalar_ids(ids: pl.Series) -> list[Any] | None:
    """The ids as Python ints when each row is one scanned row (else None)."""
    if ids.dtype == pl.UInt32:
        return ids.to_list()
    return None
