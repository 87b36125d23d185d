"""Extraction schemas written as JSON: for the command line (``--schema schema.json``) and SQL.

Two forms are read, both as JSON text or as the parsed value:

- **the short form**, an object of field name -> type, where a type is a name (``"str"``,
  ``"int"``, ``"float"``, ``"bool"``; the JSON Schema names ``"string"``, ``"integer"``,
  ``"number"``, ``"boolean"``; or DuckDB's: ``"VARCHAR"``, ``"BIGINT"``, ``"INTEGER"``,
  ``"DOUBLE"``, ``"BOOLEAN"`` ...), a name ending in ``?`` (may be null: ``"int?"``), a list of one
  type (``["str"]``, or ``"VARCHAR[]"``), or a nested object (a struct). DuckDB's JSON structure
  strings (``'{"place": "VARCHAR", "year": "BIGINT"}'``, what ``from_json`` takes) are this form.
- **a JSON Schema** of an object (``{"type": "object", "properties": {...}}``, what
  ``Model.model_json_schema()`` writes): ``string``/``integer``/``number``/``boolean``/``array``/
  ``object`` types, ``enum``, ``description``, ``minimum``/``maximum``, ``minLength``/``maxLength``,
  ``maxItems``/``minItems``, ``"null"`` in a type list or an ``anyOf``, and ``required`` (a property
  missing from an object's ``required`` list may be null); ``$ref`` to ``$defs`` is followed.

>>> spec = spec_from_json('{"place": "str", "year": "int?", "tags": ["str"]}')
>>> spec.describe()
'{place: str, year: Optional[int], tags: list[str]}'
>>> duckdb_structure(spec)
'{"place": "VARCHAR", "year": "BIGINT", "tags": ["VARCHAR"]}'
"""

from __future__ import annotations

import json
from typing import Any

from semframe.errors import PlanError
from semframe.plan.spec import FieldType, JsonSpec

_NAMES = {
    "str": ("str", "string", "text", "varchar", "char", "bpchar", "utf8"),
    "int": ("int", "integer", "bigint", "int64", "int32", "int16", "int8", "smallint", "tinyint", "hugeint",
            "ubigint", "uinteger", "usmallint", "utinyint", "long", "short"),
    "float": ("float", "number", "double", "real", "float64", "float32", "float8", "float4", "decimal", "numeric"),
    "bool": ("bool", "boolean", "logical"),
}
_KIND_OF = {alias: kind for kind, aliases in _NAMES.items() for alias in aliases}
_DUCKDB = {"str": "VARCHAR", "int": "BIGINT", "float": "DOUBLE", "bool": "BOOLEAN"}
_EXAMPLE = '{"place": "str", "year": "int"}'


def spec_from_json(schema: Any, where: str = "extract") -> JsonSpec:
    """A :class:`JsonSpec` from a JSON schema in either form (see the module docstring)."""
    if isinstance(schema, (str, bytes)):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as exc:
            raise PlanError(f"{where}: the schema is not valid JSON ({exc.msg} at character {exc.pos}); "
                            f"write e.g. '{_EXAMPLE}'") from None
    if not isinstance(schema, dict) or not schema:
        raise PlanError(f"{where}: the schema must be a JSON object of field name -> type, e.g. '{_EXAMPLE}', "
                        f"got {schema!r}")
    if isinstance(schema.get("properties"), dict) and schema.get("type", "object") == "object":
        root = _from_json_schema(schema, schema, where, "")
    else:
        root = FieldType("struct", fields=tuple((name, _short(t, where, name)) for name, t in _items(schema, where)))
    return JsonSpec(root.fields)


def _items(obj: dict[str, Any], where: str) -> list[tuple[str, Any]]:
    for name in obj:
        if not isinstance(name, str) or not name.strip():
            raise PlanError(f"{where}: schema field names must be non-empty strings, got {name!r}")
    return list(obj.items())


def _short(t: Any, where: str, path: str) -> FieldType:
    if isinstance(t, dict):
        if not t:
            raise PlanError(f"{where}: field {path!r} is an empty object; give its fields, e.g. {{\"name\": \"str\"}}")
        return FieldType("struct", fields=tuple((n, _short(sub, where, f"{path}.{n}")) for n, sub in _items(t, where)))
    if isinstance(t, list):
        if len(t) != 1:
            raise PlanError(f"{where}: field {path!r}: a list type has exactly one item type, e.g. [\"str\"], got {t!r}")
        return FieldType("list", item=_short(t[0], where, f"{path}[]"))
    if not isinstance(t, str):
        raise PlanError(f"{where}: field {path!r}: a type is a name such as \"str\", a list [type] or an object, "
                        f"got {t!r}")
    name = t.strip()
    nullable = name.endswith("?")
    if nullable:
        name = name[:-1].strip()
    lowered = name.lower()
    if lowered.startswith("optional[") and lowered.endswith("]"):
        nullable, name = True, name[9:-1].strip()
        lowered = name.lower()
    if lowered.endswith("[]"):
        return FieldType("list", item=_short(name[:-2], where, f"{path}[]"), nullable=nullable)
    if lowered.startswith("list[") and lowered.endswith("]"):
        return FieldType("list", item=_short(name[5:-1], where, f"{path}[]"), nullable=nullable)
    base = lowered.split("(")[0].strip()  # DECIMAL(10,2), VARCHAR(20)
    kind = _KIND_OF.get(base)
    if kind is None:
        raise PlanError(f"{where}: field {path!r} has the unknown type {t!r}; types are str, int, float, bool "
                        "(or string/integer/number/boolean, VARCHAR/BIGINT/DOUBLE/BOOLEAN), a list [type] or an "
                        "object of fields")
    return FieldType(kind, nullable=nullable)


_JSON_KINDS = {"string": "str", "integer": "int", "number": "float", "boolean": "bool"}


def _from_json_schema(node: Any, root: dict[str, Any], where: str, path: str, depth: int = 0) -> FieldType:
    if depth > 32:
        raise PlanError(f"{where}: the JSON Schema nests too deeply at {path!r} (a recursive $ref?)")
    if not isinstance(node, dict):
        raise PlanError(f"{where}: JSON Schema at {path or 'the root'!r} should be an object, got {node!r}")
    ref = node.get("$ref")
    if isinstance(ref, str):
        target: Any = root
        if not ref.startswith("#/"):
            raise PlanError(f"{where}: only local $ref ('#/$defs/...') are followed, got {ref!r}")
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, dict) else None
        if target is None:
            raise PlanError(f"{where}: $ref {ref!r} at {path!r} points nowhere")
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _from_json_schema(merged, root, where, path, depth + 1)
    description = node.get("description") if isinstance(node.get("description"), str) else None
    for key in ("anyOf", "oneOf"):
        options = node.get(key)
        if isinstance(options, list):
            real = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            if len(real) != 1:
                raise PlanError(f"{where}: field {path!r}: {key} is read only as 'X or null', got {len(real)} types")
            inner = _from_json_schema(real[0], root, where, path, depth + 1)
            return _replace(inner, nullable=len(real) < len(options) or inner.nullable,
                            description=description or inner.description)
    types = node.get("type")
    nullable = False
    if isinstance(types, list):
        nullable = "null" in types
        types = [t for t in types if t != "null"]
        if len(types) != 1:
            raise PlanError(f"{where}: field {path!r}: a type list is read only as [X, 'null'], got {node['type']!r}")
        types = types[0]
    if "enum" in node:
        values = node["enum"]
        if not isinstance(values, list):
            raise PlanError(f"{where}: field {path!r}: enum should be a list")
        real = [v for v in values if v is not None]
        return FieldType("enum", values=tuple(real), nullable=nullable or len(real) < len(values),
                         description=description)
    if types is None and isinstance(node.get("properties"), dict):
        types = "object"
    if types == "object":
        props = node.get("properties")
        if not isinstance(props, dict) or not props:
            raise PlanError(f"{where}: the object at {path or 'the root'!r} has no properties")
        required = node.get("required")
        fields = []
        for name, sub in _items(props, where):
            ft = _from_json_schema(sub, root, where, f"{path}.{name}" if path else name, depth + 1)
            if isinstance(required, list) and name not in required and not ft.nullable:
                ft = _replace(ft, nullable=True)
            fields.append((name, ft))
        return FieldType("struct", fields=tuple(fields), nullable=nullable, description=description)
    if types == "array":
        items = node.get("items")
        if items is None:
            raise PlanError(f"{where}: the array at {path!r} has no items type")
        return FieldType("list", item=_from_json_schema(items, root, where, f"{path}[]", depth + 1), nullable=nullable,
                         description=description, min_length=node.get("minItems"), max_length=node.get("maxItems"))
    kind = _JSON_KINDS.get(types) if isinstance(types, str) else None
    if kind is None:
        raise PlanError(f"{where}: field {path!r} has the JSON Schema type {types!r}; supported: string, integer, "
                        "number, boolean, array, object (and 'null' beside one of them)")
    kwargs: dict[str, Any] = {"nullable": nullable, "description": description}
    if kind in ("int", "float"):
        kwargs.update(minimum=node.get("minimum"), maximum=node.get("maximum"))
        if kind == "float":
            kwargs.update(exclusive_minimum=node.get("exclusiveMinimum"), exclusive_maximum=node.get("exclusiveMaximum"))
    if kind == "str":
        kwargs.update(min_length=node.get("minLength"), max_length=node.get("maxLength"))
    return FieldType(kind, **kwargs)


def _replace(ft: FieldType, **changes: Any) -> FieldType:
    import dataclasses

    return dataclasses.replace(ft, **changes)


def duckdb_type(ft: FieldType) -> Any:
    """A field's type in DuckDB's JSON structure notation (``from_json``'s second argument)."""
    if ft.kind == "list":
        return [duckdb_type(ft.item)]  # type: ignore[arg-type]
    if ft.kind == "struct":
        return {name: duckdb_type(sub) for name, sub in ft.fields}
    if ft.kind == "enum":
        return "VARCHAR" if isinstance(ft.values[0], str) else "BIGINT"
    return _DUCKDB[ft.kind]


def duckdb_structure(spec: JsonSpec) -> str:
    """The DuckDB JSON structure of a spec's result (``from_json(answer, structure)`` gives the STRUCT)."""
    return json.dumps({name: duckdb_type(ft) for name, ft in spec.fields})
