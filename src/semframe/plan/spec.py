"""Output specifications: what shape an answer must have, and how to read it back.

An output spec is part of every engine request. Engines that constrain decoding (vLLM) turn it
into a choice list or a JSON schema so the model can only produce a valid answer; every engine's
answer is then checked here by :meth:`OutputSpec.parse`, so an answer that does not fit becomes a
null with a reason, never an exception that loses the other rows.

Two checks, one rule: :meth:`OutputSpec.parse` reads an engine's raw text; :meth:`OutputSpec.validate`
checks a value that was parsed before (an answer read back from a cache). Both raise
:class:`~semframe.errors.OutputError` for anything that does not fit the spec, and a value either
of them returns always builds the spec's polars dtype (``pl.Series([value], dtype=spec.polars_dtype(),
strict=True)``).

Extraction schemas
------------------
``JsonSpec.from_schema`` takes a dict of field name -> type, or a pydantic model. A type is:

- ``str``, ``int``, ``float``, ``bool`` (polars String, Int64, Float64, Boolean);
- ``Literal["a", "b"]`` or an ``Enum`` class with string (or integer) values: constrained to those
  values in the JSON schema (``"enum"``); the result holds the value itself (an Enum's ``.value``),
  as a polars **String** (Int64 for integer values) -- the same dtype ``classify`` gives its labels,
  so results of different label sets concatenate and compare as plain strings;
- ``list[X]`` (or ``[X]``) of any type here, including structs: ``list[Model]``,
  ``list[{"name": str}]`` or ``[{"name": str}]`` (polars ``List(...)``);
- a nested dict ``{"name": str, ...}``, a pydantic model, or a ``TypedDict``: a nested struct
  (polars ``Struct``); to make a nested struct Optional, use ``Optional[Model]`` or
  ``Optional[SomeTypedDict]`` (Python cannot write ``Optional[{...}]``);
- ``Optional[X]`` (``X | None``) of any of these, at any depth: the model may answer null, and a
  missing Optional key reads as null;
- ``Annotated[X, ...]`` with a description (a plain string or ``Field(description=...)``) and the
  bounds ``Ge``/``Gt``/``Le``/``Lt`` (numbers) and ``MinLen``/``MaxLen`` (strings, lists), also
  written ``Field(ge=..., max_length=...)``. The bounds go into the JSON schema and are checked.

Pydantic models: a field's ``description`` reaches both the JSON schema and the prompt; a field's
alias is the key the model is asked for **and** the field's name in the result struct (so a
result row validates with ``Model.model_validate(row)``); the model's validators run on every
answer (an answer that fails them is a null with the validation message) and what they return is
the value kept (a validator that normalises, e.g. ``.strip()``, normalises the result). Validators
must accept their own output: a value read back from a cache is validated again. A model's other
constraints (``pattern``, ``multiple_of`` ...) are not in the JSON schema; its validation enforces
them. In a dict schema, an annotation semframe cannot check is a PlanError. The spec names every
model it holds (qualified name and schema digest) in its request key, so answers are never shared
between models whose validators differ by name.

What an answer must be, exactly: a JSON object with every key of the schema (a missing Optional
key reads as null) and no other, no key twice; an ``int`` is a JSON integer (``3.0`` is not),
``bool`` is ``true``/``false`` (not ``1``), a ``float`` takes an integer (as a float) but not NaN or
infinity, and strings are valid Unicode (no lone surrogate).

Bounds keep constrained JSON short: strings at most :data:`MAX_STRING_CHARS` characters, lists at
most :data:`MAX_LIST_ITEMS` items, integers within ±:data:`MAX_INT_ABS` (so they always fit Int64),
floats finite; a tighter bound of the schema's own wins.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
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
#: How deep structs and lists may nest (a field of the top-level object is depth 1).
MAX_DEPTH = 6

_SCALARS = ("str", "int", "float", "bool")
_KINDS = (*_SCALARS, "enum", "list", "struct")
_SCALAR_TYPES = {str: "str", int: "int", float: "float", bool: "bool"}


def _short(value: Any, limit: int = 60) -> str:
    """A value's repr, cut to ``limit`` characters (answers can be long)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _field_path(path: str) -> str:
    return f"field {path!r}"


@dataclass(frozen=True)
class FieldType:
    """The type of one field of an ``extract`` schema (frozen and hashable, like the specs).

    ``kind`` is one of:

    - ``"str"``, ``"int"``, ``"float"``, ``"bool"``: scalars; ``minimum``/``maximum`` (and the
      ``exclusive_`` ones, floats only) bound numbers, ``min_length``/``max_length`` strings;
    - ``"enum"``: one of ``values`` (all strings or all integers);
    - ``"list"``: items of type ``item`` (a FieldType; a scalar kind name is accepted and
      converted), at most ``max_length`` of them;
    - ``"struct"``: a JSON object with exactly the keys of ``fields`` (name -> FieldType).

    Every field may be null in the result (the model can find nothing); ``nullable`` says whether
    the model may *answer* null. ``description`` goes into the JSON schema and the prompt.

    A struct built from a pydantic model keeps the model (``model``, excluded from equality and
    hashing) and identifies it by ``model_key`` (its qualified name and a digest of its JSON
    schema), with ``attrs`` the model's attribute names for ``fields`` (they differ from the keys
    where a field has an alias).
    """

    kind: str
    item: FieldType | None = None
    nullable: bool = False
    fields: tuple[tuple[str, FieldType], ...] = ()
    values: tuple[Any, ...] = ()
    description: str | None = None
    minimum: int | float | None = None
    maximum: int | float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    model_key: str | None = None
    attrs: tuple[str, ...] | None = None
    model: Any = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.item, str):
            object.__setattr__(self, "item", FieldType(self.item))
        if isinstance(self.fields, dict):
            object.__setattr__(self, "fields", tuple(self.fields.items()))
        if not isinstance(self.values, tuple):
            object.__setattr__(self, "values", tuple(self.values))
        kind = self.kind
        if kind not in _KINDS:
            raise PlanError(f"unsupported field kind {kind!r}; one of {_KINDS}")
        if kind == "list":
            if not isinstance(self.item, FieldType):
                raise PlanError(f"list items must be a FieldType or one of {_SCALARS}, not {self.item!r}")
        elif self.item is not None:
            raise PlanError(f"only a list has an item type, not a {kind}")
        if kind == "struct":
            _check_keys([name for name, _ in self.fields], "struct")
            if any(not isinstance(ft, FieldType) for _, ft in self.fields):
                raise PlanError("struct fields must be (name, FieldType) pairs")
            if self.attrs is not None and len(self.attrs) != len(self.fields):
                raise PlanError("a struct's attrs must name each of its fields")
        elif self.fields:
            raise PlanError(f"only a struct has fields, not a {kind}")
        if kind == "enum":
            _check_enum_values(self.values, "enum")
        elif self.values:
            raise PlanError(f"only an enum has values, not a {kind}")
        if kind not in ("int", "float") and (self.minimum is not None or self.maximum is not None
                                             or self.exclusive_minimum is not None
                                             or self.exclusive_maximum is not None):
            raise PlanError(f"numeric bounds apply to int and float fields, not to a {kind}")
        if kind == "int" and (self.exclusive_minimum is not None or self.exclusive_maximum is not None):
            raise PlanError("an int field's bounds are inclusive (use minimum/maximum)")
        if kind not in ("str", "list") and (self.min_length is not None or self.max_length is not None):
            raise PlanError(f"length bounds apply to str and list fields, not to a {kind}")
        if kind == "int":
            lo, hi = self.int_bounds
            if lo > hi:
                raise PlanError(f"int bounds [{lo}, {hi}] leave no value")
        if kind == "float":
            for bound in (self.minimum, self.maximum, self.exclusive_minimum, self.exclusive_maximum):
                if bound is not None and (isinstance(bound, bool) or not math.isfinite(bound)):
                    raise PlanError(f"float bounds must be finite numbers, got {bound!r}")
        if kind in ("str", "list"):
            lo, hi = self.length_bounds
            if lo > hi:
                raise PlanError(f"length bounds [{lo}, {hi}] leave no value")

    def __getstate__(self) -> dict[str, Any]:
        # what is cached on the instance (compiled checkers) is rebuilt, not pickled
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    # ------------------------------------------------------------------ derived facts

    @property
    def int_bounds(self) -> tuple[int, int]:
        """The inclusive range of an int field: its own bounds within ±MAX_INT_ABS."""
        lo = -MAX_INT_ABS if self.minimum is None else max(-MAX_INT_ABS, math.ceil(self.minimum))
        hi = MAX_INT_ABS if self.maximum is None else min(MAX_INT_ABS, math.floor(self.maximum))
        return lo, hi

    @property
    def length_bounds(self) -> tuple[int, int]:
        """The inclusive length range of a str (characters) or list (items) field."""
        cap = MAX_STRING_CHARS if self.kind == "str" else MAX_LIST_ITEMS
        hi = cap if self.max_length is None else min(cap, self.max_length)
        return (self.min_length or 0), hi

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.fields)

    def has_model(self) -> bool:
        """Whether a pydantic model's validation applies anywhere in this type (computed once)."""
        known = self.__dict__.get("_has_model")
        if known is None:
            if self.model is not None:
                known = True
            elif self.kind == "list":
                known = self.item.has_model()  # type: ignore[union-attr]
            else:
                known = any(ft.has_model() for _, ft in self.fields)
            self.__dict__["_has_model"] = known
        return known

    def walk(self):
        """This type and every type inside it."""
        yield self
        if self.item is not None:
            yield from self.item.walk()
        for _, ft in self.fields:
            yield from ft.walk()

    # ------------------------------------------------------------------ views

    def describe(self) -> str:
        if self.kind == "list":
            base = f"list[{self.item.describe()}]"  # type: ignore[union-attr]
        elif self.kind == "struct":
            base = "{" + ", ".join(f"{name}: {ft.describe()}" for name, ft in self.fields) + "}"
        elif self.kind == "enum":
            base = "Literal[" + ", ".join(repr(v) for v in self.values) + "]"
        else:
            base = self.kind
        return f"Optional[{base}]" if self.nullable else base

    def json_schema(self) -> dict[str, Any]:
        kind = self.kind
        if kind == "str":
            lo, hi = self.length_bounds
            schema: dict[str, Any] = {"type": "string", "maxLength": hi}
            if lo:
                schema["minLength"] = lo
        elif kind == "int":
            lo, hi = self.int_bounds
            schema = {"type": "integer", "minimum": lo, "maximum": hi}
        elif kind == "float":
            schema = {"type": "number"}
            for key, bound in (("minimum", self.minimum), ("maximum", self.maximum),
                               ("exclusiveMinimum", self.exclusive_minimum),
                               ("exclusiveMaximum", self.exclusive_maximum)):
                if bound is not None:
                    schema[key] = bound
        elif kind == "bool":
            schema = {"type": "boolean"}
        elif kind == "enum":
            schema = {"type": "string" if isinstance(self.values[0], str) else "integer",
                      "enum": list(self.values)}
        elif kind == "list":
            lo, hi = self.length_bounds
            schema = {"type": "array", "items": self.item.json_schema(), "maxItems": hi}  # type: ignore[union-attr]
            if lo:
                schema["minItems"] = lo
        else:
            schema = _object_schema(self.fields)
        if self.nullable:
            schema = {"anyOf": [schema, {"type": "null"}]}
        if self.description:
            schema["description"] = self.description
        return schema

    def polars_dtype(self):  # -> pl.DataType; polars is imported lazily for speed of import
        import polars as pl

        kind = self.kind
        if kind == "list":
            return pl.List(self.item.polars_dtype())  # type: ignore[union-attr]
        if kind == "struct":
            return pl.Struct([pl.Field(name, ft.polars_dtype()) for name, ft in self.fields])
        if kind == "enum":
            return pl.String if isinstance(self.values[0], str) else pl.Int64
        return {"str": pl.String, "int": pl.Int64, "float": pl.Float64, "bool": pl.Boolean}[kind]

    # ------------------------------------------------------------------ checking

    def coerce(self, value: Any, path: str) -> Any:
        """Check one parsed JSON value against this type; raise OutputError if it does not fit.

        Returns the value to keep (the same value, except that a float field's integer becomes
        a float). Model validation is not run here (see :meth:`JsonSpec.parse`).
        """
        if value is None:
            if self.nullable:
                return None
            raise OutputError(f"{_field_path(path)} is null but is not Optional")
        kind = self.kind
        if kind == "str":
            if type(value) is not str:
                raise OutputError(f"{_field_path(path)} should be str, got {_short(value)}")
            lo, hi = self.length_bounds
            n = len(value)
            if n > hi:
                raise OutputError(f"{_field_path(path)} is {n} characters long, over the limit of {hi}")
            if n < lo:
                raise OutputError(f"{_field_path(path)} is {n} characters long, under the minimum of {lo}")
            _check_text(value, _field_path(path))
            return value
        if kind == "int":
            if type(value) is not int:
                raise OutputError(f"{_field_path(path)} should be int, got {_short(value)}")
            lo, hi = self.int_bounds
            if not lo <= value <= hi:
                raise OutputError(f"{_field_path(path)} is {_short(value)}, outside the range [{lo}, {hi}]")
            return value
        if kind == "float":
            if type(value) is int:
                try:
                    value = float(value)
                except OverflowError:
                    raise OutputError(f"{_field_path(path)} is {_short(value)}, too large for a float") from None
            elif type(value) is not float:
                raise OutputError(f"{_field_path(path)} should be float, got {_short(value)}")
            if not math.isfinite(value):
                raise OutputError(f"{_field_path(path)} is {value!r}, not a finite number")
            self._check_float_bounds(value, path)
            return value
        if kind == "bool":
            if type(value) is not bool:
                raise OutputError(f"{_field_path(path)} should be bool, got {_short(value)}")
            return value
        if kind == "enum":
            wanted = str if isinstance(self.values[0], str) else int
            if type(value) is not wanted or value not in self.values:
                raise OutputError(f"{_field_path(path)} is {_short(value)}, not one of {list(self.values)!r}")
            return value
        if kind == "list":
            if type(value) is not list:
                raise OutputError(f"{_field_path(path)} should be a list, got {type(value).__name__}")
            lo, hi = self.length_bounds
            n = len(value)
            if n > hi:
                raise OutputError(f"{_field_path(path)} has {n} items, over the limit of {hi}")
            if n < lo:
                raise OutputError(f"{_field_path(path)} has {n} items, under the minimum of {lo}")
            item = self.item
            return [item.coerce(v, f"{path}[{i}]") for i, v in enumerate(value)]  # type: ignore[union-attr]
        if type(value) is not dict:
            raise OutputError(f"{_field_path(path)} should be an object, got {type(value).__name__}")
        return _check_object(self.fields, value, path)

    def _check_float_bounds(self, value: float, path: str) -> None:
        if self.minimum is not None and value < self.minimum:
            raise OutputError(f"{_field_path(path)} is {value!r}, under the minimum {self.minimum}")
        if self.maximum is not None and value > self.maximum:
            raise OutputError(f"{_field_path(path)} is {value!r}, over the maximum {self.maximum}")
        if self.exclusive_minimum is not None and value <= self.exclusive_minimum:
            raise OutputError(f"{_field_path(path)} is {value!r}, not over {self.exclusive_minimum}")
        if self.exclusive_maximum is not None and value >= self.exclusive_maximum:
            raise OutputError(f"{_field_path(path)} is {value!r}, not under {self.exclusive_maximum}")


class _Misfit(Exception):
    """Raised by a compiled checker; the slow path (:meth:`FieldType.coerce`) then says why."""


def _checker(ft: FieldType):
    """A compiled ``value -> value`` check of ``ft`` (cached on it): the same verdicts as
    :meth:`FieldType.coerce`, without building paths or messages, raising :class:`_Misfit`."""
    check = ft.__dict__.get("_checker")
    if check is None:
        check = _compile(ft)
        ft.__dict__["_checker"] = check
    return check


def _compile(ft: FieldType):  # noqa: C901 - one small closure per kind
    kind, nullable = ft.kind, ft.nullable
    if kind == "str":
        lo, hi = ft.length_bounds

        def check(v):
            if type(v) is str and lo <= len(v) <= hi and (v.isascii() or _utf8(v)):
                return v
            if v is None and nullable:
                return None
            raise _Misfit
    elif kind == "int":
        lo, hi = ft.int_bounds

        def check(v):
            if type(v) is int and lo <= v <= hi:
                return v
            if v is None and nullable:
                return None
            raise _Misfit
    elif kind == "float":
        bounded = (ft.minimum, ft.maximum, ft.exclusive_minimum, ft.exclusive_maximum) != (None,) * 4

        def check(v):
            t = type(v)
            if t is float or t is int:
                try:
                    v = ft.coerce(v, "") if bounded or t is int else v
                except OutputError:
                    raise _Misfit from None
                if v - v == 0:  # finite (inf - inf and nan - nan are nan)
                    return v
            elif v is None and nullable:
                return None
            raise _Misfit
    elif kind == "bool":
        def check(v):
            if type(v) is bool:
                return v
            if v is None and nullable:
                return None
            raise _Misfit
    elif kind == "enum":
        wanted = type(ft.values[0])
        allowed = frozenset(ft.values)

        def check(v):
            if type(v) is wanted and v in allowed:
                return v
            if v is None and nullable:
                return None
            raise _Misfit
    elif kind == "list":
        lo, hi = ft.length_bounds
        item = _checker(ft.item)  # type: ignore[arg-type]

        def check(v):
            if type(v) is list and lo <= len(v) <= hi:
                return [item(x) for x in v]
            if v is None and nullable:
                return None
            raise _Misfit
    else:
        check = _compile_object(ft.fields, nullable)
    return check


def _compile_object(fields: tuple[tuple[str, FieldType], ...], nullable: bool = False):
    items = tuple((name, _checker(sub)) for name, sub in fields)
    n = len(items)
    names = frozenset(name for name, _ in fields)

    def check(v):
        if type(v) is dict:
            if len(v) == n:
                try:
                    return {name: c(v[name]) for name, c in items}
                except KeyError:  # as many keys, one of them unknown
                    raise _Misfit from None
            if len(v) < n and names.issuperset(v):  # missing keys read as null (if Optional)
                return {name: c(v.get(name)) for name, c in items}
        elif v is None and nullable:
            return None
        raise _Misfit
    return check


def _utf8(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _object_schema(fields: tuple[tuple[str, FieldType], ...]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {name: ft.json_schema() for name, ft in fields},
        "required": [name for name, _ in fields],
        "additionalProperties": False,
    }


def _check_text(value: str, where: str) -> None:
    """A string that cannot be UTF-8 (a lone surrogate, e.g. from a JSON ``"\\ud800"``) cannot
    be stored or put in a polars column."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise OutputError(f"{where} contains a lone surrogate (not valid Unicode text)") from None


def _check_object(fields: tuple[tuple[str, FieldType], ...], obj: dict, path: str | None) -> dict[str, Any]:
    """Check a JSON object against fields: no extra keys, every non-Optional key present."""
    where = "answer" if path is None else _field_path(path)
    if len(obj) != len(fields) or any(name not in obj for name, _ in fields):
        names = {name for name, _ in fields}
        extra = [k for k in obj if k not in names]
        if extra:
            raise OutputError(f"{where} has unexpected key(s) {_short(extra, 120)}; "
                              f"expected {[name for name, _ in fields]!r}")
        missing = [name for name, ft in fields if name not in obj and not ft.nullable]
        if missing:
            raise OutputError(f"{where} lacks field(s) {missing!r}")
    prefix = "" if path is None else f"{path}."
    return {name: ft.coerce(obj.get(name), prefix + name) for name, ft in fields}


def _check_keys(names: list[Any], where: str) -> None:
    bad = [n for n in names if not isinstance(n, str) or not n.strip()]
    if bad:
        raise PlanError(f"{where}: field names must be non-empty strings, got {bad!r}")
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise PlanError(f"{where}: duplicate field names {dupes!r} in {names!r}")
    for name in names:
        _plan_text(name, f"{where}: field name {name!r}")


def _plan_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PlanError(f"{where} is not valid Unicode text (a lone surrogate)") from None


def _check_enum_values(values: tuple[Any, ...], where: str) -> None:
    if not values:
        raise PlanError(f"{where}: an enum needs at least one value")
    if all(type(v) is str for v in values):
        for v in values:
            _plan_text(v, f"{where}: value {v!r}")
    elif all(type(v) is int for v in values):
        if any(abs(v) > MAX_INT_ABS for v in values):
            raise PlanError(f"{where}: integer values must be within ±{MAX_INT_ABS}")
    else:
        raise PlanError(f"{where}: values must be all strings or all integers, got {list(values)!r}")
    if len(set(values)) != len(values):
        raise PlanError(f"{where}: duplicate values in {list(values)!r}")


# ---------------------------------------------------------------------- pydantic models


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and hasattr(tp, "model_fields") and hasattr(tp, "model_validate_json")


def _model_name(model: Any) -> str:
    return f"{model.__module__}.{model.__qualname__}"


def _model_key(model: Any) -> str:
    """The model's qualified name and a digest of its own JSON schema (its constraints)."""
    try:
        blob = json.dumps(model.model_json_schema(), sort_keys=True, default=str)
    except Exception:  # a model whose schema pydantic cannot write is still named
        blob = ""
    return f"{_model_name(model)}:{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def _validation_message(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            parts = [f"{'.'.join(map(str, e.get('loc', ()))) or 'value'}: {e.get('msg', '')}" for e in errors()]
            text = "; ".join(parts)
        except Exception:
            text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else text[:297] + "..."


def _run_model(ft: FieldType, value: Any, path: str | None, transform: bool) -> Any:
    """Run a model's validation on a checked value; with ``transform``, return what it made of it."""
    model = ft.model
    where = "answer" if path is None else _field_path(path)
    try:
        instance = model.model_validate_json(json.dumps(value, ensure_ascii=False))
        if not transform:
            return value
        dumped = instance.model_dump(mode="json")
    except Exception as exc:  # ValidationError, or a validator that raised something else
        raise OutputError(f"{where} fails the {model.__name__} model's validation: "
                          f"{_validation_message(exc)}") from None
    return _rekey(dumped, value, ft)


def _rekey(dumped: Any, original: Any, ft: FieldType) -> Any:
    """A model's dump (keyed by attribute names) keyed as the spec is (by aliases)."""
    if dumped is None:
        return None
    if ft.kind == "struct" and isinstance(dumped, dict):
        orig = original if isinstance(original, dict) else {}
        out = {}
        for (key, sub), attr in zip(ft.fields, ft.attrs or ft.keys):
            out[key] = _rekey(dumped[attr], orig.get(key), sub) if attr in dumped else orig.get(key)
        return out
    if ft.kind == "list" and isinstance(dumped, list):
        orig = original if isinstance(original, list) and len(original) == len(dumped) else [None] * len(dumped)
        return [_rekey(d, o, ft.item) for d, o in zip(dumped, orig)]  # type: ignore[arg-type]
    return dumped


def _apply_models(value: Any, ft: FieldType, path: str | None, transform: bool) -> Any:
    """Run every model's validation found in ``ft`` (outermost first; a model validates its insides)."""
    if value is None:
        return None
    if ft.kind == "struct":
        if ft.model is not None:
            return _run_model(ft, value, path, transform)
        prefix = "" if path is None else f"{path}."
        return {name: _apply_models(value[name], sub, prefix + name, transform) if sub.has_model() else value[name]
                for name, sub in ft.fields}
    if ft.kind == "list":
        return [_apply_models(v, ft.item, f"{path}[{i}]", transform) for i, v in enumerate(value)]  # type: ignore[arg-type]
    return value


# ---------------------------------------------------------------------- annotations -> types

_BOUND_ATTRS = ("ge", "gt", "le", "lt", "min_length", "max_length")


def _metadata_items(meta: Any):
    """Flatten annotated-types groups (``Interval``, ``Len``) and pydantic ``FieldInfo``."""
    try:
        import annotated_types
    except ImportError:  # pragma: no cover - pydantic depends on it
        annotated_types = None
    if annotated_types is not None and isinstance(meta, annotated_types.GroupedMetadata) \
            and not hasattr(meta, "metadata"):
        for m in meta:
            yield from _metadata_items(m)
        return
    yield meta


def _apply_metadata(ft: FieldType, metadata: list[Any], where: str, under_model: bool) -> FieldType:
    """Descriptions and bounds from ``Annotated`` / ``Field(...)`` metadata."""
    changes: dict[str, Any] = {}
    for meta in metadata:
        for m in _metadata_items(meta):
            if isinstance(m, str):
                changes["description"] = m
                continue
            if hasattr(m, "metadata") and hasattr(m, "description") and hasattr(m, "annotation"):  # FieldInfo
                if m.description:
                    changes["description"] = m.description
                ft = _apply_metadata(ft, list(m.metadata), where, under_model)
                continue
            name = type(m).__name__
            attr = {"Ge": "ge", "Gt": "gt", "Le": "le", "Lt": "lt", "MinLen": "min_length",
                    "MaxLen": "max_length"}.get(name)
            if attr is None or not hasattr(m, attr):
                if under_model:
                    continue  # the model's own validation enforces what the JSON schema cannot say
                raise PlanError(f"{where}: unsupported annotation {m!r}; use a description string, "
                                "Ge/Gt/Le/Lt, MinLen/MaxLen, or a pydantic model for other constraints")
            bound = getattr(m, attr)
            if attr in ("ge", "gt", "le", "lt"):
                if ft.kind not in ("int", "float") or isinstance(bound, bool) or not isinstance(bound, (int, float)):
                    if under_model:
                        continue
                    raise PlanError(f"{where}: {name} applies to int and float fields, not {ft.describe()}")
                if ft.kind == "int":
                    key, val = {"ge": ("minimum", math.ceil(bound)), "gt": ("minimum", math.floor(bound) + 1),
                                "le": ("maximum", math.floor(bound)), "lt": ("maximum", math.ceil(bound) - 1)}[attr]
                else:
                    key, val = {"ge": ("minimum", bound), "gt": ("exclusive_minimum", bound),
                                "le": ("maximum", bound), "lt": ("exclusive_maximum", bound)}[attr]
                changes[key] = val
            else:
                if ft.kind not in ("str", "list") or not isinstance(bound, int) or bound < 0:
                    if under_model:
                        continue
                    raise PlanError(f"{where}: {name} applies to str and list fields, not {ft.describe()}")
                changes[attr] = bound
    if not changes:
        return ft
    description = changes.get("description")
    if description is not None and not isinstance(description, str):
        raise PlanError(f"{where}: a description must be a string, got {description!r}")
    try:
        return dataclasses.replace(ft, **changes)
    except PlanError as exc:
        raise PlanError(f"{where}: {exc}") from None


def field_type_from_annotation(annotation: Any, where: str, *, _depth: int = 1,
                               _models: tuple[Any, ...] = (), _under_model: bool = False) -> FieldType:
    """Map a Python annotation (``str``, ``list[str]``, ``Optional[int]``, a nested dict, a
    pydantic model, ``Literal[...]`` ...) to a FieldType. See the module docstring."""
    if _depth > MAX_DEPTH:
        raise PlanError(f"{where}: the schema nests deeper than {MAX_DEPTH} levels")
    recurse = dict(_depth=_depth + 1, _models=_models, _under_model=_under_model)

    if isinstance(annotation, dict):
        return _struct_from_dict(annotation, where, **recurse)
    if isinstance(annotation, list):
        if len(annotation) != 1:
            raise PlanError(f"{where}: a list schema is written [X] with one item type, got {annotation!r}")
        item = field_type_from_annotation(annotation[0], f"{where} item", **recurse)
        return FieldType("list", item=item)

    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        inner, *metadata = typing.get_args(annotation)
        ft = field_type_from_annotation(inner, where, _depth=_depth, _models=_models, _under_model=_under_model)
        return _apply_metadata(ft, metadata, where, _under_model)
    if origin in (typing.Required, typing.NotRequired):
        return field_type_from_annotation(typing.get_args(annotation)[0], where, _depth=_depth,
                                          _models=_models, _under_model=_under_model)
    if origin in (Union, types.UnionType):
        args = typing.get_args(annotation)
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1 or len(args) != 2:
            raise PlanError(
                f"{where}: unsupported type {annotation!r}; unions are only supported as "
                "Optional[X] (X | None)"
            )
        ft = field_type_from_annotation(rest[0], where, _depth=_depth, _models=_models, _under_model=_under_model)
        return dataclasses.replace(ft, nullable=True)
    if origin is typing.Literal:
        args = typing.get_args(annotation)
        values = tuple(a for a in args if a is not None)
        try:
            return FieldType("enum", values=values, nullable=len(values) != len(args))
        except PlanError as exc:
            raise PlanError(f"{where}: Literal {exc}") from None
    if origin is list:
        args = typing.get_args(annotation)
        if len(args) == 1:
            item = field_type_from_annotation(args[0], f"{where} item", **recurse)
            return FieldType("list", item=item)
    if isinstance(annotation, type) and origin is None:
        if annotation in _SCALAR_TYPES:
            return FieldType(_SCALAR_TYPES[annotation])
        if issubclass(annotation, enum.Enum):
            values = tuple(member.value for member in annotation)
            try:
                return FieldType("enum", values=values)
            except PlanError as exc:
                raise PlanError(f"{where}: Enum {annotation.__name__} {exc}") from None
    if _is_model(annotation):
        return _struct_from_model(annotation, where, _depth=_depth, _models=_models)
    if typing.is_typeddict(annotation):
        if annotation in _models:
            raise PlanError(f"{where}: {annotation.__qualname__} refers to itself; recursive schemas are not supported")
        hints = typing.get_type_hints(annotation, include_extras=True)
        return _struct_from_items(list(hints.items()), where, _depth=_depth, _models=(*_models, annotation),
                                  _under_model=_under_model)
    raise PlanError(
        f"{where}: unsupported type {annotation!r}; use str, int, float, bool, Literal[...], an Enum, "
        "list[X], a nested dict of fields, a pydantic model or a TypedDict, or Optional[...] of those"
    )


def _struct_from_items(items: list[tuple[Any, Any]], where: str, *, _depth: int, _models: tuple[Any, ...],
                       _under_model: bool, attrs: tuple[str, ...] | None = None,
                       descriptions: dict[str, Any] | None = None) -> FieldType:
    if not items:
        raise PlanError(f"{where}: a nested struct needs at least one field")
    _check_keys([k for k, _ in items], where)
    fields = []
    for key, tp in items:
        ft = field_type_from_annotation(tp, f"{where} field {key!r}", _depth=_depth + 1,
                                        _models=_models, _under_model=_under_model)
        fields.append((key, ft))
    return FieldType("struct", fields=tuple(fields), attrs=attrs)


def _struct_from_dict(schema: dict, where: str, *, _depth: int, _models: tuple[Any, ...],
                      _under_model: bool) -> FieldType:
    return _struct_from_items(list(schema.items()), where, _depth=_depth, _models=_models,
                              _under_model=_under_model)


def _model_items(model: Any, where: str) -> tuple[list[tuple[str, Any]], tuple[str, ...]]:
    """A pydantic model's fields as (key the model is asked for, annotation with its metadata)."""
    if getattr(model, "__pydantic_root_model__", False):
        raise PlanError(f"{where}: a pydantic RootModel is not an object schema; use a BaseModel with fields")
    by_alias = model.model_config.get("validate_by_alias", True)
    items, attrs = [], []
    for attr, info in model.model_fields.items():
        key = attr
        if by_alias:
            alias = info.validation_alias if info.validation_alias is not None else info.alias
            if isinstance(alias, str):
                key = alias
            elif alias is not None:
                raise PlanError(f"{where} field {attr!r}: AliasPath/AliasChoices aliases are not supported; "
                                "use a plain string alias")
        annotation = info.annotation
        extras = list(info.metadata)
        if info.description:
            extras.append(info.description)
        if extras:
            annotation = typing.Annotated[(annotation, *extras)]  # type: ignore[misc]
        items.append((key, annotation))
        attrs.append(attr)
    return items, tuple(attrs)


def _struct_from_model(model: Any, where: str, *, _depth: int, _models: tuple[Any, ...]) -> FieldType:
    if model in _models:
        raise PlanError(f"{where}: {model.__qualname__} refers to itself; recursive schemas are not supported")
    items, attrs = _model_items(model, where)
    struct = _struct_from_items(items, where, _depth=_depth, _models=(*_models, model), _under_model=True,
                                attrs=None if attrs == tuple(k for k, _ in items) else attrs)
    return dataclasses.replace(struct, model=model, model_key=_model_key(model))


# ---------------------------------------------------------------------- specs


class OutputSpec:
    """Base of the output specs. Subclasses are frozen dataclasses (they hash by value)."""

    kind: ClassVar[str]

    def parse(self, text: str) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def validate(self, value: Any) -> Any:
        """Check a value parsed before (e.g. read back from a cache); return the value to use.

        Raises OutputError where the value does not fit. A spec that does not know how to check
        a stored value (a subclass that does not override this) accepts none.
        """
        raise OutputError(f"{type(self).__name__} cannot check a stored answer")

    def default_max_tokens(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class ChoiceSpec(OutputSpec):
    """The answer is exactly one of ``labels``.

    Labels are normalised when the plan is built: surrounding whitespace is stripped (``[' business',
    'sport ']`` becomes ``['business', 'sport']``), because a model's answer is read stripped and
    could never match ``'sport '``. Refused with a PlanError: fewer than two labels ("a
    classification needs at least two labels"), a label that is not a string (named), a label that
    is empty or only whitespace, and labels that are the same once stripped.

    An answer matches a label exactly (after stripping), or else case-insensitively where exactly
    one label matches that way.
    """

    labels: tuple[str, ...]
    kind: ClassVar[str] = "choice"

    def __post_init__(self) -> None:
        labels = self.labels
        if isinstance(labels, str) or not isinstance(labels, (tuple, list)):
            raise PlanError(f"labels must be a list of strings such as ['YES', 'NO'], got {labels!r}")
        if not labels:
            raise PlanError("the label set is empty; a classification needs at least two labels, "
                            "e.g. ['YES', 'NO']")
        for label in labels:
            if not isinstance(label, str):
                raise PlanError(f"label {label!r} is a {type(label).__name__}, not a string; "
                                f"labels must be strings, got {list(labels)!r}")
            _plan_text(label, f"label {label!r}")
            if not label.strip():
                raise PlanError(f"label {label!r} is empty; labels must be non-empty strings, got {list(labels)!r}")
        stripped = tuple(label.strip() for label in labels)
        if len(stripped) < 2:
            raise PlanError(f"a classification needs at least two labels, got {list(labels)!r}")
        seen: set[str] = set()
        dupes = [label for label in stripped if label in seen or seen.add(label)]
        if dupes:
            raise PlanError(f"duplicate labels {dupes!r} in {list(labels)!r}; each label once")
        object.__setattr__(self, "labels", stripped)

    def parse(self, text: str) -> str:
        if not isinstance(text, str):
            raise OutputError(f"answer is a {type(text).__name__}, not text")
        answer = text.strip()
        if answer in self.labels:
            return answer
        folded = [label for label in self.labels if label.casefold() == answer.casefold()]
        if len(folded) == 1:
            return folded[0]
        if folded:
            raise OutputError(f"answer {_short(text)} matches several labels {folded!r} but none exactly")
        raise OutputError(f"answer {_short(text)} is not one of {list(self.labels)!r}")

    def validate(self, value: Any) -> str:
        if type(value) is not str or value not in self.labels:
            raise OutputError(f"answer {_short(value)} is not one of {list(self.labels)!r}")
        return value

    def default_max_tokens(self) -> int:
        # A label can be spelled one character per token under constrained decoding.
        return max(len(label) for label in self.labels) + 2

    def describe(self) -> str:
        return "one of " + ", ".join(self.labels)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "labels": list(self.labels)}


def _field_tokens(ft: FieldType) -> int:
    """Tokens one field's answer may take (generous: a truncated JSON is a null)."""
    kind = ft.kind
    if kind == "str":
        # Room for the longest string the schema allows at one character a token (plus quotes):
        # constrained decoding can spell a degenerate repetition that way, and a JSON answer cut
        # off at max_tokens is a null.
        return min(MAX_STRING_CHARS, ft.max_length if ft.max_length is not None else MAX_STRING_CHARS) + 2
    if kind == "enum":
        return max(len(str(v)) for v in ft.values) + 3
    if kind == "list":
        item = ft.item
        if item.kind in _SCALARS or item.kind == "enum":  # type: ignore[union-attr]
            return 80
        return 8 + 3 * _field_tokens(item)  # type: ignore[arg-type]
    if kind == "struct":
        return 4 + sum(len(name) // 3 + 4 + _field_tokens(sub) for name, sub in ft.fields)
    return {"int": 8, "float": 10, "bool": 3}[kind]


@dataclass(frozen=True)
class JsonSpec(OutputSpec):
    """The answer is a JSON object with the given fields (see the module docstring for schemas).

    ``model_key`` and ``model`` are set when the spec came from a pydantic model: the model is
    kept to validate answers (excluded from equality and hashing); ``model_key`` (the model's
    qualified name and a digest of its JSON schema) stands for it in equality and hashing;
    :meth:`to_dict` (part of every request key) lists the keys of every model in the schema,
    nested ones too. ``attrs`` are the model's attribute names for ``fields``.
    """

    fields: tuple[tuple[str, FieldType], ...]
    model_key: str | None = None
    attrs: tuple[str, ...] | None = None
    model: Any = dataclasses.field(default=None, compare=False, repr=False)
    kind: ClassVar[str] = "json"

    def __post_init__(self) -> None:
        if isinstance(self.fields, dict):
            object.__setattr__(self, "fields", tuple(self.fields.items()))
        if not self.fields:
            raise PlanError("the extract schema has no fields; give at least one, e.g. {'year': int}")
        names = [name for name, _ in self.fields]
        bad = [n for n in names if not isinstance(n, str) or not n.strip()]
        if bad:
            raise PlanError(f"schema field names must be non-empty strings, got {bad!r}")
        if len(set(names)) != len(names):
            raise PlanError(f"duplicate field names in schema: {names!r}")
        if any(not isinstance(ft, FieldType) for _, ft in self.fields):
            raise PlanError("schema fields must be (name, FieldType) pairs")

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    @property
    def root(self) -> FieldType:
        """The answer's type as one struct FieldType (computed once)."""
        root = self.__dict__.get("_root")
        if root is None:
            root = FieldType("struct", fields=self.fields, model=self.model, model_key=self.model_key,
                             attrs=self.attrs)
            self.__dict__["_root"] = root
            self.__dict__["_has_model"] = root.has_model()
        return root

    @classmethod
    def from_schema(cls, schema: Any, where: str = "extract") -> JsonSpec:
        """Build from a dict of name -> type, or from a pydantic model class."""
        if isinstance(schema, dict):
            if not schema:
                raise PlanError(f"{where}: the schema has no fields; give at least one, e.g. {{'year': int}}")
            root = _struct_from_dict(schema, where, _depth=0, _models=(), _under_model=False)
            return cls(root.fields)
        if _is_model(schema):
            if not schema.model_fields:
                raise PlanError(f"{where}: the schema has no fields; give at least one, e.g. {{'year': int}}")
            root = _struct_from_model(schema, where, _depth=0, _models=())
            return cls(root.fields, model_key=root.model_key, attrs=root.attrs, model=schema)
        raise PlanError(
            f"{where}: schema must be a dict of field name -> type or a pydantic model, "
            f"got {type(schema).__name__}"
        )

    def json_schema(self) -> dict[str, Any]:
        return _object_schema(self.fields)

    def polars_dtype(self):
        import polars as pl

        return pl.Struct([pl.Field(name, ft.polars_dtype()) for name, ft in self.fields])

    def parse(self, text: str) -> dict[str, Any]:
        if not isinstance(text, str):
            raise OutputError(f"answer is a {type(text).__name__}, not text")
        try:
            obj = _DECODER.decode(text)
        except json.JSONDecodeError as exc:
            raise OutputError(f"answer is not valid JSON ({exc.msg})") from None
        except (ValueError, RecursionError) as exc:
            raise OutputError(f"answer is not valid JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise OutputError(f"answer is JSON {type(obj).__name__}, expected an object")
        value = self._check(obj)
        if self._models():
            transformed = _apply_models(value, self.root, None, transform=True)
            if transformed != value:
                try:
                    value = self._check(transformed)
                except OutputError as exc:
                    raise OutputError(f"the model's validators returned a value that does not fit: {exc}") from None
        return value

    def validate(self, value: Any) -> dict[str, Any]:
        """Check an answer parsed before (read back from a cache): the same checks as :meth:`parse`,
        the model's validators included (they check; their changes were kept when it was parsed)."""
        if type(value) is not dict:
            raise OutputError(f"answer is {type(value).__name__}, expected an object")
        checked = self._check(value)
        if self._models():
            _apply_models(checked, self.root, None, transform=False)
        return checked

    def _check(self, obj: dict) -> dict[str, Any]:
        """The structural check: compiled (fast) first, and where it fails the slow one says why."""
        check = self.__dict__.get("_checker")
        if check is None:
            check = self.__dict__["_checker"] = _compile_object(self.fields)
        try:
            return check(obj)
        except _Misfit:
            pass
        _check_object(self.fields, obj, None)  # raises with the reason
        raise OutputError("answer does not fit the schema")  # pragma: no cover - the two checks agree

    def _models(self) -> bool:
        if "_has_model" not in self.__dict__:
            self.root  # noqa: B018 - computes both
        return self.__dict__["_has_model"]

    def default_max_tokens(self) -> int:
        # Braces, quotes, names and bounded values; generous because a truncated JSON is a null.
        return 8 + sum(len(name) // 3 + 4 + _field_tokens(ft) for name, ft in self.fields)

    def describe(self) -> str:
        return "{" + ", ".join(f"{name}: {ft.describe()}" for name, ft in self.fields) + "}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "schema": self.json_schema()}
        models = [ft.model_key for ft in self.root.walk() if ft.model_key is not None]
        if models:  # validators decide what is kept: answers of different models are not shared
            out["models"] = models
        return out


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dupes = sorted({k for k, _ in pairs if k in seen or seen.add(k)})
        raise ValueError(f"duplicate key(s) {dupes!r}")
    return obj


#: Built once (``json.loads`` with a hook builds a decoder per call).
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys)


@dataclass(frozen=True)
class TextSpec(OutputSpec):
    """Free text."""

    kind: ClassVar[str] = "text"

    def parse(self, text: str) -> str:
        if not isinstance(text, str):
            raise OutputError(f"answer is a {type(text).__name__}, not text")
        answer = text.strip()
        _check_text(answer, "answer")
        return answer

    def validate(self, value: Any) -> str:
        if type(value) is not str:
            raise OutputError(f"answer is a {type(value).__name__}, not text")
        _check_text(value, "answer")
        return value

    def default_max_tokens(self) -> int:
        return 256

    def describe(self) -> str:
        return "text"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind}
