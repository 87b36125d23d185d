"""Embedding plan nodes: ``embed``, ``search``, ``sim_join`` -- similarity, no LLM.

These operators ask an embedding engine (see :mod:`semframe.engines.embedding`), never an LLM
(``uses_llm = False``): a plan made only of them starts no LLM engine and its estimate counts 0
engine calls. Each node holds its texts as a :class:`~semframe.plan.template.Template` (a
column name is the template of that column) and its ``embedder``: an embedding engine object,
a sentence-transformers model folder or name, or None (the embedder configured when the plan
runs: ``sf.configure(embedding_model=...)``, else all-MiniLM-L6-v2). The plan layer never loads
or imports an embedder; the verb that builds a node says how wide its vectors are
(``dimension``, when that is known without loading a model), and the embedding column is typed
``Array(Float32, dimension)`` then, ``List(Float32)`` otherwise.

``engine`` is the field every semantic node has; these nodes ask no LLM, so it must stay None
(the verbs take an embedding engine passed as ``engine=`` as the ``embedder``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import polars as pl

from semframe.errors import PlanError
from semframe.plan.nodes import RESERVED_PREFIX, Needed, Node, Schema
from semframe.plan.semantic import SemanticNode
from semframe.plan.template import Template

#: Suffix of a right column whose name a left column already has (``sim_join``).
RIGHT_SUFFIX = "_right"


def embedder_text(embedder: Any) -> str:
    """How plans show an embedder (without loading or importing it)."""
    if embedder is None:
        return "default embedder"
    if isinstance(embedder, str):
        return repr(embedder)
    label = getattr(embedder, "label", None)
    return label() if callable(label) else type(embedder).__name__


def _check_common(where: str, node: Any) -> None:
    if node.engine is not None:
        raise PlanError(f"{where} asks no LLM engine, so it takes no engine=; pass the embedding model as "
                        "embedder=... (an embedding engine such as sf.HashingEmbedder(), or a model name)")
    e = node.embedder
    if e is not None and not (isinstance(e, str) and e.strip()) and not (
            callable(getattr(e, "embed", None)) and callable(getattr(e, "fingerprint", None))):
        raise PlanError(f"{where}: embedder must be an embedding engine (sf.HashingEmbedder(), "
                        f"sf.SentenceTransformerEmbedder(), sf.OpenAIEmbedder(...)), a sentence-transformers "
                        f"model folder or name, or None (the configured one), got {type(e).__name__} {e!r}")


def _check_name(where: str, name: Any, taken: tuple[str, ...], what: str = "output column") -> None:
    if not isinstance(name, str) or not name:
        raise PlanError(f"{where}: name must be a non-empty string, got {name!r}")
    if name.startswith(RESERVED_PREFIX):
        raise PlanError(f"{where}: name {name!r} uses the reserved prefix {RESERVED_PREFIX!r}")
    if name in taken:
        raise PlanError(f"{where}: {what} {name!r} already exists; pass name='...' with a new name "
                        f"(columns are {', '.join(map(repr, taken))})")


def _check_template(where: str, template: Template, child: Node) -> None:
    if not isinstance(template, Template):
        raise PlanError(f"{where}: expected a Template, got {type(template).__name__}")
    template.check_columns(child.columns, where)
    template.check_renderable(dict(child.schema), where)


def _check_k(where: str, k: Any) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise PlanError(f"{where}: k must be a positive integer, got {k!r}")


@dataclass(frozen=True)
class SemEmbed(SemanticNode):
    """One embedding per row: a unit vector of the row's text (null where the text is null or blank).

    The column is ``Array(Float32, dimension)`` when ``dimension`` is given, else
    ``List(Float32)``.
    """

    child: Node
    template: Template
    name: str = "embedding"
    embedder: Any = None
    dimension: int | None = None
    engine: Any = None

    operator: ClassVar[str] = "embed"
    uses_llm: ClassVar[bool] = False
    rows: ClassVar[str] = "aligned"

    def __post_init__(self) -> None:
        where = "semantic.embed"
        _check_common(where, self)
        _check_template(where, self.template, self.child)
        _check_name(where, self.name, self.child.columns)
        d = self.dimension
        if d is not None and (isinstance(d, bool) or not isinstance(d, int) or d < 1):
            raise PlanError(f"{where}: dimension must be a positive integer or None, got {d!r}")
        super().__post_init__()

    @property
    def output_dtype(self) -> pl.DataType:
        return pl.Array(pl.Float32, self.dimension) if self.dimension else pl.List(pl.Float32)

    def _compute_schema(self) -> Schema:
        return self.child.schema + ((self.name, self.output_dtype),)

    @property
    def elementwise(self) -> bool:
        return True  # a row's vector depends on its text only

    @property
    def unchanged(self) -> frozenset[str]:
        return frozenset(self.child.columns)

    @property
    def produces(self) -> frozenset[str]:
        return frozenset((self.name,))

    @property
    def removable_if_unread(self) -> bool:
        return True

    def columns_needed(self, needed: Needed) -> tuple[Needed, ...]:
        if needed is None:
            return (None,)
        return ((needed - self.produces) | set(self.template.columns),)

    def describe(self) -> str:
        return f"SEMANTIC EMBED -> {self.name} [{embedder_text(self.embedder)}; {self.output_dtype}]"

    def detail_lines(self) -> list[str]:
        return [f"text: {self.template.source!r}"]


@dataclass(frozen=True)
class SemSearch(SemanticNode):
    """The ``k`` rows whose text is most similar to ``query``, most similar first, with the
    cosine similarity in column ``name`` (Float64). Ties keep input order; rows whose text is
    null or blank never match."""

    child: Node
    query: str
    template: Template
    k: int = 10
    name: str = "score"
    embedder: Any = None
    engine: Any = None

    operator: ClassVar[str] = "search"
    uses_llm: ClassVar[bool] = False
    rows: ClassVar[str] = "other"  # a subset, reordered: a barrier to filters and heads

    def __post_init__(self) -> None:
        where = "semantic.search"
        _check_common(where, self)
        if not isinstance(self.query, str) or not self.query.strip():
            raise PlanError(f"{where}: query must be a non-empty string, got {self.query!r}")
        _check_template(where, self.template, self.child)
        _check_k(where, self.k)
        _check_name(where, self.name, self.child.columns)
        super().__post_init__()

    def _compute_schema(self) -> Schema:
        return self.child.schema + ((self.name, pl.Float64()),)

    @property
    def produces(self) -> frozenset[str]:
        return frozenset((self.name,))

    def columns_needed(self, needed: Needed) -> tuple[Needed, ...]:
        if needed is None:
            return (None,)
        return ((needed - self.produces) | set(self.template.columns),)

    def describe(self) -> str:
        return f"SEMANTIC SEARCH -> {self.name} [top {self.k} by cosine similarity; {embedder_text(self.embedder)}]"

    def detail_lines(self) -> list[str]:
        return [f"query: {self.query!r}", f"text: {self.template.source!r}"]


@dataclass(frozen=True)
class SemSimJoin(SemanticNode):
    """For each left row, its ``k`` most similar right rows (those with similarity >=
    ``threshold`` when one is given), most similar first; left rows with no match are dropped.

    Output: the left columns, the right columns (a name the left side already has gets the
    suffix ``_right``), and the similarity in column ``name`` (Float64). Each output row's
    provenance is the pair ``{left, right}``.
    """

    left: Node
    right: Node
    left_template: Template
    right_template: Template
    k: int = 1
    threshold: float | None = None
    name: str = "similarity"
    embedder: Any = None
    engine: Any = None

    operator: ClassVar[str] = "sim_join"
    uses_llm: ClassVar[bool] = False
    rows: ClassVar[str] = "other"

    def __post_init__(self) -> None:
        where = "semantic.sim_join"
        _check_common(where, self)
        _check_template(f"{where} (left_on)", self.left_template, self.left)
        _check_template(f"{where} (right_on)", self.right_template, self.right)
        _check_k(where, self.k)
        t = self.threshold
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not -1.0 <= t <= 1.0):
            raise PlanError(f"{where}: threshold must be a cosine similarity in [-1, 1] or None, got {t!r}")
        left = self.left.columns
        for c in self.right.columns:
            if c in left and c + RIGHT_SUFFIX in left + self.right.columns:
                raise PlanError(f"{where}: the right column {c!r} clashes with a left column and "
                                f"{c + RIGHT_SUFFIX!r} exists too; rename one side's columns first")
        super().__post_init__()
        _check_name(where, self.name, tuple(n for n, _ in self.schema[:-1]), "similarity column")

    @property
    def right_names(self) -> dict[str, str]:
        """Right column -> its name in the output."""
        left = set(self.left.columns)
        return {c: c + RIGHT_SUFFIX if c in left else c for c in self.right.columns}

    def _compute_schema(self) -> Schema:
        renamed = self.right_names
        right = tuple((renamed[c], dt) for c, dt in self.right.schema)
        return self.left.schema + right + ((self.name, pl.Float64()),)

    @property
    def produces(self) -> frozenset[str]:
        return frozenset((self.name,))

    def columns_needed(self, needed: Needed) -> tuple[Needed, ...]:
        if needed is None:
            return (None, None)
        renamed = self.right_names
        right = {c for c, out in renamed.items() if out in needed} | set(self.right_template.columns)
        # A renamed right column keeps its name only while the left column it clashed with stays.
        left = ((needed & set(self.left.columns)) | set(self.left_template.columns)
                | {c for c in right if renamed[c] != c})
        return (frozenset(left), frozenset(right))

    def describe(self) -> str:
        cut = f", similarity >= {self.threshold:g}" if self.threshold is not None else ""
        return (f"SEMANTIC SIM_JOIN -> {self.name} [top {self.k} right rows per left row{cut}; "
                f"{embedder_text(self.embedder)}]")

    def detail_lines(self) -> list[str]:
        return [f"left_on: {self.left_template.source!r}", f"right_on: {self.right_template.source!r}"]
