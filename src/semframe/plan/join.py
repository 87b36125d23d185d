"""The semantic join: pairs of rows, one from each input, for which the model answers YES.

A join's template names columns by side, ``"Is {left.ticket} about {right.product}?"``; a plain
``{x}`` is allowed where ``x`` is a column of exactly one side. :func:`join_template` resolves
the names once, when the verb is called, into a template whose every reference is qualified
(``left.ticket``, ``right.product``), so later pruning of columns cannot change what a name
means.

The node says *what* is asked; *how* -- nested loop over all pairs, embedding blocking, or join
as classification -- is chosen by the physical operator (:mod:`semframe.physical.join`) from
estimated calls x tokens, unless ``algorithm=`` forces one.

Output columns: the left input's, then the right input's; a right column whose name is already
a left column gets the suffix ``_right`` (as polars' ``join`` does).
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
from typing import Any, ClassVar

from semframe.errors import PlanError
from semframe.plan.nodes import RESERVED_PREFIX, Needed, Node, Scan, Schema
from semframe.plan.semantic import SemanticNode, option_flags
from semframe.plan.spec import ChoiceSpec
from semframe.plan.template import Template, check_renderable

#: Join kinds.
JOIN_HOWS = ("inner", "left")
#: Join algorithms (``"auto"``: the cheapest by estimated calls x tokens).
JOIN_ALGORITHMS = ("auto", "nested_loop", "blocking", "classify")
#: The suffix of a right column whose name is a left column too.
RIGHT_SUFFIX = "_right"
#: Every pair is asked YES or NO.
PAIR_SPEC = ChoiceSpec(("YES", "NO"))

_SIDES = ("left", "right")


def join_template(source: Any, left: tuple[str, ...], right: tuple[str, ...], where: str = "semantic.join") -> Template:
    """The join's template with every column reference qualified by its side.

    ``{left.x}`` / ``{right.y}`` name a side's column; a plain ``{x}`` is the column of the one
    side that has it (an error where both or neither do).

    Examples
    --------
    >>> join_template("Is {ticket} about {right.product}?", ("ticket",), ("product",)).source
    'Is {left.ticket} about {right.product}?'
    """
    if not isinstance(source, str):
        raise PlanError(f"{where}: the template must be a string such as 'Is {{left.ticket}} about "
                        f"{{right.product}}?', got {type(source).__name__}")
    template = Template.parse(source)
    parts = list(template.parts)
    for k in range(1, len(parts), 2):
        parts[k] = _qualify(parts[k], left, right, source, where)
    qualified = template_from_parts(parts)
    sides = {name.split(".", 1)[0] for name in qualified.columns}
    if sides != set(_SIDES):
        missing = "left" if "left" not in sides else "right"
        cols = ", ".join(repr(c) for c in (left if missing == "left" else right))
        raise PlanError(f"{where}: the template {source!r} names no column of the {missing} side; "
                        f"name one as {{{missing}.column}} (its columns are {cols})")
    return qualified


def _qualify(name: str, left: tuple[str, ...], right: tuple[str, ...], source: str, where: str) -> str:
    side, dot, rest = name.partition(".")
    if dot and side in _SIDES:
        columns = left if side == "left" else right
        if rest in columns:
            return name
        if name not in left and name not in right:
            cols = ", ".join(repr(c) for c in columns)
            raise PlanError(f"{where}: column {rest!r} not found on the {side} side (template {source!r}); "
                            f"its columns are {cols}")
    in_left, in_right = name in left, name in right
    if in_left and in_right:
        raise PlanError(f"{where}: column {name!r} is on both sides (template {source!r}); "
                        f"write {{left.{name}}} or {{right.{name}}}")
    if in_left:
        return f"left.{name}"
    if in_right:
        return f"right.{name}"
    raise PlanError(f"{where}: column {name!r} not found on either side (template {source!r}); "
                    f"left columns are {', '.join(map(repr, left))}; right columns are {', '.join(map(repr, right))}")


def template_from_parts(parts: list[str] | tuple[str, ...]) -> Template:
    """The template whose parts (literal, name, literal, ...) are ``parts``, with its source text."""
    out = []
    for k, part in enumerate(parts):
        out.append(part.replace("{", "{{").replace("}", "}}") if k % 2 == 0 else "{" + part + "}")
    return Template("".join(out), tuple(parts))


def side_columns(template: Template, side: str) -> tuple[str, ...]:
    """The columns of one side (``"left"`` or ``"right"``) a qualified template names, in order."""
    prefix = side + "."
    return tuple(c[len(prefix):] for c in template.columns if c.startswith(prefix))


def _positive_int(value: Any, name: str, where: str, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive" if minimum == 1 else "a non-negative"
        raise PlanError(f"{where}: {name} must be {kind} integer, got {value!r}")


#: Join as classification lists at most this many right items (an answer's list holds at most
#: ``semframe.plan.spec.MAX_LIST_ITEMS`` numbers, so every match of a left row fits).
CLASSIFY_MAX_ITEMS = 16


def classify_too_large(rows: int) -> str:
    return (f"semantic.join: algorithm='classify' is not possible: it lists the right side's rows in the "
            f"prompt, at most {CLASSIFY_MAX_ITEMS}, and the right side has {rows}; use algorithm='blocking' or "
            "'nested_loop' (or 'auto')")


def in_memory_rows(node: Node) -> int | None:
    """The rows of ``node`` when it is a scan of data already in memory (free to count), else None."""
    if isinstance(node, Scan) and node.source.in_memory:
        return node.source.frame.select(pl.len()).collect().item()
    return None


@dataclass(frozen=True)
class SemJoin(SemanticNode):
    """Pairs of a left and a right row for which the model answers YES to ``template``.

    Parameters
    ----------
    left, right
        The two inputs.
    template
        A qualified template (see :func:`join_template`): every reference is ``left.<column>``
        or ``right.<column>``.
    how
        ``"inner"`` (only matched pairs) or ``"left"`` (also each left row with no match, its
        right columns null).
    algorithm
        ``"auto"`` (the cheapest by estimated calls x tokens), ``"nested_loop"``, ``"blocking"``
        or ``"classify"``.
    candidates
        Right rows per left row that blocking asks about (the top-m by embedding similarity).
    audit
        Pairs outside the blocks that blocking also asks about, to estimate its recall (0: none).
    instruction, max_tokens, temperature, cache, engine
        As for the row-wise verbs.
    approx
        ``sf.Target(recall=r, confidence=c)``: a certified recall instead of blocking's estimate.
        The blocks (each left row's most similar right rows) are widened -- ``candidates``,
        then twice, four times as many ... -- until an exact bound from a random sample of the
        pairs outside the blocks (``Target.sample`` pairs; ``audit`` is then unused) certifies
        that the pairs found hold at least ``r`` of all matching pairs, with probability ``c``
        (see ``docs/approximation.md``). Pairs outside the final blocks are declared non-matches
        without asking.
    """

    left: Node
    right: Node
    template: Template
    how: str = "inner"
    algorithm: str = "auto"
    candidates: int = 10
    audit: int = 100
    instruction: str | None = None
    max_tokens: int | None = None
    temperature: float = 0.0
    cache: bool | None = None
    engine: Any = None
    approx: Any = None

    operator: ClassVar[str] = "join"
    rows: ClassVar[str] = "other"

    def __post_init__(self) -> None:
        where = "semantic.join"
        if self.how not in JOIN_HOWS:
            raise PlanError(f"{where}: how must be one of {', '.join(map(repr, JOIN_HOWS))}, got {self.how!r}")
        if self.algorithm not in JOIN_ALGORITHMS:
            raise PlanError(f"{where}: algorithm must be one of {', '.join(map(repr, JOIN_ALGORITHMS))}, "
                            f"got {self.algorithm!r}")
        _positive_int(self.candidates, "candidates", where)
        _positive_int(self.audit, "audit", where, minimum=0)
        if not isinstance(self.template, Template):
            raise PlanError(f"{where}: template must be a Template (build it with join_template)")
        for name in self.template.columns:
            side, dot, column = name.partition(".")
            if not dot or side not in _SIDES:
                raise PlanError(f"{where}: template reference {name!r} names no side; "
                                "use join_template() to qualify it")
            child = self.left if side == "left" else self.right
            if column not in child.columns:
                cols = ", ".join(repr(c) for c in child.columns)
                raise PlanError(f"{where}: column {column!r} not found on the {side} side "
                                f"(template {self.template.source!r}); its columns are {cols}")
            check_renderable(column, dict(child.schema)[column], where)
        if not side_columns(self.template, "left") or not side_columns(self.template, "right"):
            raise PlanError(f"{where}: the template must name a column of each side, e.g. "
                            "'Is {left.ticket} about {right.product}?'")
        if self.instruction is not None and not isinstance(self.instruction, str):
            raise PlanError(f"{where}: instruction must be a string, got {type(self.instruction).__name__}")
        if self.max_tokens is not None:
            _positive_int(self.max_tokens, "max_tokens", where)
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or not 0.0 <= self.temperature <= 2.0:
            raise PlanError(f"{where}: temperature must be a number between 0 and 2, got {self.temperature!r}")
        if self.approx is not None:
            self._check_approx(where)
        if self.algorithm == "classify":
            known = in_memory_rows(self.right)
            if known is not None and known > CLASSIFY_MAX_ITEMS:
                raise PlanError(classify_too_large(known))
        super().__post_init__()

    def _check_approx(self, where: str) -> None:
        from semframe.plan.approx import Target

        if not isinstance(self.approx, Target):
            raise PlanError(f"{where}: approx must be sf.Target(recall=..., confidence=...), "
                            f"got {type(self.approx).__name__}")
        if self.approx.kind != "recall":
            raise PlanError(f"{where}: a join takes a recall target only, sf.Target(recall=..., confidence=...) "
                            f"(every pair it keeps is asked, so its precision is the model's), got {self.approx.kind}")
        if self.algorithm not in ("auto", "blocking"):
            raise PlanError(f"{where}: a recall target runs embedding blocking; algorithm={self.algorithm!r} "
                            "contradicts it (leave algorithm='auto' or pass 'blocking')")
        if self.temperature:
            raise PlanError(f"{where}: approx= needs temperature=0 (the model's answers must be reproducible)")

    # ------------------------------------------------------------------ schema

    def right_names(self) -> dict[str, str]:
        """Right column -> its name in the output (``<name>_right`` where a left column has it)."""
        left = set(self.left.columns)
        return {c: (c + RIGHT_SUFFIX if c in left else c) for c in self.right.columns}

    def _compute_schema(self) -> Schema:
        names = self.right_names()
        left = set(self.left.columns)
        for c, out in names.items():
            if out != c and out in left:
                raise PlanError(f"semantic.join: the right column {c!r} would be named {out!r}, which is a left "
                                f"column too; rename one of them first (e.g. .rename({{{out!r}: ...}}))")
            if out.startswith(RESERVED_PREFIX):  # pragma: no cover - inputs never have such names
                raise PlanError(f"semantic.join: column {out!r} uses the reserved prefix {RESERVED_PREFIX!r}")
        renamed = {out: c for c, out in names.items() if out != c}
        for c, out in names.items():
            if out == c and c in renamed:  # the right side has both 'x' and 'x_right', and the left 'x'
                raise PlanError(f"semantic.join: the right column {renamed[c]!r} would be named {c!r}, which is "
                                f"another right column; rename one of them first (e.g. .rename({{{c!r}: ...}}))")
        return self.left.schema + tuple((names[c], dt) for c, dt in self.right.schema)

    @property
    def effective_max_tokens(self) -> int:
        return self.max_tokens if self.max_tokens is not None else PAIR_SPEC.default_max_tokens()

    # ------------------------------------------------------------------ properties read by rules

    @property
    def unchanged(self) -> frozenset[str]:
        """Left columns always; right columns kept under their name only in an inner join (a left
        join writes nulls into them for unmatched rows)."""
        out = set(self.left.columns)
        if self.how == "inner":
            out |= {c for c, o in self.right_names().items() if c == o}
        return frozenset(out)

    def input_for(self, columns: frozenset[str]) -> int | None:
        """The input (0: left, 1: right) an elementwise filter reading only ``columns`` may move
        to with the same result, or None. An inner join lets a filter move to either side; a
        left join only to the left (a right-side filter above it also drops unmatched rows)."""
        if columns <= set(self.left.columns):
            return 0
        if self.how == "inner" and columns <= {c for c, o in self.right_names().items() if c == o}:
            return 1
        return None

    def columns_needed(self, needed: Needed) -> tuple[Needed, ...]:
        if needed is None:
            return (None, None)
        left_cols, names = set(self.left.columns), self.right_names()
        left = {c for c in needed if c in left_cols} | set(side_columns(self.template, "left"))
        right = {c for c, o in names.items() if o in needed} | set(side_columns(self.template, "right"))
        # A suffixed right column keeps its name only while the left column it clashes with is there.
        left |= {c for c in right if names[c] != c}
        return (frozenset(left), frozenset(right))

    # ------------------------------------------------------------------ display

    def describe(self) -> str:
        flags = [f"how={self.how}", f"algorithm={self.algorithm}"]
        if self.approx is not None:
            flags.append(f"candidates={self.candidates}, approx recall >= {self.approx.recall:g} "
                         f"@ confidence {self.approx.confidence:g}")
        elif self.algorithm in ("auto", "blocking"):
            flags.append(f"candidates={self.candidates}, audit={self.audit}")
        flags += option_flags(self)
        return f"SEMANTIC JOIN [{', '.join(flags)}]"

    def detail_lines(self) -> list[str]:
        lines = [f"template: {self.template.source!r}"]
        if self.instruction:
            lines.append(f"instruction: {self.instruction!r}")
        if self.approx is not None:
            lines.append(f"approx target: {self.approx.describe()}, over the matching pairs; blocks widened "
                         "(candidates x 1, 2, 4 ...) until an exact bound from sampled pairs outside them certifies it")
        return lines
