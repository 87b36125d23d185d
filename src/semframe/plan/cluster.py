"""Plan nodes of the embedding-then-LLM operators over a whole column: ``cluster`` and ``dedup``.

Both keep every input row, in order, and add columns (``rows == "aligned"``), but a row's answer
depends on *every other* row (its cluster's centroid, its nearest neighbours), so neither is
elementwise: a relational filter or a ``head`` above them must not move below them (it would
change the clusters and the candidate pairs), and :mod:`semframe.optimizer.pushdown_predicates`
and :mod:`semframe.optimizer.pushdown_limit` leave them in place because ``elementwise`` is False.
Like the row-wise verbs they may be dropped when nothing above reads what they add.

:class:`SemCluster` embeds the text, runs k-means, and (with ``label=True``) asks one request
per cluster for a short name. :class:`SemDedup` is entity resolution: embedding blocking, one
YES/NO request per candidate pair, transitive closure into entity ids, optionally a canonical
value per entity. How they run is :mod:`semframe.physical.cluster`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import polars as pl

from semframe.errors import PlanError
from semframe.plan.nodes import RESERVED_PREFIX, Needed, Node, Schema
from semframe.plan.semantic import SemanticNode, option_flags
from semframe.plan.template import Template

#: The question a dedup asks about each candidate pair when none is given.
DEFAULT_DEDUP_QUESTION = "Do these two records refer to the same entity?"


def _check_int(value: Any, where: str, what: str, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise PlanError(f"{where}: {what} must be an integer >= {low}, got {value!r}")


def _check_name(name: Any, child: Node, where: str, what: str = "name") -> None:
    if not isinstance(name, str) or not name:
        raise PlanError(f"{where}: {what} must be a non-empty string, got {name!r}")
    if name.startswith(RESERVED_PREFIX):
        raise PlanError(f"{where}: {what} {name!r} uses the reserved prefix {RESERVED_PREFIX!r}")
    if name in child.columns:
        raise PlanError(
            f"{where}: output column {name!r} already exists; pass name='...' with a new name "
            f"(columns are {', '.join(map(repr, child.columns))})"
        )


def embedder_label(embedder: Any) -> str:
    """How plans show a step's embedder: a name as given, an embedding engine's ``label()``, else its class."""
    if isinstance(embedder, str):
        return repr(embedder)
    label = getattr(embedder, "label", None)
    return label() if callable(label) else type(embedder).__name__


def _check_embedder(embedder: Any, where: str) -> None:
    if isinstance(embedder, str):
        if not embedder.strip():
            raise PlanError(f"{where}: embedder must name a sentence-transformers model or folder, got {embedder!r}")
        return
    if embedder is not None and not callable(getattr(embedder, "embed", None)):
        raise PlanError(f"{where}: embedder must be a model name, or an object with an .embed(texts) method "
                        f"returning unit vectors, got {type(embedder).__name__}")


@dataclass(frozen=True)
class _WholeColumnStep(SemanticNode):
    """What cluster and dedup share: a template over the child, extra columns, every row kept."""

    rows: ClassVar[str] = "aligned"

    @property
    def elementwise(self) -> bool:
        return False  # each row's answer depends on all the rows (centroids, neighbours)

    @property
    def unchanged(self) -> frozenset[str]:
        return frozenset(self.child.columns)  # type: ignore[attr-defined]

    @property
    def added(self) -> tuple[tuple[str, pl.DataType], ...]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def produces(self) -> frozenset[str]:
        return frozenset(name for name, _ in self.added)

    @property
    def removable_if_unread(self) -> bool:
        return True  # it keeps every row: nobody can see it if nobody reads its columns

    def columns_needed(self, needed: Needed) -> tuple[Needed, ...]:
        if needed is None:
            return (None,)
        return ((needed - self.produces) | set(self.template.columns),)  # type: ignore[attr-defined]

    def _compute_schema(self) -> Schema:
        return self.child.schema + self.added  # type: ignore[attr-defined]

    def _check_common(self, where: str) -> None:
        self.template.check_columns(self.child.columns, where)  # type: ignore[attr-defined]
        self.template.check_renderable(dict(self.child.schema), where)  # type: ignore[attr-defined]
        _check_embedder(self.embedder, where)  # type: ignore[attr-defined]
        cache = self.cache  # type: ignore[attr-defined]
        if cache is not None and not isinstance(cache, bool):
            raise PlanError(f"{where}: cache must be True, False or None, got {cache!r}")

    def _flags(self) -> list[str]:
        flags = []
        if self.embedder is not None:  # type: ignore[attr-defined]
            flags.append(f"embedder {embedder_label(self.embedder)}")  # type: ignore[attr-defined]
        return flags + option_flags(self)


@dataclass(frozen=True)
class SemCluster(_WholeColumnStep):
    """Group rows by the meaning of their text: k-means over embeddings, one named label per cluster.

    Parameters
    ----------
    child
        The input.
    template
        The text of each row (a column, or a ``{column}`` template).
    k
        The number of clusters (at least 1; at run time at most the rows that have text).
    name
        The cluster id column (Int32, ``0..k-1`` numbered in order of first appearance; null
        where the row has no text). The label column is ``<name>_label``.
    with_label
        Ask the model for a short label per cluster (one request per cluster); False: ids only,
        no LLM. (The verb's ``label=``; ``label`` is every node's explain label.)
    instruction
        What the label request says (default: name the topic the texts share in a few words).
    embedder
        An object with ``.embed(texts) -> float32 unit rows``, or a sentence-transformers model
        name or folder (None: the process's embedder, ``semframe.cache.embed.default_embedder()``).
    seed
        k-means' ``random_state``: the same seed and data give the same clusters.
    shown
        Rows shown to the model per label request: those nearest the centroid.
    cache, engine
        As for every semantic step.
    """

    child: Node
    template: Template
    k: int = 8
    name: str = "cluster"
    with_label: bool = True
    instruction: str | None = None
    embedder: Any = None
    seed: int = 0
    shown: int = 5
    cache: bool | None = None
    engine: Any = None

    operator: ClassVar[str] = "cluster"

    def __post_init__(self) -> None:
        where = "semantic.cluster"
        self._check_common(where)
        _check_int(self.k, where, "k", 1)
        _check_int(self.seed, where, "seed", 0)
        _check_int(self.shown, where, "shown", 1)
        if not isinstance(self.with_label, bool):
            raise PlanError(f"{where}: label must be True or False, got {self.with_label!r}")
        if self.instruction is not None and not isinstance(self.instruction, str):
            raise PlanError(f"{where}: instruction must be a string, got {type(self.instruction).__name__}")
        _check_name(self.name, self.child, where)
        if self.with_label:
            _check_name(self.label_column, self.child, where, "the label column")
        super().__post_init__()

    @property
    def uses_llm(self) -> bool:  # type: ignore[override]
        return self.with_label

    @property
    def label_column(self) -> str:
        return f"{self.name}_label"

    @property
    def added(self) -> tuple[tuple[str, pl.DataType], ...]:
        cols: tuple[tuple[str, pl.DataType], ...] = ((self.name, pl.Int32()),)
        return cols + ((self.label_column, pl.String()),) if self.with_label else cols

    def describe(self) -> str:
        flags = [f"k={self.k}", f"seed={self.seed}",
                 f"label from {self.shown} rows" if self.with_label else "no labels (no LLM)", *self._flags()]
        return f"SEMANTIC CLUSTER -> {self.name} [{', '.join(flags)}]"

    def detail_lines(self) -> list[str]:
        lines = [f"template: {self.template.source!r}"]
        if self.instruction:
            lines.append(f"instruction: {self.instruction!r}")
        return lines


@dataclass(frozen=True)
class SemDedup(_WholeColumnStep):
    """Entity resolution: which rows describe the same thing.

    Parameters
    ----------
    child
        The input.
    template
        The text of each record (a column, or a ``{column}`` template).
    name
        The entity id column (Int64): the position, in this step's input, of the entity's first
        row; null where the row has no text. With ``canonical``, also ``<name>_canonical``.
    question
        The YES/NO question asked about each candidate pair (default
        :data:`DEFAULT_DEDUP_QUESTION`).
    candidates
        Nearest neighbours per row (by embedding) that become candidate pairs.
    threshold
        Only neighbours at least this similar (cosine, in (-1, 1]) become pairs (None: all).
    canonical
        Ask one request per entity of two or more rows for its canonical value.
    embedder, cache, engine
        As for :class:`SemCluster`.
    """

    child: Node
    template: Template
    name: str = "entity"
    question: str | None = None
    candidates: int = 5
    threshold: float | None = None
    canonical: bool = False
    embedder: Any = None
    cache: bool | None = None
    engine: Any = None

    operator: ClassVar[str] = "dedup"

    def __post_init__(self) -> None:
        where = "semantic.dedup"
        self._check_common(where)
        _check_int(self.candidates, where, "candidates", 1)
        if self.threshold is not None and (isinstance(self.threshold, bool)
                                           or not isinstance(self.threshold, (int, float))
                                           or not -1.0 < self.threshold <= 1.0):
            raise PlanError(f"{where}: threshold must be a similarity in (-1, 1] or None, got {self.threshold!r}")
        if self.question is not None and (not isinstance(self.question, str) or not self.question.strip()):
            raise PlanError(f"{where}: question must be a non-empty string, got {self.question!r}")
        if not isinstance(self.canonical, bool):
            raise PlanError(f"{where}: canonical must be True or False, got {self.canonical!r}")
        _check_name(self.name, self.child, where)
        if self.canonical:
            _check_name(self.canonical_column, self.child, where, "the canonical column")
        super().__post_init__()

    @property
    def effective_question(self) -> str:
        return self.question or DEFAULT_DEDUP_QUESTION

    @property
    def canonical_column(self) -> str:
        return f"{self.name}_canonical"

    @property
    def added(self) -> tuple[tuple[str, pl.DataType], ...]:
        cols: tuple[tuple[str, pl.DataType], ...] = ((self.name, pl.Int64()),)
        return cols + ((self.canonical_column, pl.String()),) if self.canonical else cols

    def describe(self) -> str:
        flags = [f"{self.candidates} candidates per row"]
        if self.threshold is not None:
            flags.append(f"similarity >= {self.threshold:g}")
        if self.canonical:
            flags.append("canonical values")
        flags.extend(self._flags())
        return f"SEMANTIC DEDUP -> {self.name} [{', '.join(flags)}]"

    def detail_lines(self) -> list[str]:
        return [f"template: {self.template.source!r}", f"question: {self.effective_question!r}"]
