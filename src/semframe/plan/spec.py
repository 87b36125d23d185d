"""Output specifications: what shape an answer must have, and how to read it back.

An output spec is part of every engine request. Engines that constrain decoding (vLLM) turn it
into a choice list or a JSON schema so the model can only produce a valid answer; every engine's
answer is then checked here by :meth:`OutputSpec.parse`, so an answer that does not fit becomes a
null with a reason, never an exception that loses the other rows.
"""

from __future__ import annotations

import json
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Union

from semframe.errors import OutputError, PlanError

# Bounds keep constrained JSON short enough to finish inside max_tokens.
MAX_STRING_CHARS = 200
MAX_LIST_ITEMS = 16
MAX_INT_ABS = 10**15

_SCALARS = ("str", "int", "float", "bool")


@dataclass(frozen=True)
class FieldType:
    """The type of one field of an ``extract`` schema.

    ``kind`` is ``"str"``, ``"int"``, ``"float"``, ``"bool"`` or ``"list"``; lists carry the type of
    their items in ``item`` (a scalar kind). Every field may be null in the result (the model can
    find nothing); ``nullable`` says whether the model may *answer* null.
    """

    kind: str
    item: str | None = None
    nullable: bool = False

    def __post_init__(self) -> None:
        if self.kind == "list":
            if self.item not in _SCALARS:
                raise PlanError(f"list items must be one of {_SCALARS}, not {self.item!r}")
        elif self.kind not in _SCALARS:
            raise PlanError(f"unsupported field kind {self.kind!r}")

    def describe(self) -> str:
        base = f"list[{self.item}]" if self.kind == "list" else self.kind
        return f"Optional[{base}]" if self.nullable else base

    def json_schema(self) -> dict[str, Any]:
        schema = _scalar_schema(self.item) if self.kind == "list" else _scalar_schema(self.kind)
        if self.kind == "list":
            schema = {"type": "array", "items": schema, "maxItems": MAX_LIST_ITEMS}
        if self.nullable:
            schema = {"anyOf": [schema, {"type": "null"}]}
        return schema

    def polars_dtype(self):  # -> pl.DataType; polars is imported lazily for speed of import
        import polars as pl

        scalar = {"str": pl.String, "int": pl.Int64, "float": pl.Float64, "bool": pl.Boolean}
        if self.kind == "list":
            return pl.List(scalar[self.item])
        return scalar[self.kind]

    def coerce(self, value: Any, path: str) -> Any:
        """Check one parsed JSON value against this type; raise OutputError if it does not fit."""
        if value is None:
            if self.nullable:
                return None
            raise OutputError(f"field {path!r} is null but is not Optional")
        if self.kind == "list":
            if not isinstance(value, list):
                raise OutputError(f"field {path!r} should be a list, got {type(value).__name__}")
            return [_coerce_scalar(self.item, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return _coerce_scalar(self.kind, value, path)


def _scalar_schema(kind: str) -> dict[str, Any]:
    if kind == "str":
        return {"type": "string", "maxLength": MAX_STRING_CHARS}
    if kind == "int":
        return {"type": "integer", "minimum": -MAX_INT_ABS, "maximum": MAX_INT_ABS}
    if kind == "float":
        return {"type": "number"}
    return {"type": "boolean"}


def _coerce_scalar(kind: str, value: Any, path: str) -> Any:
    if kind == "str":
        if isinstance(value, str):
            return value
    elif kind == "bool":
        if isinstance(value, bool):
            return value
    elif kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif kind == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isfinite(value):
                return float(value)
    raise OutputError(f"field {path!r} should be {kind}, got {value!r}")


def field_type_from_annotation(annotation: Any, where: str) -> FieldType:
    """Map a Python annotation (``str``, ``int``, ``list[str]``, ``Optional[int]`` ...) to a FieldType."""
    nullable = False
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1 or len(typing.get_args(annotation)) != 2:
            raise PlanError(
                f"{where}: unsupported type {annotation!r}; unions are only supported as "
                "Optional[X] (X | None)"
            )
        nullable = True
        annotation = args[0]
        origin = typing.get_origin(annotation)
    names = {str: "str", int: "int", float: "float", bool: "bool"}
    if annotation in names:
        return FieldType(names[annotation], nullable=nullable)
    if origin is list:
        (item,) = typing.get_args(annotation) or (None,)
        if item in names:
            return FieldType("list", item=names[item], nullable=nullable)
    raise PlanError(
        f"{where}: unsupported type {annotation!r}; use str, int, float, bool, list[str|int|float|bool] "
        "or Optional[...] of those"
    )


class OutputSpec:
    """Base of the output specs. Subclasses are frozen dataclasses (they hash by value)."""

    kind: ClassVar[str]

    def parse(self, text: str) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def default_max_tokens(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class ChoiceSpec(OutputSpec):
    """The answer is exactly one of ``labels``."""

    labels: tuple[str, ...]
    kind: ClassVar[str] = "choice"

    def __post_init__(self) -> None:
        if not self.labels:
            raise PlanError("the label set is empty; pass at least two labels, e.g. ['YES', 'NO']")
        if any(not isinstance(label, str) or not label.strip() for label in self.labels):
            raise PlanError(f"labels must be non-empty strings, got {list(self.labels)!r}")
        seen: set[str] = set()
        dupes = [label for label in self.labels if label in seen or seen.add(label)]
        if dupes:
            raise PlanError(f"duplicate labels {dupes!r} in {list(self.labels)!r}; each label once")

    def parse(self, text: str) -> str:
        answer = text.strip()
        if answer in self.labels:
            return answer
        folded = {label.casefold(): label for label in self.labels}
        if answer.casefold() in folded:
            return folded[answer.casefold()]
        raise OutputError(f"answer {text!r} is not one of {list(self.labels)!r}")

    def default_max_tokens(self) -> int:
        # A label can be spelled one character per token under constrained decoding.
        return max(len(label) for label in self.labels) + 2

    def describe(self) -> str:
        return "one of " + ", ".join(self.labels)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "labels": list(self.labels)}


@dataclass(frozen=True)
class JsonSpec(OutputSpec):
    """The answer is a JSON object with the given fields."""

    fields: tuple[tuple[str, FieldType], ...]
    kind: ClassVar[str] = "json"

    def __post_init__(self) -> None:
        if not self.fields:
            raise PlanError("the extract schema has no fields; give at least one, e.g. {'year': int}")
        names = [name for name, _ in self.fields]
        bad = [n for n in names if not isinstance(n, str) or not n.strip()]
        if bad:
            raise PlanError(f"schema field names must be non-empty strings, got {bad!r}")
        if len(set(names)) != len(names):
            raise PlanError(f"duplicate field names in schema: {names!r}")

    @classmethod
    def from_schema(cls, schema: Any, where: str = "extract") -> JsonSpec:
        """Build from a dict of name -> Python type, or from a pydantic model class."""
        if isinstance(schema, dict):
            items = list(schema.items())
        elif isinstance(schema, type) and hasattr(schema, "model_fields"):
            items = [(name, f.annotation) for name, f in schema.model_fields.items()]
        else:
            raise PlanError(
                f"{where}: schema must be a dict of field name -> type or a pydantic model, "
                f"got {type(schema).__name__}"
            )
        if not items:
            raise PlanError(f"{where}: the schema has no fields; give at least one, e.g. {{'year': int}}")
        return cls(tuple((name, field_type_from_annotation(tp, f"{where} field {name!r}"))
                         for name, tp in items))

    def json_schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {name: ft.json_schema() for name, ft in self.fields},
            "required": [name for name, _ in self.fields],
            "additionalProperties": False,
        }

    def polars_dtype(self):
        import polars as pl

        return pl.Struct([pl.Field(name, ft.polars_dtype()) for name, ft in self.fields])

    def parse(self, text: str) -> dict[str, Any]:
        try:
            obj = json.loads(text)
        except (json.JSONDecodeError, TypeError) as exc:
            raise OutputError(f"answer is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})") from None
        if not isinstance(obj, dict):
            raise OutputError(f"answer is JSON {type(obj).__name__}, expected an object")
        missing = [name for name, _ in self.fields if name not in obj]
        if missing:
            raise OutputError(f"answer lacks field(s) {missing!r}")
        return {name: ft.coerce(obj[name], name) for name, ft in self.fields}

    def default_max_tokens(self) -> int:
        # Braces, quotes, names and bounded values; generous because a truncated JSON is a null.
        per_field = {"str": 60, "int": 8, "float": 10, "bool": 3, "list": 80}
        return 8 + sum(len(name) // 3 + 4 + per_field[ft.kind] for name, ft in self.fields)

    def describe(self) -> str:
        return "{" + ", ".join(f"{name}: {ft.describe()}" for name, ft in self.fields) + "}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "schema": self.json_schema()}


@dataclass(frozen=True)
class TextSpec(OutputSpec):
    """Free text."""

    kind: ClassVar[str] = "text"

    def parse(self, text: str) -> str:
        return text.strip()

    def default_max_tokens(self) -> int:
        return 256

    def describe(self) -> str:
        return "text"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind}
