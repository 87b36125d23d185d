"""Prompt templates: fixed text with ``{column}`` references.

A template is parsed once, when the plan is built, into literal pieces and column references.
Rendering a row only concatenates those pieces with the row's values, so a value is always
inserted literally: text such as ``{title}``, ``{{ }}``, ``{0}`` or Jinja syntax inside a row is
data and is never expanded.

Syntax: ``{name}`` references column ``name`` (any characters but braces; surrounding spaces are
ignored); ``{{`` and ``}}`` are literal braces.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from semframe.errors import PlanError


@dataclass(frozen=True)
class Template:
    """A parsed template: ``parts`` alternates literal text and column names.

    ``parts[0]``, ``parts[2]``, ... are literal text; ``parts[1]``, ``parts[3]``, ... are column
    names. Build one with :meth:`parse`.

    Examples
    --------
    >>> t = Template.parse("Is {title} about a war?")
    >>> t.columns
    ('title',)
    >>> t.render({"title": "The {title} of {{x}}"})
    'Is The {title} of {{x}} about a war?'
    """

    source: str
    parts: tuple[str, ...]

    @classmethod
    def parse(cls, source: str) -> Template:
        if not isinstance(source, str):
            raise PlanError(f"a template must be a string, got {type(source).__name__}")
        parts: list[str] = []
        literal: list[str] = []
        i, n = 0, len(source)
        while i < n:
            ch = source[i]
            if ch == "{":
                if source.startswith("{{", i):
                    literal.append("{")
                    i += 2
                    continue
                close = source.find("}", i + 1)
                opener = source.find("{", i + 1)
                if close == -1 or (opener != -1 and opener < close):
                    raise PlanError(
                        f"unclosed '{{' at position {i} in template {source!r}; "
                        "write '{{' for a literal brace"
                    )
                name = source[i + 1 : close].strip()
                if not name:
                    raise PlanError(f"empty '{{}}' at position {i} in template {source!r}; name a column")
                parts.append("".join(literal))
                parts.append(name)
                literal = []
                i = close + 1
            elif ch == "}":
                if source.startswith("}}", i):
                    literal.append("}")
                    i += 2
                    continue
                raise PlanError(
                    f"single '}}' at position {i} in template {source!r}; write '}}}}' for a literal brace"
                )
            else:
                literal.append(ch)
                i += 1
        parts.append("".join(literal))
        return cls(source, tuple(parts))

    @classmethod
    def for_column(cls, column: str) -> Template:
        """The template that is just the text of ``column``."""
        return cls("{" + column.replace("{", "{{").replace("}", "}}") + "}", ("", column, ""))

    @property
    def columns(self) -> tuple[str, ...]:
        """The referenced column names, in order of first use, without repeats."""
        return tuple(dict.fromkeys(self.parts[1::2]))

    @property
    def is_bare_column(self) -> bool:
        return len(self.parts) == 3 and self.parts[0] == "" and self.parts[2] == ""

    def check_columns(self, available: Sequence[str], where: str) -> None:
        """Raise a PlanError naming any referenced column that is not in ``available``."""
        missing = [c for c in self.columns if c not in available]
        if missing:
            cols = ", ".join(repr(c) for c in available)
            raise PlanError(
                f"{where}: column {missing[0]!r} not found (template {self.source!r}); "
                f"columns are {cols}"
            )

    def check_renderable(self, schema: Mapping[str, Any], where: str) -> None:
        """Raise a PlanError naming a referenced column whose values cannot become prompt text."""
        for c in self.columns:
            check_renderable(c, schema[c], where)

    def render(self, row: Mapping[str, Any]) -> str:
        """Insert the row's values (already text) literally into the template."""
        parts = self.parts
        out = [parts[0]]
        for k in range(1, len(parts), 2):
            out.append(row[parts[k]])
            out.append(parts[k + 1])
        return "".join(out)


def check_renderable(column: str, dtype: Any, where: str) -> None:
    """Refuse, at plan time, a column whose values can never be rendered as text.

    Every polars dtype renders (see ``semframe.execution.render.text_expr``) except Python
    objects (``pl.Object``), anywhere inside the type.
    """
    import polars as pl

    def has_object(dt: Any) -> bool:
        if dt == pl.Object:
            return True
        inner = getattr(dt, "inner", None)
        if inner is not None and has_object(inner):
            return True
        return any(has_object(f.dtype) for f in getattr(dt, "fields", ()) or ())

    if has_object(dtype):
        raise PlanError(
            f"{where}: column {column!r} holds Python objects (dtype {dtype}), which have no text form; "
            f"convert it first, e.g. .with_columns(pl.col({column!r}).map_elements(str, return_dtype=pl.String))"
        )
