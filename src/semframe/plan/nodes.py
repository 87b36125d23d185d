"""Plan nodes: small immutable dataclasses that hash by structure.

A plan is a tree of nodes rooted at its last step; every node but :class:`Scan` has one child.
Each node checks its invariants and computes its output schema when it is constructed, so an
unknown column or a name clash is an error while the plan is built, before any engine call.

Relational nodes wrap polars expressions (:class:`PlExpr`, compared by their serialized form)
and run on polars; semantic nodes (:class:`SemanticStep` and subclasses) describe one LLM
operator: its prompt template, instruction, output spec and output column.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, ClassVar

import polars as pl

from semframe.errors import PlanError
from semframe.plan.spec import ChoiceSpec, JsonSpec, OutputSpec, TextSpec
from semframe.plan.template import Template

#: Column semframe adds at the scan to identify input rows (lineage); never visible to users.
ROW_ID = "__sf_row_id"
RESERVED_PREFIX = "__sf_"

Schema = tuple[tuple[str, pl.DataType], ...]


def _schema_of(lf: pl.LazyFrame) -> Schema:
    return tuple(lf.collect_schema().items())


def _empty(schema: Schema) -> pl.LazyFrame:
    return pl.LazyFrame(schema=dict(schema))


@dataclass(frozen=True, eq=False)
class PlExpr:
    """A polars expression that compares and hashes by structure."""

    expr: pl.Expr

    @cached_property
    def _key(self) -> bytes:
        return self.expr.meta.serialize()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlExpr) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __str__(self) -> str:
        return str(self.expr)

    @cached_property
    def root_names(self) -> frozenset[str]:
        return frozenset(self.expr.meta.root_names())

    @cached_property
    def selects_all(self) -> bool:
        """True if a wildcard, regex or selector appears anywhere in it: the columns it reads are not named.

        This covers ``pl.col("a", "b")``, ``pl.first()``, ``pl.exclude(...)`` and
        ``pl.sum_horizontal(cs.numeric())`` too: polars expands them against the frame's schema.
        """
        meta = self.expr.meta
        return meta.has_multiple_outputs() or meta.is_regex_projection()

    @cached_property
    def is_elementwise(self) -> bool:
        """True if each output row depends only on the same input row.

        Such an expression gives the same answer on any split of the rows into batches, so it
        can run per batch and commute with row-removing steps. Conservative: polars'
        ``is_row_separable`` holds for every sub-expression (polars only looks at the top node:
        it calls ``cum_sum() < 5`` separable), there is no aggregation, length or window
        anywhere in the tree, and anything polars cannot analyse (selectors, Python UDFs) is
        not elementwise.
        """
        if self.selects_all:
            return False  # polars cannot analyse an expression before expanding it (it raises)
        try:
            tree = json.loads(self.expr.meta.serialize(format="json"))
        except (pl.exceptions.PolarsError, ValueError, TypeError):
            return False
        if _contains_key(tree, {"Agg", "Len", "Over", "Window", "Rolling"}):
            return False
        return all(_row_separable(sub) for sub in _subexpressions(tree))

    @classmethod
    def of(cls, value: Any, where: str) -> PlExpr:
        if isinstance(value, str):
            return cls(pl.col(value))
        if isinstance(value, pl.Expr):
            return cls(value)
        raise PlanError(f"{where}: expected a column name or a polars expression, got {type(value).__name__}")

    def __reduce__(self):  # pickle via polars' own serialization (for Ray and subprocesses)
        return (_plexpr_from_bytes, (self._key,))


def _plexpr_from_bytes(blob: bytes) -> PlExpr:
    return PlExpr(pl.Expr.deserialize(io.BytesIO(blob)))


def _subexpressions(tree: Any):
    """Every node of a serialized expression tree that is itself an expression (as pl.Expr)."""
    if isinstance(tree, dict):
        try:
            yield pl.Expr.deserialize(io.StringIO(json.dumps(tree)), format="json")
        except (Exception, pl.exceptions.PanicException):  # not an expression (options, values)
            pass
        for value in tree.values():
            yield from _subexpressions(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _subexpressions(value)


def _row_separable(expr: pl.Expr) -> bool:
    try:
        return expr.meta.is_row_separable()
    except (Exception, pl.exceptions.PanicException):  # polars cannot analyse it: not elementwise
        return False


def _contains_key(tree: Any, keys: set[str]) -> bool:
    if isinstance(tree, dict):
        return any(k in keys or _contains_key(v, keys) for k, v in tree.items())
    if isinstance(tree, list):
        return any(_contains_key(v, keys) for v in tree)
    return tree in keys if isinstance(tree, str) else False


@dataclass(frozen=True)
class Node:
    """Base of plan nodes. ``schema`` is computed at construction and excluded from equality."""

    schema: Schema = field(init=False, repr=False, compare=False)

    #: Label in explain().
    label: ClassVar[str] = "NODE"

    def __post_init__(self) -> None:
        object.__setattr__(self, "schema", self._compute_schema())

    def _compute_schema(self) -> Schema:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.schema)

    @property
    def children(self) -> tuple[Node, ...]:
        child = getattr(self, "child", None)
        return () if child is None else (child,)

    def with_child(self, child: Node) -> Node:
        return replace(self, child=child)

    def describe(self) -> str:
        """One line for explain()."""
        return self.label


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True, eq=False)
class Source:
    """The data a plan reads: a polars LazyFrame (from a DataFrame, a file scan, pandas ...)."""

    frame: pl.LazyFrame
    description: str = "DataFrame"
    #: True when the data is already in memory (a DataFrame), so collecting it is free.
    in_memory: bool = False

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

    def describe(self) -> str:
        cols = ", ".join(self.columns)
        read = "" if self.columns_read is None else f" (projected {len(self.columns)} columns)"
        return f"SCAN {self.source.description} [{cols}]{read}"


# --------------------------------------------------------------------------- relational


@dataclass(frozen=True)
class Relational(Node):
    """A step polars runs. Subclasses implement :meth:`apply` on a LazyFrame."""

    #: Whether every input row yields exactly one output row, in order.
    row_preserving: ClassVar[bool] = True

    def apply(self, lf: pl.LazyFrame) -> pl.LazyFrame:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def expressions(self) -> tuple[PlExpr, ...]:
        """The polars expressions the step evaluates (none for drop, rename, head)."""
        return ()

    @property
    def is_elementwise(self) -> bool:
        """True if the step gives the same result on any split of its input into batches."""
        return False

    def _compute_schema(self) -> Schema:
        child: Node = self.child  # type: ignore[attr-defined]
        try:
            return _schema_of(self.apply(_empty(child.schema)))
        except pl.exceptions.PolarsError as exc:
            first = str(exc).strip().splitlines()[0]
            raise PlanError(
                f"{self.label.lower()}: {first}; columns are {', '.join(map(repr, child.columns))}"
            ) from None


@dataclass(frozen=True)
class Filter(Relational):
    child: Node
    predicate: PlExpr
    label: ClassVar[str] = "FILTER"
    row_preserving: ClassVar[bool] = False

    @property
    def expressions(self) -> tuple[PlExpr, ...]:
        return (self.predicate,)

    def apply(self, lf: pl.LazyFrame) -> pl.LazyFrame:
        return lf.filter(self.predicate.expr)

    @property
    def is_elementwise(self) -> bool:
        return self.predicate.is_elementwise

    def describe(self) -> str:
        return f"FILTER {self.predicate}"


@dataclass(frozen=True)
class Select(Relational):
    child: Node
    exprs: tuple[PlExpr, ...]
    label: ClassVar[str] = "SELECT"

    @property
    def expressions(self) -> tuple[PlExpr, ...]:
        return self.exprs

    def apply(self, lf: pl.LazyFrame) -> pl.LazyFrame:
        return lf.select([e.expr for e in self.exprs])

    @property
    def is_elementwise(self) -> bool:
        # A select of literals alone is one row however many rows come in, not one per batch.
        return all(e.is_elementwise for e in self.exprs) and any(e.root_names for e in self.exprs)

    @property
    def is_projection(self) -> bool:
        """True if it only picks columns by name (no computation, no renaming)."""
        return all(e.expr.meta.is_column() for e in self.exprs)

    def describe(self) -> str:
        return "SELECT [" + ", ".join(map(str, self.exprs)) + "]"


@dataclass(frozen=True)
class WithColumns(Relational):
    child: Node
    exprs: tuple[PlExpr, ...]
    label: ClassVar[str] = "WITH_COLUMNS"

    @property
    def expressions(self) -> tuple[PlExpr, ...]:
        return self.exprs

    def apply(self, lf: pl.LazyFrame) -> pl.LazyFrame:
        return lf.with_columns([e.expr for e in self.exprs])

    @property
    def is_elementwise(self) -> bool:
        return all(e.is_elementwise for e in self.exprs)

    def describe(self) -> str:
        return "WITH_COLUMNS [" + ", ".join(map(str, self.exprs)) + "]"


@dataclass(frozen=True)
class Head(Relational):
    child: Node
    n: int
    label: ClassVar[str] = "HEAD"
    row_preserving: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or isinstance(self.n, bool) or self.n < 0:
            raise PlanError(f"head: n must be a non-negative integer, got {self.n!r}")
        super().__post_init__()

    def apply(self, lf: pl.LazyFrame) -> pl.LazyFrame:
        return lf.head(self.n)

    def describe(self) -> str:
        return f"HEAD {self.n}"


@dataclass(frozen=True)
class Sort(Relational):
    child: Node
    by: tuple[PlExpr, ...]
    descending: tuple[bool, ...]
    nulls_last: bool = False
    label: ClassVar[str] = "SORT"
    row_preserving: ClassVar[bool] = False  # it keeps the rows but not their order

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
    child: Node
    names: tuple[str, ...]
    label: ClassVar[str] = "DROP"

    def apply(self, lf: pl.LazyFrame) -> pl.LazyFrame:
        return lf.drop(list(self.names))

    @property
    def is_elementwise(self) -> bool:
        return True

    def describe(self) -> str:
        return "DROP [" + ", ".join(self.names) + "]"


@dataclass(frozen=True)
class Rename(Relational):
    child: Node
    mapping: tuple[tuple[str, str], ...]
    label: ClassVar[str] = "RENAME"

    def __post_init__(self) -> None:
        bad = [new for _, new in self.mapping if new.startswith(RESERVED_PREFIX)]
        if bad:
            raise PlanError(f"rename: {bad[0]!r} uses the reserved prefix {RESERVED_PREFIX!r}")
        super().__post_init__()

    def apply(self, lf: pl.LazyFrame) -> pl.LazyFrame:
        return lf.rename(dict(self.mapping))

    @property
    def is_elementwise(self) -> bool:
        return True

    def describe(self) -> str:
        return "RENAME [" + ", ".join(f"{a} -> {b}" for a, b in self.mapping) + "]"


# --------------------------------------------------------------------------- semantic


@dataclass(frozen=True)
class SemanticStep(Node):
    """One LLM operator over the rows of its child.

    Parameters
    ----------
    child
        The input.
    template
        The per-row text (``{column}`` references).
    instruction
        The fixed text shared by every row; goes first in the prompt.
    spec
        What the answer must look like.
    name
        The output column (None for ``filter``).
    max_tokens
        The most tokens the engine may produce per row (default: from the spec).
    temperature
        Sampling temperature; 0 is greedy.
    dedupe
        Ask the engine each distinct request once (set by the optimizer's ``dedupe_prompts``).
    layout
        ``"shared_first"`` puts the instruction before the row's text in a system message
        (set by the optimizer's ``shape_prompts``, so the engine's prefix cache can reuse it);
        ``"inline"`` sends one user message with the row's text first.
    """

    child: Node
    template: Template
    instruction: str | None
    spec: OutputSpec
    name: str | None
    max_tokens: int | None = None
    temperature: float = 0.0
    dedupe: bool = False
    layout: str = "inline"
    cache: bool | None = None
    semantic_cache: float | None = None

    operator: ClassVar[str] = "semantic"
    row_preserving: ClassVar[bool] = True

    def __post_init__(self) -> None:
        where = f"semantic.{self.operator}"
        self.template.check_columns(self.child.columns, where)
        if self.instruction is not None and not isinstance(self.instruction, str):
            raise PlanError(f"{where}: instruction must be a string, got {type(self.instruction).__name__}")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 1):
            raise PlanError(f"{where}: max_tokens must be a positive integer, got {self.max_tokens!r}")
        if not 0.0 <= self.temperature <= 2.0:
            raise PlanError(f"{where}: temperature must be between 0 and 2, got {self.temperature}")
        if self.layout not in ("inline", "shared_first"):
            raise PlanError(f"{where}: layout must be 'inline' or 'shared_first', got {self.layout!r}")
        if self.semantic_cache is not None and not 0.0 < self.semantic_cache <= 1.0:
            raise PlanError(f"{where}: semantic_cache threshold must be in (0, 1], got {self.semantic_cache}")
        if self.name is not None:
            if not isinstance(self.name, str) or not self.name:
                raise PlanError(f"{where}: name must be a non-empty string, got {self.name!r}")
            if self.name.startswith(RESERVED_PREFIX):
                raise PlanError(f"{where}: name {self.name!r} uses the reserved prefix {RESERVED_PREFIX!r}")
            if self.name in self.child.columns:
                raise PlanError(
                    f"{where}: output column {self.name!r} already exists; pass name='...' "
                    f"with a new name (columns are {', '.join(map(repr, self.child.columns))})"
                )
        super().__post_init__()

    @property
    def output_dtype(self) -> pl.DataType:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def effective_max_tokens(self) -> int:
        return self.max_tokens if self.max_tokens is not None else self.spec.default_max_tokens()

    def _compute_schema(self) -> Schema:
        return self.child.schema + ((self.name, self.output_dtype),)

    def describe(self) -> str:
        out = f" -> {self.name}" if self.name else ""
        flags = [f"max_tokens={self.effective_max_tokens}"]
        if self.dedupe:
            flags.append("dedupe")
        if self.layout == "shared_first":
            flags.append("shared prefix first")
        from semframe.config import settings  # sf.configure(cache=False) turns it off for every run

        if self.cache is False or not settings.cache:
            flags.append("exact cache off")
        else:
            flags.append("exact cache")
        if self.semantic_cache is not None:
            flags.append(f"semantic cache >= {self.semantic_cache:g}")
        return f"SEMANTIC {self.operator.upper()}{out} [{self.spec.describe()}; {', '.join(flags)}]"

    def detail_lines(self) -> list[str]:
        lines = [f"template: {self.template.source!r}"]
        if self.instruction:
            lines.append(f"instruction: {self.instruction!r}")
        return lines


@dataclass(frozen=True)
class SemClassify(SemanticStep):
    operator: ClassVar[str] = "classify"

    def __post_init__(self) -> None:
        if not isinstance(self.spec, ChoiceSpec):
            raise PlanError("semantic.classify needs a ChoiceSpec")
        super().__post_init__()

    @property
    def output_dtype(self) -> pl.DataType:
        return pl.String()


@dataclass(frozen=True)
class SemFilter(SemanticStep):
    """Keep the rows the model answers YES for. Adds no column."""

    operator: ClassVar[str] = "filter"
    row_preserving: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.spec != ChoiceSpec(("YES", "NO")):
            raise PlanError("semantic.filter answers YES or NO")
        super().__post_init__()

    def _compute_schema(self) -> Schema:
        return self.child.schema


@dataclass(frozen=True)
class SemExtract(SemanticStep):
    operator: ClassVar[str] = "extract"

    def __post_init__(self) -> None:
        if not isinstance(self.spec, JsonSpec):
            raise PlanError("semantic.extract needs a JsonSpec")
        super().__post_init__()

    @property
    def output_dtype(self) -> pl.DataType:
        return self.spec.polars_dtype()  # type: ignore[attr-defined]


@dataclass(frozen=True)
class SemMap(SemanticStep):
    operator: ClassVar[str] = "map"

    def __post_init__(self) -> None:
        if not isinstance(self.spec, TextSpec):
            raise PlanError("semantic.map needs a TextSpec")
        super().__post_init__()

    @property
    def output_dtype(self) -> pl.DataType:
        return pl.String()


# --------------------------------------------------------------------------- traversal


def walk(node: Node):
    """Yield ``node`` and its descendants, root first."""
    yield node
    for child in node.children:
        yield from walk(child)


def push_down(plan: Node, kind: type[Node], push) -> Node:
    """Top-down: wherever a ``kind`` node is found, let ``push(node)`` sink it one level.

    ``push`` returns the rewritten subtree, or None where the node cannot move; a node that
    moved is pushed again from its new place, so it sinks as far as it can.
    """
    children = plan.children
    if not children:
        return plan
    if isinstance(plan, kind):
        pushed = push(plan)
        if pushed is not None:
            return push_down(pushed, kind, push)
    return plan.with_child(push_down(children[0], kind, push))


def transform_up(node: Node, fn) -> Node:
    """Rebuild the tree bottom-up, replacing each node by ``fn(node)`` (children first)."""
    children = node.children
    if children:
        new_child = transform_up(children[0], fn)
        if new_child is not children[0]:
            node = node.with_child(new_child)
    return fn(node)
