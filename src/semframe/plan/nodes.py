"""Plan nodes: small immutable dataclasses that hash by structure, with any number of children.

A plan is a tree rooted at its last step. A node's children are derived from its fields (a
field holding a :class:`Node`, or a tuple of them, is a child; as ibis derives them), so
traversal, rewriting and explain work for any arity without per-node code. Each node checks its
invariants and computes its output schema when it is constructed, so an unknown column or a
name clash is an error while the plan is built, before any engine call.

Optimizer rules read a node's *properties* rather than its type:

``rows``
    How output rows relate to input rows: ``"aligned"`` (one output row per input row, in
    order), ``"subset"`` (some input rows, in order, chosen row by row), ``"prefix"`` (the first
    n rows), ``"permutation"`` (every row, reordered) or ``"other"`` (anything else: a barrier).
``elementwise``
    The node gives the same result on any split of its input into batches, concatenated.
``unchanged``
    The output columns that hold exactly the same-named input column's values (row for row
    under ``rows``): a filter on them means the same above and below the node.
``produces``
    The columns the node writes (new or overwritten).
``columns_needed(needed)``
    Given the columns needed from the node's output, the columns needed from each child.

A new node declares these and needs no edit to any rule.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

import polars as pl

from semframe.errors import PlanError
from semframe.plan.expr import PlExpr, output_names, reads

#: Prefix of the columns semframe uses internally; user columns may not start with it.
RESERVED_PREFIX = "__sf_"

Schema = tuple[tuple[str, pl.DataType], ...]
Needed = frozenset[str] | None  # None: every column


def _schema_of(lf: pl.LazyFrame) -> Schema:
    return tuple(lf.collect_schema().items())


def empty_frame(schema: Schema) -> pl.LazyFrame:
    """A LazyFrame with no rows and the given schema (what schemas are computed on)."""
    return pl.LazyFrame(schema=dict(schema))


def union_needed(a: Needed, b: Needed) -> Needed:
    return None if a is None or b is None else a | b


@dataclass(frozen=True)
class Node:
    """Base of plan nodes. ``schema`` is computed at construction and excluded from equality."""

    schema: Schema = field(init=False, repr=False, compare=False)

    #: Label in explain().
    label: ClassVar[str] = "NODE"
    #: How output rows relate to input rows (see the module docstring).
    rows: ClassVar[str] = "other"

    def __post_init__(self) -> None:
        object.__setattr__(self, "schema", self._compute_schema())

    def _compute_schema(self) -> Schema:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------ structure

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.schema)

    def _child_fields(self) -> Iterator[tuple[str, Any]]:
        for f in fields(self):
            if not f.init:
                continue
            value = getattr(self, f.name)
            if isinstance(value, Node) or (isinstance(value, tuple) and value
                                           and all(isinstance(v, Node) for v in value)):
                yield f.name, value

    @property
    def children(self) -> tuple[Node, ...]:
        out: list[Node] = []
        for _, value in self._child_fields():
            out.extend(value if isinstance(value, tuple) else (value,))
        return tuple(out)

    def with_children(self, children: tuple[Node, ...] | list[Node]) -> Node:
        """The same node over new children (in :attr:`children` order)."""
        children = tuple(children)
        updates: dict[str, Any] = {}
        pos = 0
        for name, value in self._child_fields():
            if isinstance(value, tuple):
                updates[name] = children[pos:pos + len(value)]
                pos += len(value)
            else:
                updates[name] = children[pos]
                pos += 1
        if pos != len(children):
            raise ValueError(f"{type(self).__name__} has {pos} children, got {len(children)}")
        if all(updates[k] is getattr(self, k) for k in updates):
            return self
        return replace(self, **updates)

    # ------------------------------------------------------------------ properties read by rules

    @property
    def elementwise(self) -> bool:
        return False

    @property
    def unchanged(self) -> frozenset[str]:
        return frozenset()

    @property
    def produces(self) -> frozenset[str] | None:
        """Columns written; None when that is only known from the data's schema."""
        return None

    def columns_needed(self, needed: Needed) -> tuple[Needed, ...]:
        return tuple(None for _ in self.children)

    @property
    def removable_if_unread(self) -> bool:
        """True if the node may be dropped when nothing above reads what it produces."""
        return False

    # ------------------------------------------------------------------ display

    def describe(self) -> str:
        """One line for explain()."""
        return self.label

    def detail_lines(self) -> list[str]:
        """Further lines shown under :meth:`describe` (templates, instructions)."""
        return []


# --------------------------------------------------------------------------- sources


#: File formats a :class:`Source` can scan by itself (and remember, so a saved plan names them).
FILE_KINDS = ("parquet", "csv", "ndjson", "ipc")


@dataclass(frozen=True, eq=False)
class Source:
    """The data a plan reads: a polars LazyFrame (from a DataFrame, a file scan, pandas ...)."""

    frame: pl.LazyFrame
    description: str = "DataFrame"
    #: True when the data is already in memory (a DataFrame), so collecting it is free.
    in_memory: bool = False
    #: Where the data comes from, for a file scan made by :meth:`from_file` (``sf.scan_parquet``
    #: ...): ``{"kind": "parquet", "path": ..., "options": {...}}``, what a saved plan records
    #: (see :mod:`semframe.plan.serialize`); None for data handed in.
    origin: dict | None = None

    @classmethod
    def from_file(cls, kind: str, path: Any, **options: Any) -> Source:
        """A lazy scan of a file (or a list of files, or a glob) that remembers its path and options.

        ``kind`` is one of :data:`FILE_KINDS`; ``options`` are those of ``pl.scan_<kind>``.
        """
        import os

        if kind not in FILE_KINDS:
            raise PlanError(f"unknown file kind {kind!r}; one of {', '.join(FILE_KINDS)}")
        where = f"scan_{kind}"
        if isinstance(path, (list, tuple)):
            paths: Any = [os.fspath(p) for p in path]
            if not paths:
                raise PlanError(f"{where}: give at least one path")
        else:
            paths = os.fspath(path)
        for p in paths if isinstance(paths, list) else [paths]:
            if not isinstance(p, str):
                raise PlanError(f"{where}: a path must be a string, got {type(p).__name__}")
            remote = "://" in p
            if not remote and not any(ch in p for ch in "*?[") and not os.path.exists(os.path.expanduser(p)):
                raise PlanError(f"{where}: no file {p!r}")
        try:
            frame = getattr(pl, where)(paths, **options)
        except TypeError as exc:
            raise PlanError(f"{where}: {exc}") from None
        shown = paths if isinstance(paths, str) else f"{paths[0]} (+{len(paths) - 1} more)"
        return cls(frame, f"{kind} {shown}", origin={"kind": kind, "path": paths, "options": dict(options)})

    @classmethod
    def from_data(cls, data: pl.DataFrame | pl.LazyFrame, description: str | None = None) -> Source:
        if isinstance(data, pl.DataFrame):
            return cls(data.lazy(), description or f"DataFrame {data.height} rows", in_memory=True)
        if isinstance(data, pl.LazyFrame):
            return cls(data, description or "LazyFrame")
        raise PlanError(f"expected a polars DataFrame or LazyFrame, got {type(data).__name__}")

    # Two sources are the same only if they are the same object: data has no cheap structure.
    def __eq__(self, other: object) -> bool:
        return self is other

    def __hash__(self) -> int:
        return id(self)


@dataclass(frozen=True)
class Scan(Node):
    """Read the source. ``columns_read`` (set by projection pushdown) limits what is read."""

    source: Source
    columns_read: tuple[str, ...] | None = None
    label: ClassVar[str] = "SCAN"

    def _compute_schema(self) -> Schema:
        full = _schema_of(self.source.frame)
        bad = [name for name, _ in full if name.startswith(RESERVED_PREFIX)]
        if bad:
            raise PlanError(f"column name {bad[0]!r} uses the reserved prefix {RESERVED_PREFIX!r}; rename it")
        if self.columns_read is None:
            return full
        return tuple((name, dtype) for name, dtype in full if name in self.columns_read)

    def frame(self) -> pl.LazyFrame:
        """The source as read: only ``columns_read`` when set."""
        lf = self.source.frame
        return lf if self.columns_read is None else lf.select(list(self.columns_read))

    def describe(self) -> str:
        cols = ", ".join(self.columns)
        read = "" if self.columns_read is None else f" (projected {len(self.columns)} columns)"
        return f"SCAN {self.source.description} [{cols}]{read}"


# --------------------------------------------------------------------------- relational


@dataclass(frozen=True)
class Relational(Node):
    """A step polars runs over its children's frames: :meth:`apply` builds the polars query."""

    def apply(self, *inputs: pl.LazyFrame) -> pl.LazyFrame:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def expressions(self) -> tuple[PlExpr, ...]:
        """The polars expressions the step evaluates (none for drop, rename, head)."""
        return ()

    @property
    def expands_schema(self) -> bool:
        """True if an expression expands against the schema (``pl.all()``, selectors)."""
        return any(e.selects_all for e in self.expressions)

    def _compute_schema(self) -> Schema:
        children = self.children
        try:
            schema = _schema_of(self.apply(*(empty_frame(c.schema) for c in children)))
        except pl.exceptions.PolarsError as exc:
            first = str(exc).strip().splitlines()[0]
            cols = ", ".join(map(repr, children[0].columns)) if children else ""
            raise PlanError(f"{self.where}: {first}; columns are {cols}") from None
        bad = [name for name, _ in schema if name.startswith(RESERVED_PREFIX)]
        if bad:
            raise PlanError(f"{self.where}: column name {bad[0]!r} uses the reserved prefix {RESERVED_PREFIX!r}; "
                            "pick another name")
        return schema

    @property
    def where(self) -> str:
        """How errors name the step."""
        return self.label.lower()


@dataclass(frozen=True)
class RowsOnly(Relational):
    """A step that only chooses or orders rows (filter, head, sort): every column passes unchanged."""

    @property
    def unchanged(self) -> frozenset[str]:
        return frozenset(self.child.columns)  # type: ignore[attr-defined]

    @property
    def produces(self) -> frozenset[str]:
        return frozenset()

    def columns_needed(self, needed: Needed) -> tuple[Needed, ...]:
        return (union_needed(needed, reads(self.expressions)),)


@dataclass(frozen=True)
class Filter(RowsOnly):
    child: Node
    predicate: PlExpr
    label: ClassVar[str] = "FILTER"
    rows: ClassVar[str] = "subset"

    @property
    def expressions(self) -> tuple[PlExpr, ...]:
        return (self.predicate,)

    def apply(self, lf: pl.LazyFrame) -> pl.LazyFrame:
        return lf.filter(self.predicate.expr)

    @property
    def elementwise(self) -> bool:
        return self.predicate.is_elementwise

    def describe(self) -> str:
        return f"FILTER {self.predicate}"


@dataclass(frozen=True)
class Select(Relational):
    child: Node
    exprs: tuple[PlExpr, ...]
    label: ClassVar[str] = "SELECT"

    @property
    def rows(self) -> str:  # type: ignore[override]
        # drop_nulls / filter / explode inside a select are row-separable but change the count.
        keeps_count = all(e.keeps_length for e in self.exprs)
        return "aligned" if self.elementwise and keeps_count else "other"

    @property
    def expressions(self) -> tuple[PlExpr, ...]:
        return self.exprs

    def apply(self, lf: pl.LazyFrame) -> pl.LazyFrame:
        return lf.select([e.expr for e in self.exprs])

    @property
    def elementwise(self) -> bool:
        # A select of literals alone is one row however many rows come in, not one per batch.
        return all(e.is_elementwise for e in self.exprs) and any(e.root_names for e in self.exprs)

    @property
    def is_projection(self) -> bool:
        """True if it only picks columns by name (no computation, no renaming)."""
        return all(e.expr.meta.is_column() for e in self.exprs)

    @property
    def unchanged(self) -> frozenset[str]:
        return frozenset(e.expr.meta.output_name() for e in self.exprs if e.expr.meta.is_column())

    @property
    def produces(self) -> frozenset[str] | None:
        return output_names(self.exprs)

    def columns_needed(self, needed: Needed) -> tuple[Needed, ...]:
        return (reads(self.exprs),)

    def describe(self) -> str:
        return "SELECT [" + ", ".join(map(str, self.exprs)) + "]"


@dataclass(frozen=True)
class WithColumns(Relational):
    child: Node
    exprs: tuple[PlExpr, ...]
    label: ClassVar[str] = "WITH_COLUMNS"
    rows: ClassVar[str] = "aligned"

    @property
    def expressions(self) -> tuple[PlExpr, ...]:
        return self.exprs

    def apply(self, lf: pl.LazyFrame) -> pl.LazyFrame:
        return lf.with_columns([e.expr for e in self.exprs])

    @property
    def elementwise(self) -> bool:
        return all(e.is_elementwise for e in self.exprs)

    @property
    def produces(self) -> frozenset[str] | None:
        return output_names(self.exprs)

    @property
    def unchanged(self) -> frozenset[str]:
        written = self.produces
        return frozenset() if written is None else frozenset(self.child.columns) - written

    def columns_needed(self, needed: Needed) -> tuple[Needed, ...]:
        written = self.produces
        if needed is None or written is None:
            return (None,)
        # A column it overwrites keeps its place in the output only if it comes from below.
        new = written - set(self.child.columns)
        return (union_needed(needed - new, reads(self.exprs)),)

    def describe(self) -> str:
        return "WITH_COLUMNS [" + ", ".join(map(str, self.exprs)) + "]"


@dataclass(frozen=True)
class Head(RowsOnly):
    child: Node
    n: int
    label: ClassVar[str] = "HEAD"
    rows: ClassVar[str] = "prefix"

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or isinstance(self.n, bool) or self.n < 0:
            raise PlanError(f"head: n must be a non-negative integer, got {self.n!r}")
        super().__post_init__()

    def apply(self, lf: pl.LazyFrame) -> pl.LazyFrame:
        return lf.head(self.n)

    def describe(self) -> str:
        return f"HEAD {self.n}"


@dataclass(frozen=True)
class Sort(RowsOnly):
    child: Node
    by: tuple[PlExpr, ...]
    descending: tuple[bool, ...]
    nulls_last: bool = False
    label: ClassVar[str] = "SORT"
    rows: ClassVar[str] = "permutation"

    def __post_init__(self) -> None:
        if not self.by:
            raise PlanError("sort: give at least one column or expression to sort by")
        if len(self.descending) != len(self.by):
            raise PlanError(f"sort: {len(self.by)} keys but {len(self.descending)} descending flags")
        super().__post_init__()

    @property
    def expressions(self) -> tuple[PlExpr, ...]:
        return self.by

    def apply(self, lf: pl.LazyFrame) -> pl.LazyFrame:
        return lf.sort([e.expr for e in self.by], descending=list(self.descending),
                       nulls_last=self.nulls_last, maintain_order=True)

    def describe(self) -> str:
        keys = ", ".join(f"{e}{' desc' if d else ''}" for e, d in zip(self.by, self.descending))
        return f"SORT BY [{keys}]"


@dataclass(frozen=True)
class Drop(Relational):
    """Drop columns. A column already pruned below (projection pushdown) is simply absent."""

    child: Node
    names: tuple[str, ...]
    label: ClassVar[str] = "DROP"
    rows: ClassVar[str] = "aligned"

    def apply(self, lf: pl.LazyFrame) -> pl.LazyFrame:
        return lf.drop(list(self.names), strict=False)

    @property
    def elementwise(self) -> bool:
        return True

    @property
    def unchanged(self) -> frozenset[str]:
        return frozenset(self.columns)

    @property
    def produces(self) -> frozenset[str]:
        return frozenset()

    def columns_needed(self, needed: Needed) -> tuple[Needed, ...]:
        # The dropped columns need not be read at all.
        return (frozenset(self.columns) if needed is None else needed,)

    def describe(self) -> str:
        return "DROP [" + ", ".join(self.names) + "]"


@dataclass(frozen=True)
class Rename(Relational):
    child: Node
    mapping: tuple[tuple[str, str], ...]
    label: ClassVar[str] = "RENAME"
    rows: ClassVar[str] = "aligned"

    def __post_init__(self) -> None:
        bad = [new for _, new in self.mapping if new.startswith(RESERVED_PREFIX)]
        if bad:
            raise PlanError(f"rename: {bad[0]!r} uses the reserved prefix {RESERVED_PREFIX!r}")
        super().__post_init__()

    def apply(self, lf: pl.LazyFrame) -> pl.LazyFrame:
        return lf.rename(dict(self.mapping))

    @property
    def elementwise(self) -> bool:
        return True

    @property
    def unchanged(self) -> frozenset[str]:
        touched = {a for a, _ in self.mapping} | {b for _, b in self.mapping}
        return frozenset(self.columns) - touched

    @property
    def produces(self) -> frozenset[str]:
        return frozenset(b for _, b in self.mapping)

    def columns_needed(self, needed: Needed) -> tuple[Needed, ...]:
        # Every renamed column must exist below (polars refuses to rename a missing one),
        # whether or not anything above reads it.
        back = {new: old for old, new in self.mapping}
        if needed is None:
            return (None,)
        return (frozenset(back.get(c, c) for c in needed) | set(back.values()),)

    def describe(self) -> str:
        return "RENAME [" + ", ".join(f"{a} -> {b}" for a, b in self.mapping) + "]"


# --------------------------------------------------------------------------- any polars method


@dataclass(frozen=True)
class InputRef:
    """Stands, inside a :class:`PolarsCall`'s arguments, for the frame of its ``index``-th input."""

    index: int


class FrozenList(tuple):
    """A list argument, frozen (hashable) inside a plan node; given back to polars as a list."""


class FrozenDict(tuple):
    """A dict argument, frozen as sorted items; given back to polars as a dict."""


@dataclass(frozen=True, eq=False)
class Opaque:
    """An argument with no structure to compare (a function): equal only to itself."""

    value: Any

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque) and other.value is self.value

    def __hash__(self) -> int:
        return id(self.value)

    def __repr__(self) -> str:
        return getattr(self.value, "__name__", type(self.value).__name__)


def freeze(value: Any, inputs: list[Any], as_input: Any) -> Any:
    """An argument as it is kept in a node: expressions by structure, frames as :class:`InputRef`.

    ``as_input(value)`` returns the plan of a frame-like value (or None if it is not one); each
    new one is appended to ``inputs``.
    """
    if isinstance(value, pl.Expr):
        return PlExpr(value)
    plan = as_input(value)
    if plan is not None:
        inputs.append(plan)
        return InputRef(len(inputs) - 1)
    if isinstance(value, list):
        return FrozenList(freeze(v, inputs, as_input) for v in value)
    if isinstance(value, tuple):
        return tuple(freeze(v, inputs, as_input) for v in value)
    if isinstance(value, dict):
        return FrozenDict(sorted(((k, freeze(v, inputs, as_input)) for k, v in value.items()),
                                 key=lambda kv: repr(kv[0])))
    try:
        hash(value)
    except TypeError:
        return Opaque(value)
    if callable(value) and not isinstance(value, (type, pl.DataType)):
        return Opaque(value)
    return value


def thaw(value: Any, frames: tuple[pl.LazyFrame, ...]) -> Any:
    """The polars argument for a frozen one, with each :class:`InputRef` replaced by its frame."""
    if isinstance(value, PlExpr):
        return value.expr
    if isinstance(value, InputRef):
        return frames[value.index]
    if isinstance(value, Opaque):
        return value.value
    if isinstance(value, FrozenList):
        return [thaw(v, frames) for v in value]
    if isinstance(value, FrozenDict):
        return {k: thaw(v, frames) for k, v in value}
    if isinstance(value, tuple):
        return tuple(thaw(v, frames) for v in value)
    return value


def frozen_exprs(value: Any) -> Iterator[PlExpr]:
    """Every expression inside a frozen argument."""
    if isinstance(value, PlExpr):
        yield value
    elif isinstance(value, tuple):  # FrozenList, FrozenDict items, plain tuples
        for v in value:
            yield from frozen_exprs(v)


@dataclass(frozen=True)
class Call:
    """One polars method call: ``name(*args, **kwargs)`` with frozen arguments."""

    name: str
    args: tuple[Any, ...] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()

    def apply(self, obj: Any, frames: tuple[pl.LazyFrame, ...]) -> Any:
        args = [thaw(a, frames) for a in self.args]
        kwargs = {k: thaw(v, frames) for k, v in self.kwargs}
        return getattr(obj, self.name)(*args, **kwargs)

    def __str__(self) -> str:
        parts = [_show(a) for a in self.args] + [f"{k}={_show(v)}" for k, v in self.kwargs]
        return f"{self.name}({', '.join(parts)})"


def _show(value: Any) -> str:
    if isinstance(value, InputRef):
        return f"<input {value.index}>"
    if isinstance(value, FrozenList):
        return "[" + ", ".join(map(_show, value)) + "]"
    if isinstance(value, FrozenDict):
        return "{" + ", ".join(f"{k!r}: {_show(v)}" for k, v in value) + "}"
    if isinstance(value, PlExpr):
        return str(value)
    return repr(value)


@dataclass(frozen=True)
class PolarsCall(Relational):
    """Any polars LazyFrame method (or chain, such as ``group_by(...).agg(...)``) as a plan step.

    ``inputs[0]`` is the frame the method is called on; frames passed as arguments (the other
    side of a join) are further inputs, referred to by :class:`InputRef` in ``calls``. The
    optimizer does not look inside: it is a barrier (``rows == "other"``) that rules move nothing
    through. How row ids travel through it is :mod:`semframe.execution.provenance`'s business
    (known methods keep them; any other method gives null provenance).
    """

    inputs: tuple[Node, ...]
    calls: tuple[Call, ...]
    label: ClassVar[str] = "POLARS"

    def __post_init__(self) -> None:
        if not self.inputs or not self.calls:
            raise PlanError("a polars step needs an input and a method")
        super().__post_init__()

    @property
    def method(self) -> str:
        return ".".join(c.name for c in self.calls)

    @property
    def where(self) -> str:
        return self.method

    @property
    def expressions(self) -> tuple[PlExpr, ...]:
        out: list[PlExpr] = []
        for call in self.calls:
            for a in (*call.args, *(v for _, v in call.kwargs)):
                out.extend(frozen_exprs(a))
        return tuple(out)

    def apply(self, *frames: pl.LazyFrame) -> pl.LazyFrame:
        obj: Any = frames[0]
        for call in self.calls:
            obj = call.apply(obj, frames)
        if not isinstance(obj, pl.LazyFrame):
            raise PlanError(f"{self.method} does not return a LazyFrame")
        return obj

    def describe(self) -> str:
        return "POLARS ." + ".".join(map(str, self.calls))


# --------------------------------------------------------------------------- traversal


def walk(node: Node) -> Iterator[Node]:
    """Yield ``node`` and its descendants, root first (depth first, children in order)."""
    yield node
    for child in node.children:
        yield from walk(child)


def walk_up(node: Node) -> Iterator[Node]:
    """Yield the nodes in execution order: children (left to right) before their parent."""
    for child in node.children:
        yield from walk_up(child)
    yield node


def transform_up(node: Node, fn) -> Node:
    """Rebuild the tree bottom-up, replacing each node by ``fn(node)`` (children first)."""
    children = node.children
    if children:
        node = node.with_children([transform_up(c, fn) for c in children])
    return fn(node)


def push_down(plan: Node, kind: type[Node], push) -> Node:
    """Top-down: wherever a ``kind`` node is found, let ``push(node)`` sink it one level.

    ``push`` returns the rewritten subtree, or None where the node cannot move; a node that
    moved is pushed again from its new place, so it sinks as far as it can.
    """
    if isinstance(plan, kind) and plan.children:
        pushed = push(plan)
        if pushed is not None:
            return push_down(pushed, kind, push)
    children = plan.children
    if not children:
        return plan
    return plan.with_children([push_down(c, kind, push) for c in children])
