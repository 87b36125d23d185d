"""Semantic plan nodes: one LLM operator each, over the rows of their child.

A semantic node says *what* to ask (template, instruction, output spec, decoding limits) and
what the user chose for it (exact cache off, semantic-cache threshold). *How* it is asked --
the prompt layout, whether repeats are collapsed, which engine -- is decided when the plan is
turned into physical operators (:mod:`semframe.physical.planner`), never here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import polars as pl

from semframe.errors import PlanError
from semframe.plan.nodes import RESERVED_PREFIX, Needed, Node, Schema
from semframe.plan.spec import ChoiceSpec, JsonSpec, OutputSpec, TextSpec
from semframe.plan.template import Template


@dataclass(frozen=True)
class SemanticNode(Node):
    """Base of every semantic operator: row-wise verbs, joins, aggregates, rankings, embeddings.

    Every subclass has an ``engine`` field (an engine object, a registered name, or None: the
    run's engine). ``uses_llm`` is False for operators that only embed (``embed``, ``sim_join``,
    ``search``): a plan made of those starts no LLM engine. ``operator`` names the verb
    (``"join"``, ``"aggregate"`` ...) in explain, lineage and metrics.
    """

    operator: ClassVar[str] = "semantic"
    uses_llm: ClassVar[bool] = True

    @property
    def output_name(self) -> str | None:
        """The column the operator is known by in metrics and lineage (None: it adds none)."""
        return getattr(self, "name", None)


@dataclass(frozen=True)
class SemanticStep(SemanticNode):
    """One LLM operator over the rows of its child.

    Parameters
    ----------
    child
        The input.
    template
        The per-row text (``{column}`` references).
    instruction
        The fixed text shared by every row.
    spec
        What the answer must look like.
    name
        The output column (None for ``filter``).
    max_tokens
        The most tokens the engine may produce per row (default: from the spec).
    temperature
        Sampling temperature; 0 is greedy.
    cache
        ``False`` keeps this step out of the persistent exact cache.
    semantic_cache
        A similarity threshold: reuse answers of near-duplicate texts (None: off).
    engine
        The engine that answers this step: an engine object or a name (see
        ``semframe.engines.registry``); None: the run's engine.
    """

    child: Node
    template: Template
    instruction: str | None
    spec: OutputSpec
    name: str | None
    max_tokens: int | None = None
    temperature: float = 0.0
    cache: bool | None = None
    semantic_cache: float | None = None
    engine: Any = None

    rows: ClassVar[str] = "aligned"

    def __post_init__(self) -> None:
        where = f"semantic.{self.operator}"
        self.template.check_columns(self.child.columns, where)
        self.template.check_renderable(dict(self.child.schema), where)
        if self.instruction is not None and not isinstance(self.instruction, str):
            raise PlanError(f"{where}: instruction must be a string, got {type(self.instruction).__name__}")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or isinstance(self.max_tokens, bool)
                                            or self.max_tokens < 1):
            raise PlanError(f"{where}: max_tokens must be a positive integer, got {self.max_tokens!r}")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)):
            raise PlanError(f"{where}: temperature must be a number between 0 and 2, got {self.temperature!r}")
        if not 0.0 <= self.temperature <= 2.0:
            raise PlanError(f"{where}: temperature must be between 0 and 2, got {self.temperature}")
        if self.semantic_cache is not None and not 0.0 < self.semantic_cache <= 1.0:
            raise PlanError(f"{where}: semantic_cache threshold must be in (0, 1], got {self.semantic_cache}")
        if self.name is not None or self.operator != "filter":
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

    # ------------------------------------------------------------------ properties

    @property
    def elementwise(self) -> bool:
        return True  # each row's answer depends on that row only

    @property
    def unchanged(self) -> frozenset[str]:
        return frozenset(self.child.columns)

    @property
    def produces(self) -> frozenset[str]:
        return frozenset() if self.name is None else frozenset((self.name,))

    @property
    def removable_if_unread(self) -> bool:
        return self.rows == "aligned"

    def columns_needed(self, needed: Needed) -> tuple[Needed, ...]:
        if needed is None:
            return (None,)
        return ((needed - self.produces) | set(self.template.columns),)

    # ------------------------------------------------------------------ display

    def describe(self) -> str:
        out = f" -> {self.name}" if self.name else ""
        flags = [f"max_tokens={self.effective_max_tokens}"]
        if self.temperature:
            flags.append(f"temperature={self.temperature:g}")
        if self.cache is False:
            flags.append("exact cache off")
        if self.semantic_cache is not None:
            flags.append(f"semantic cache >= {self.semantic_cache:g}")
        if self.engine is not None:
            flags.append(f"engine {engine_label(self.engine)}")
        return f"SEMANTIC {self.operator.upper()}{out} [{self.spec.describe()}; {', '.join(flags)}]"

    def detail_lines(self) -> list[str]:
        lines = [f"template: {self.template.source!r}"]
        if self.instruction:
            lines.append(f"instruction: {self.instruction!r}")
        return lines


def option_flags(node: Any) -> list[str]:
    """What explain shows of the options every semantic node may have: a non-zero temperature,
    the exact cache turned off, the step's own engine (in that order)."""
    flags = []
    if getattr(node, "temperature", 0):
        flags.append(f"temperature={node.temperature:g}")
    if getattr(node, "cache", None) is False:
        flags.append("exact cache off")
    if getattr(node, "engine", None) is not None:
        flags.append(f"engine {engine_label(node.engine)}")
    return flags


def engine_label(engine: Any) -> str:
    """How plans show a step's engine: its name, or the engine's own name and model."""
    if isinstance(engine, str):
        return repr(engine)
    return f"{getattr(engine, 'name', type(engine).__name__)}:{getattr(engine, 'model', '?')}"


@dataclass(frozen=True)
class SemClassify(SemanticStep):
    """One label per row (a String column).

    ``probabilities=True`` adds the column ``<name>_probabilities``: a struct with one Float64
    field per label (in label order), the engine's probability of each label for that row; null
    where the engine gave none (see ``Completion.probabilities``).
    """

    probabilities: bool = False

    operator: ClassVar[str] = "classify"

    def __post_init__(self) -> None:
        if not isinstance(self.spec, ChoiceSpec):
            raise PlanError("semantic.classify needs a ChoiceSpec")
        if not isinstance(self.probabilities, bool):
            raise PlanError(f"semantic.classify: probabilities must be True or False, got {self.probabilities!r}")
        column = self.probabilities_column
        if column is not None and column in self.child.columns:
            raise PlanError(
                f"semantic.classify: the probabilities column {column!r} already exists; pass name='...' "
                f"with another name (columns are {', '.join(map(repr, self.child.columns))})"
            )
        super().__post_init__()

    @property
    def output_dtype(self) -> pl.DataType:
        return pl.String()

    @property
    def probabilities_column(self) -> str | None:
        """``<name>_probabilities`` when the step asks for probabilities, else None."""
        return f"{self.name}_probabilities" if self.probabilities and isinstance(self.name, str) else None

    @property
    def probabilities_dtype(self) -> pl.DataType:
        return pl.Struct([pl.Field(label, pl.Float64) for label in self.spec.labels])  # type: ignore[attr-defined]

    def _compute_schema(self) -> Schema:
        schema = super()._compute_schema()
        column = self.probabilities_column
        return schema if column is None else schema + ((column, self.probabilities_dtype),)

    @property
    def produces(self) -> frozenset[str]:
        column = self.probabilities_column
        return super().produces if column is None else super().produces | {column}

    def describe(self) -> str:
        text = super().describe()
        return text[:-1] + ", probabilities]" if self.probabilities else text


@dataclass(frozen=True)
class SemFilter(SemanticStep):
    """Keep the rows the model answers YES for. Adds no column."""

    operator: ClassVar[str] = "filter"
    rows: ClassVar[str] = "subset"

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
