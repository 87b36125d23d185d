"""Plans as files: a stable, versioned JSON form of a whole logical plan, safe to load.

``SemLazyFrame.serialize()`` writes it and ``sf.deserialize()`` reads it back (the format is
documented in ``docs/cli.md``, "Plan files"). What it holds:

- **scans of files** by path and ``pl.scan_*`` options (``sf.scan_parquet`` ... remember them; a
  polars ``pl.scan_parquet(path)`` with default options is recognised too);
- **small in-memory data** (a DataFrame) embedded as compressed Arrow IPC, base64, up to
  ``embed_limit`` bytes (:data:`DEFAULT_EMBED_LIMIT`); more than that is refused;
- **relational steps** (filter, select, with_columns, head, sort, drop, rename) with their polars
  expressions in polars' own JSON form (``expr.meta.serialize(format="json")``), and **any other
  polars method chain** (``join``, ``group_by().agg()``, ...) as method names and arguments;
- **semantic steps** with their template, instruction, output spec and options (every field of
  the step, by name); the operators of several inputs or rounds (join, aggregate, top-k,
  embeddings, cluster, dedup) the same way, their inputs nested under their field names and
  their values tagged (``{"template": ...}``, ``{"spec": ...}``, ``{"tuple": [...]}``).

Loading is safe: it never unpickles and never runs code. A plan that holds a Python function
(``pipe``, ``map_batches``/``map_elements`` and other UDF expressions, a callable argument) is
refused when it is *saved*, with the step named; a file that holds one anyway (a polars UDF is
pickled inside its expression JSON) is refused when it is *loaded*. Method names are checked
against polars' LazyFrame (and group-by) API before anything is called; nothing that writes or
runs (``collect``, ``sink_*``) can be named. One opt-in exception: a step whose ``extract``
schema is a pydantic model records the model as ``"module:QualName"``, and loading such a plan
imports that module only when asked to (``import_models=True``).

Polars' expression JSON is polars' format, not semframe's: a file records the polars version
that wrote it, and an expression a later polars cannot read fails with both versions named.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import math
import os
import re
import warnings
from typing import Any

import polars as pl

from semframe.errors import PlanError
from semframe.plan.expr import PlExpr
from semframe.plan.nodes import (
    FILE_KINDS,
    Call,
    Drop,
    Filter,
    FrozenDict,
    FrozenList,
    Head,
    InputRef,
    Node,
    Opaque,
    PolarsCall,
    Rename,
    Scan,
    Select,
    Sort,
    Source,
    WithColumns,
    thaw,
)
from semframe.plan.approx import CalibratedThreshold, SemApproxClassify, SemApproxFilter, Target
from semframe.plan.semantic import SemanticNode, SemanticStep, SemClassify, SemExtract, SemFilter, SemMap
from semframe.plan.spec import ChoiceSpec, FieldType, JsonSpec, OutputSpec, TextSpec
from semframe.plan.template import Template

#: What the ``format`` key of every plan file says.
FORMAT = "semframe.plan"
#: The format version this semframe writes (and the newest it reads).
VERSION = 1
#: In-memory data embedded in a plan file, at most (bytes of the polars frame).
DEFAULT_EMBED_LIMIT = 1 << 20

_SEMANTIC = {f"semantic.{cls.operator}": cls for cls in (SemClassify, SemFilter, SemExtract, SemMap)}
_RELATIONAL = {"filter": Filter, "select": Select, "with_columns": WithColumns, "head": Head, "sort": Sort,
               "drop": Drop, "rename": Rename}
#: Approximate row-wise steps are saved as their exact verb plus an ``approx`` object (and
#: ``proxy`` / ``embedder``); loading picks the approximate node when ``approx`` is there.
_APPROX = {"semantic.classify": SemApproxClassify, "semantic.filter": SemApproxFilter}
#: Fields of an approximate step beyond its exact verb's.
_APPROX_FIELDS = ("approx", "proxy", "embedder")
_OP_OF = {**{cls: op for op, cls in _RELATIONAL.items()}, Scan: "scan", PolarsCall: "polars",
          **{cls: op for op, cls in _SEMANTIC.items()}, **{cls: op for op, cls in _APPROX.items()}}
#: Semantic operators beyond the row-wise verbs ("semantic.join" -> SemJoin ...), saved field by
#: field; filled on first use from every SemanticNode subclass (see :func:`_operators`).
_GENERIC: dict[str, type] = {}


def _operators() -> dict[str, type]:
    """``semantic.<operator>`` -> node class for every semantic operator that is not row-wise."""
    if not _GENERIC:
        import importlib

        for module in ("join", "aggregate", "ranking", "embedding", "cluster"):
            try:
                importlib.import_module(f"semframe.plan.{module}")
            except ModuleNotFoundError as exc:  # pragma: no cover - a family not in this build
                if exc.name != f"semframe.plan.{module}":
                    raise
        todo = list(SemanticNode.__subclasses__())
        while todo:
            cls = todo.pop()
            todo.extend(cls.__subclasses__())
            # Row-wise steps have their own form; operators defined outside semframe are not saved.
            if issubclass(cls, SemanticStep) or not cls.__module__.startswith("semframe."):
                continue
            _GENERIC.setdefault(f"semantic.{cls.operator}", cls)
    return _GENERIC


def _op_of(node: Node) -> str | None:
    op = _OP_OF.get(type(node))
    if op is None and isinstance(node, SemanticNode):
        op = next((k for k, v in _operators().items() if v is type(node)), None)
    return op

#: LazyFrame methods a plan file may not name (they run the query or act outside the plan).
_FORBIDDEN_PREFIXES = ("collect", "sink_", "profile", "show", "fetch", "explain", "serialize", "remote", "execute",
                       "describe", "deserialize", "from_", "write_", "pipe", "map_batches", "inspect")
#: Keys of polars' expression JSON that stand for Python code (UDFs are pickled under them).
_UNSAFE_KEY = re.compile(r"python|anonymous|udf|pickle|opaque|plugin", re.I)
_DTYPES = ("Int8", "Int16", "Int32", "Int64", "Int128", "UInt8", "UInt16", "UInt32", "UInt64", "UInt128", "Float16",
           "Float32", "Float64", "Boolean", "String", "Binary", "Date", "Time", "Datetime", "Duration", "Decimal",
           "List", "Array", "Struct", "Null", "Categorical", "Enum")


# =========================================================================== writing


def plan_to_dict(plan: Node, *, embed_limit: int | None = DEFAULT_EMBED_LIMIT) -> dict[str, Any]:
    """The plan file's content as plain JSON data (see the module docstring)."""
    writer = _Writer(embed_limit)
    return {"format": FORMAT, "version": VERSION, "semframe": _semframe_version(), "polars": pl.__version__,
            "plan": writer.node(plan)}


def _semframe_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("semframe")
    except PackageNotFoundError:  # running from a source tree
        return "unknown"


def dumps(plan: Node, *, embed_limit: int | None = DEFAULT_EMBED_LIMIT, indent: int | None = 1) -> str:
    """The plan as JSON text (stable: the same plan always gives the same text)."""
    return json.dumps(plan_to_dict(plan, embed_limit=embed_limit), indent=indent, ensure_ascii=False,
                      allow_nan=False)


class _Writer:
    def __init__(self, embed_limit: int | None):
        self.embed_limit = embed_limit
        self.step = 0

    # ------------------------------------------------------------------ nodes

    def node(self, node: Node) -> dict[str, Any]:
        op = _op_of(node)
        if op is None:
            saved = sorted({*_OP_OF.values(), *_operators()})
            raise PlanError(f"serialize: a {type(node).__name__} step cannot be saved in a plan file "
                            f"(this version saves {', '.join(saved)})")
        if isinstance(node, Scan):
            return {"op": "scan", "source": self.source(node.source),
                    "columns_read": None if node.columns_read is None else list(node.columns_read)}
        if isinstance(node, PolarsCall):
            inputs = [self.node(n) for n in node.inputs]
            where = f"serialize: polars step .{node.method}(...)"
            calls = [{"method": c.name, "args": [self.value(a, where) for a in c.args],
                      "kwargs": {k: self.value(v, where) for k, v in c.kwargs}} for c in node.calls]
            return {"op": "polars", "inputs": inputs, "calls": calls}
        if isinstance(node, SemanticStep):
            return self.semantic(op, node)
        if isinstance(node, SemanticNode):
            return self.operator(op, node)
        out: dict[str, Any] = {"op": op, "input": self.node(node.child)}  # type: ignore[attr-defined]
        where = f"serialize: {op} step"
        if isinstance(node, Filter):
            out["predicate"] = expr_to_json(node.predicate, where)
        elif isinstance(node, (Select, WithColumns)):
            out["exprs"] = [expr_to_json(e, where) for e in node.exprs]
        elif isinstance(node, Head):
            out["n"] = node.n
        elif isinstance(node, Sort):
            out.update(by=[expr_to_json(e, where) for e in node.by], descending=list(node.descending),
                       nulls_last=node.nulls_last)
        elif isinstance(node, Drop):
            out["names"] = list(node.names)
        elif isinstance(node, Rename):
            out["mapping"] = [[a, b] for a, b in node.mapping]
        return out

    def semantic(self, op: str, node: SemanticStep) -> dict[str, Any]:
        out: dict[str, Any] = {"op": op, "input": self.node(node.child)}
        where = f"serialize: step {op} -> {node.name}" if node.name else f"serialize: step {op}"
        for f in dataclasses.fields(node):
            if not f.init or f.name == "child":
                continue
            value = getattr(node, f.name)
            if f.name == "template":
                out["template"] = value.source
                if _needs_parts(value):
                    out["template_parts"] = list(value.parts)
            elif f.name == "spec":
                out["spec"] = spec_to_json(value, where)
            elif f.name == "engine" and value is not None and not isinstance(value, str):
                raise PlanError(f"{where}: the step has an engine object ({type(value).__name__}); a plan file names "
                                "engines instead: register it with sf.configure(engines={'name': engine}) and "
                                "give the step engine='name'")
            elif f.name in _APPROX_FIELDS:
                if f.name == "approx" or value is not None:
                    out[f.name] = _approx_json(f.name, value, where)
            elif f.name == "semantic_cache" and isinstance(value, CalibratedThreshold):
                out[f.name] = {"calibrated": value.target.to_dict()}  # not the float it poses as
            else:
                out[f.name] = _plain(value, f"{where}: option {f.name}")
        return out

    def operator(self, op: str, node: SemanticNode) -> dict[str, Any]:
        """Any other semantic operator: every field by name, inputs nested, values tagged."""
        out: dict[str, Any] = {"op": op}
        where = f"serialize: step {op}"
        for f in dataclasses.fields(node):
            if f.init:
                out[f.name] = self.operand(getattr(node, f.name), f"{where}: option {f.name}", f.name)
        return out

    def operand(self, value: Any, where: str, name: str = "") -> Any:
        if isinstance(value, Node):
            return self.node(value)
        if isinstance(value, Template):
            return _template_json(value)
        if isinstance(value, OutputSpec):
            return {"spec": spec_to_json(value, where)}
        if isinstance(value, PlExpr):
            return {"expr": expr_to_json(value, where)}
        if isinstance(value, tuple):
            return {"tuple": [self.operand(v, where) for v in value]}
        if isinstance(value, Target):
            return {"target": value.to_dict()}
        if name in ("engine", "embedder") and value is not None and not isinstance(value, str):
            raise PlanError(f"{where}: the step has an {name} object ({type(value).__name__}); a plan file names "
                            f"engines instead: register it with sf.configure(engines={{'name': ...}}) and give the "
                            f"step {name}='name'")
        return _plain(value, where)

    # ------------------------------------------------------------------ sources

    def source(self, source: Source) -> dict[str, Any]:
        reads_files = not source.in_memory and _reads_files(source.frame)
        origin = source.origin
        if origin is None and reads_files:
            origin = _detect_file_scan(source.frame)
        if origin is not None:
            where = f"serialize: scan of {origin['path']!r}"
            return {"kind": origin["kind"], "path": origin["path"],
                    "options": {k: self.value(v, where) for k, v in sorted(origin.get("options", {}).items())}}
        if reads_files:
            raise PlanError(
                "serialize: the plan reads a polars LazyFrame that is neither a plain file scan nor in memory "
                f"({source.description}); build the plan on sf.scan_parquet/scan_csv/scan_ndjson/scan_ipc(path) "
                "and apply the polars steps to it, so that every step is saved")
        frame = source.frame.collect()
        size = frame.estimated_size()
        if self.embed_limit is not None and size > self.embed_limit:
            raise PlanError(
                f"serialize: the plan reads in-memory data ({frame.height:,} rows, {size:,} bytes), over "
                f"embed_limit={self.embed_limit:,} bytes; write it to a file (df.write_parquet('data.parquet')) and "
                "build the plan on sf.scan_parquet('data.parquet'), or pass embed_limit=None to embed it anyway")
        buf = io.BytesIO()
        try:
            frame.write_ipc(buf, compression="zstd")
        except Exception as exc:  # pl.Object columns have no Arrow form
            raise PlanError(f"serialize: the in-memory data cannot be embedded ({exc})") from None
        return {"kind": "arrow_ipc", "rows": frame.height, "description": source.description,
                "data": base64.b64encode(buf.getvalue()).decode("ascii")}

    # ------------------------------------------------------------------ argument values

    def value(self, value: Any, where: str) -> Any:
        if isinstance(value, PlExpr):
            return expr_to_json(value, where)
        if isinstance(value, pl.Expr):
            return expr_to_json(PlExpr(value), where)
        if isinstance(value, InputRef):
            return {"input": value.index}
        if isinstance(value, Opaque):
            raise PlanError(f"{where} passes a Python function ({value!r}); a plan file holds no code. Use polars "
                            "expressions, or run that part before saving")
        if isinstance(value, FrozenDict) or isinstance(value, dict):
            items = list(value) if isinstance(value, FrozenDict) else list(value.items())
            return {"dict": [[self.value(k, where), self.value(v, where)] for k, v in items]}
        if isinstance(value, (FrozenList, list)):
            return {"list": [self.value(v, where) for v in value]}
        if isinstance(value, tuple):
            return {"tuple": [self.value(v, where) for v in value]}
        if _is_dtype(value):
            return {"dtype": dtype_to_json(value, where)}
        if isinstance(value, float) and not math.isfinite(value):
            return {"float": repr(value)}
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if callable(value):
            raise PlanError(f"{where} passes a Python function ({getattr(value, '__name__', value)!r}); a plan file "
                            "holds no code")
        raise PlanError(f"{where}: an argument of type {type(value).__name__} ({value!r}) cannot be saved")


def _approx_json(name: str, value: Any, where: str) -> Any:
    """An approximate step's target, proxy sources or embedder as plain data; objects refused."""
    if name == "approx":
        return value.to_dict()
    if name == "embedder":
        model = getattr(value, "model", None)
        if getattr(type(value), "name", None) == "sentence-transformers" and isinstance(model, str):
            return model  # a sentence-transformers embedder is its model name (loaded again by name)
        if not isinstance(value, str):
            raise PlanError(f"{where}: the learned proxy uses an embedder object ({type(value).__name__}); a plan "
                            "file names embedders instead: use proxy=sf.SentenceTransformerEmbedder('model name "
                            "or folder') (saved as its name), or proxy='learned' for the configured default embedder")
        return value
    sources = list(value) if isinstance(value, tuple) else [value]
    for source in sources:
        if source is not None and not isinstance(source, str):
            raise PlanError(f"{where}: the proxy is an engine object ({type(source).__name__}); a plan file names "
                            "engines instead: register it with sf.configure(engines={'small': engine}) and give "
                            "proxy='small' (the learned proxy is proxy='learned')")
    return list(value) if isinstance(value, tuple) else value


def _needs_parts(template: Template) -> bool:
    """Whether ``template`` cannot be read back from its source alone (a column name with spaces
    at its ends or braces, as ``Template.for_column`` makes them)."""
    try:
        return Template.parse(template.source).parts != template.parts
    except PlanError:
        return True


def _template_json(template: Template) -> dict[str, Any]:
    out: dict[str, Any] = {"template": template.source}
    if _needs_parts(template):
        out["parts"] = list(template.parts)
    return out


def _template_from(source: Any, parts: Any, where: str) -> Template:
    if not isinstance(source, str):
        raise PlanError(f"deserialize: {where}: template should be a string")
    if parts is None:
        return Template.parse(source)
    if not (isinstance(parts, list) and len(parts) % 2 == 1 and all(isinstance(p, str) for p in parts)
            and all(parts[1::2])):
        raise PlanError(f"deserialize: {where}: template parts should be an odd-length list of strings")
    return Template(source, tuple(parts))


def _plain(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PlanError(f"{where}: {value!r} cannot be saved")
        return value
    if isinstance(value, (tuple, list)):
        return [_plain(v, where) for v in value]
    raise PlanError(f"{where}: a value of type {type(value).__name__} ({value!r}) cannot be saved")


def expr_to_json(expr: PlExpr, where: str) -> dict[str, Any]:
    """A polars expression as ``{"polars_expr": <polars' JSON form>}``; refused if it holds code."""
    try:
        tree = json.loads(expr.expr.meta.serialize(format="json"))
    except (Exception, pl.exceptions.PanicException) as exc:  # noqa: BLE001 - polars' own failure, reworded
        raise PlanError(f"{where}: polars cannot save the expression {expr} ({exc})") from None
    bad = _unsafe(tree)
    if bad:
        raise PlanError(f"{where}: the expression {_short(str(expr))} calls a Python function ({bad}: map_batches, "
                        "map_elements or another UDF); a plan file holds no code. Write it with polars expressions, "
                        "or run that part before saving")
    return {"polars_expr": tree}


def spec_to_json(spec: OutputSpec, where: str) -> dict[str, Any]:
    if isinstance(spec, ChoiceSpec):
        return {"kind": "choice", "labels": list(spec.labels)}
    if isinstance(spec, TextSpec):
        return {"kind": "text"}
    if isinstance(spec, JsonSpec):
        out: dict[str, Any] = {"kind": "json", "fields": [[n, _field_to_json(ft, where)] for n, ft in spec.fields]}
        if spec.model is not None:
            out.update(model=_model_ref(spec.model), model_key=spec.model_key, attrs=list(spec.attrs or ()))
        return out
    raise PlanError(f"{where}: an output spec of type {type(spec).__name__} cannot be saved")


_FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(FieldType) if f.name != "model"}


def _field_to_json(ft: FieldType, where: str) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": ft.kind}
    for name, default in _FIELD_DEFAULTS.items():
        value = getattr(ft, name)
        if name == "kind" or value == default:
            continue
        if name == "item":
            out["item"] = _field_to_json(value, where)
        elif name == "fields":
            out["fields"] = [[n, _field_to_json(sub, where)] for n, sub in value]
        else:
            out[name] = _plain(value, f"{where}: schema")
    if ft.model is not None:
        out["model"] = _model_ref(ft.model)
    return out


def _model_ref(model: Any) -> str:
    return f"{model.__module__}:{model.__qualname__}"


def _is_dtype(value: Any) -> bool:
    return isinstance(value, pl.DataType) or (isinstance(value, type) and issubclass(value, pl.DataType))


def dtype_to_json(dtype: Any, where: str) -> dict[str, Any]:
    if isinstance(dtype, type):
        dtype = dtype()
    name = type(dtype).__name__
    if name not in _DTYPES:
        raise PlanError(f"{where}: the data type {dtype} cannot be saved")
    out: dict[str, Any] = {"name": name}
    if name in ("List", "Array"):
        out["inner"] = dtype_to_json(dtype.inner, where)
        if name == "Array":
            out["shape"] = list(dtype.shape)
    elif name == "Struct":
        out["fields"] = [[f.name, dtype_to_json(f.dtype, where)] for f in dtype.fields]
    elif name == "Datetime":
        out.update(time_unit=dtype.time_unit, time_zone=dtype.time_zone)
    elif name == "Duration":
        out["time_unit"] = dtype.time_unit
    elif name == "Decimal":
        out.update(precision=dtype.precision, scale=dtype.scale)
    elif name == "Enum":
        out["categories"] = dtype.categories.to_list()
    return out


def _lazy_json(lf: pl.LazyFrame) -> Any:
    """polars' own JSON form of a LazyFrame's plan (None if it has none)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = json.loads(lf.serialize(format="json"))
    except (Exception, pl.exceptions.PanicException):  # noqa: BLE001 - not describable
        return None
    # A LazyFrame whose schema was resolved is saved as {"IR": {"dsl": <its plan>, ...}}.
    while isinstance(tree, dict) and set(tree) == {"IR"} and isinstance(tree["IR"], dict) and "dsl" in tree["IR"]:
        tree = tree["IR"]["dsl"]
    return tree


def _reads_files(lf: pl.LazyFrame) -> bool:
    """True if the LazyFrame's query scans anything but in-memory frames (a file, a dataset)."""
    try:
        text = lf.explain(optimized=False)
    except Exception:  # noqa: BLE001 - cannot tell: treat as reading files
        return True
    return re.search(r"\bSCAN\b", text) is not None


def _detect_file_scan(lf: pl.LazyFrame) -> dict[str, Any] | None:
    """The origin of a LazyFrame that is exactly ``pl.scan_<kind>(paths)`` with default options, else None."""
    text = lf.explain(optimized=False)
    if len(re.findall(r"\bSCAN\b", text)) != 1 or "DF [" in text:
        return None
    tree = _lazy_json(lf)
    scan = tree.get("Scan") if isinstance(tree, dict) and len(tree) == 1 else None
    paths = (scan.get("sources") or {}).get("Paths") if isinstance(scan, dict) else None
    if not isinstance(paths, list) or not paths:
        return None
    names = [p.get("inner") if isinstance(p, dict) else p for p in paths]
    if not all(isinstance(n, str) for n in names):
        return None
    path: Any = names[0] if len(names) == 1 else names
    for kind in FILE_KINDS:
        try:
            again = _lazy_json(getattr(pl, f"scan_{kind}")(path))
        except Exception:  # noqa: BLE001 - not that kind
            continue
        if again == tree:
            return {"kind": kind, "path": path, "options": {}}
    return None


# =========================================================================== reading


def plan_from_dict(data: Any, *, import_models: bool = False, base_dir: str | os.PathLike | None = None) -> Node:
    """The plan a plan file's content describes (see :func:`plan_to_dict`).

    ``base_dir``: where relative file paths are resolved (None: the current directory).
    ``import_models``: allow importing the modules of pydantic models named by extract steps.
    """
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise PlanError(f"deserialize: not a semframe plan file (its \"format\" should be {FORMAT!r})")
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise PlanError(f"deserialize: the plan file has no valid version ({version!r})")
    if version > VERSION:
        raise PlanError(f"deserialize: the plan file is format version {version}, written by semframe "
                        f"{data.get('semframe', '?')}; this semframe reads versions up to {VERSION}: upgrade semframe")
    reader = _Reader(import_models, base_dir, str(data.get("polars", "?")))
    return reader.node(data.get("plan"), "plan")


def loads(text: str | bytes, *, import_models: bool = False, base_dir: str | os.PathLike | None = None) -> Node:
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PlanError(f"deserialize: the plan file is not valid JSON ({exc})") from None
    return plan_from_dict(data, import_models=import_models, base_dir=base_dir)


class _Reader:
    def __init__(self, import_models: bool, base_dir: str | os.PathLike | None, polars_version: str):
        self.import_models = import_models
        self.base_dir = None if base_dir is None else os.fspath(base_dir)
        self.polars_version = polars_version

    def _obj(self, value: Any, where: str, keys: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise PlanError(f"deserialize: {where} should be a JSON object, got {type(value).__name__}")
        missing = [k for k in keys if k not in value]
        if missing:
            raise PlanError(f"deserialize: {where} has no {missing[0]!r}")
        extra = sorted(set(value) - set(keys) - set(optional))
        if extra:
            raise PlanError(f"deserialize: {where} has unknown key(s) {extra} (written by a newer semframe?)")
        return value

    # ------------------------------------------------------------------ nodes

    def node(self, value: Any, where: str) -> Node:
        if not isinstance(value, dict) or not isinstance(value.get("op"), str):
            raise PlanError(f"deserialize: {where} should be a step (a JSON object with an \"op\")")
        op = value["op"]
        where = f"{where} ({op})"
        if op == "scan":
            obj = self._obj(value, where, ("op", "source"), ("columns_read",))
            cols = obj.get("columns_read")
            source = self.source(obj["source"], where)
            return Scan(source, None if cols is None else tuple(self._strings(cols, f"{where} columns_read")))
        if op == "polars":
            obj = self._obj(value, where, ("op", "inputs", "calls"))
            if not isinstance(obj["inputs"], list) or not isinstance(obj["calls"], list):
                raise PlanError(f"deserialize: {where}: inputs and calls should be lists")
            inputs = tuple(self.node(n, f"{where} input {i}") for i, n in enumerate(obj["inputs"]))
            calls = tuple(self.call(c, k, f"{where} call {k}", len(inputs)) for k, c in enumerate(obj["calls"]))
            return PolarsCall(inputs, calls)
        if op in _SEMANTIC:
            return self.semantic(op, value, where)
        if op in _operators():
            return self.operator(op, value, where)
        cls = _RELATIONAL.get(op)
        if cls is None:
            raise PlanError(f"deserialize: {where}: unknown step {op!r}")
        fields = {"filter": ("predicate",), "select": ("exprs",), "with_columns": ("exprs",), "head": ("n",),
                  "sort": ("by", "descending", "nulls_last"), "drop": ("names",), "rename": ("mapping",)}[op]
        obj = self._obj(value, where, ("op", "input", *fields))
        child = self.node(obj["input"], f"{where} input")
        if op == "filter":
            return Filter(child, self.expr(obj["predicate"], where))
        if op in ("select", "with_columns"):
            return cls(child, tuple(self.expr(e, where) for e in self._list(obj["exprs"], where)))
        if op == "head":
            return Head(child, obj["n"])
        if op == "sort":
            return Sort(child, tuple(self.expr(e, where) for e in self._list(obj["by"], where)),
                        tuple(bool(d) for d in self._list(obj["descending"], where)), bool(obj["nulls_last"]))
        if op == "drop":
            return Drop(child, tuple(self._strings(obj["names"], where)))
        pairs = self._list(obj["mapping"], where)
        if not all(isinstance(p, list) and len(p) == 2 and all(isinstance(s, str) for s in p) for p in pairs):
            raise PlanError(f"deserialize: {where}: mapping should be [old, new] pairs of names")
        return Rename(child, tuple((a, b) for a, b in pairs))

    def semantic(self, op: str, value: dict[str, Any], where: str) -> Node:
        cls = _SEMANTIC[op]
        if isinstance(value, dict) and "approx" in value:
            if op not in _APPROX:
                raise PlanError(f"deserialize: {where}: only classify and filter steps can be approximate")
            cls = _APPROX[op]
        names = [f.name for f in dataclasses.fields(cls) if f.init and f.name != "child"]
        obj = self._obj(value, where, ("op", "input", "template", "spec"), (*names, "template_parts"))
        child = self.node(obj["input"], f"{where} input")
        kwargs: dict[str, Any] = {}
        for name in names:
            if name not in obj:
                continue
            raw = obj[name]
            if name == "template":
                kwargs[name] = _template_from(raw, obj.get("template_parts"), where)
            elif name == "spec":
                kwargs[name] = self.spec(raw, where)
            elif name == "approx":
                kwargs[name] = self.target(raw, where)
            elif name == "semantic_cache" and isinstance(raw, dict):
                obj2 = self._obj(raw, f"{where} semantic_cache", ("calibrated",), ("calibrated",))
                kwargs[name] = CalibratedThreshold(self.target(obj2["calibrated"], f"{where} semantic_cache"))
            elif name == "proxy" and isinstance(raw, list):
                kwargs[name] = tuple(self._scalar(v, f"{where} proxy") for v in raw)
            else:
                kwargs[name] = self._scalar(raw, f"{where} {name}")
        return cls(child=child, **kwargs)

    def target(self, value: Any, where: str) -> Target:
        names = tuple(f.name for f in dataclasses.fields(Target))
        obj = self._obj(value, f"{where} approx", (), names)
        return Target(**{k: self._scalar(v, f"{where} approx {k}") for k, v in obj.items()})

    def operator(self, op: str, value: dict[str, Any], where: str) -> Node:
        cls = _operators()[op]
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        obj = self._obj(value, where, ("op",), tuple(names))
        kwargs = {name: self.operand(obj[name], f"{where} {name}") for name in names if name in obj}
        try:
            return cls(**kwargs)
        except TypeError as exc:  # a field missing from the file
            raise PlanError(f"deserialize: {where}: {exc}") from None

    def operand(self, value: Any, where: str) -> Any:
        if isinstance(value, dict):
            if "op" in value:
                return self.node(value, where)
            if set(value) in ({"template"}, {"template", "parts"}):
                return _template_from(value["template"], value.get("parts"), where)
            if set(value) == {"spec"}:
                return self.spec(value["spec"], where)
            if set(value) == {"expr"}:
                return self.expr(value["expr"], where)
            if set(value) == {"tuple"} and isinstance(value["tuple"], list):
                return tuple(self.operand(v, where) for v in value["tuple"])
            if set(value) == {"target"}:
                return self.target(value["target"], where)
            raise PlanError(f"deserialize: {where}: unexpected object with keys {sorted(value)}")
        if isinstance(value, list):
            return tuple(self.operand(v, where) for v in value)
        return self._scalar(value, where)

    def call(self, value: Any, k: int, where: str, n_inputs: int) -> Call:
        obj = self._obj(value, where, ("method", "args", "kwargs"))
        name = obj["method"]
        if not isinstance(name, str) or not _allowed_method(name, first=k == 0):
            raise PlanError(f"deserialize: {where}: {name!r} is not a polars method a plan may call")
        if not isinstance(obj["args"], list) or not isinstance(obj["kwargs"], dict):
            raise PlanError(f"deserialize: {where}: args should be a list and kwargs an object")
        args = tuple(self.value(a, where, n_inputs) for a in obj["args"])
        kwargs = tuple((key, self.value(v, where, n_inputs)) for key, v in obj["kwargs"].items())
        return Call(name, args, kwargs)

    # ------------------------------------------------------------------ sources

    def source(self, value: Any, where: str) -> Source:
        if not isinstance(value, dict):
            raise PlanError(f"deserialize: {where}: source should be a JSON object")
        kind = value.get("kind")
        if kind == "arrow_ipc":
            obj = self._obj(value, f"{where} source", ("kind", "data"), ("rows", "description"))
            try:
                frame = pl.read_ipc(io.BytesIO(base64.b64decode(obj["data"], validate=True)))
            except Exception as exc:  # noqa: BLE001 - a broken file, reworded
                raise PlanError(f"deserialize: {where}: the embedded data cannot be read ({exc})") from None
            description = obj.get("description")
            return Source.from_data(frame, description if isinstance(description, str) else None)
        if kind not in FILE_KINDS:
            raise PlanError(f"deserialize: {where}: unknown source kind {kind!r} "
                            f"(one of {', '.join(FILE_KINDS)}, arrow_ipc)")
        obj = self._obj(value, f"{where} source", ("kind", "path"), ("options",))
        path = obj["path"]
        paths = [path] if isinstance(path, str) else path
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
            raise PlanError(f"deserialize: {where}: path should be a string or a list of strings")
        paths = [self._resolve(p) for p in paths]
        options = obj.get("options") or {}
        if not isinstance(options, dict):
            raise PlanError(f"deserialize: {where}: options should be a JSON object")
        opts = {k: thaw(self.value(v, where, 0), ()) for k, v in options.items()}
        return Source.from_file(kind, paths[0] if isinstance(path, str) else paths, **opts)

    def _resolve(self, path: str) -> str:
        if self.base_dir is None or "://" in path or os.path.isabs(os.path.expanduser(path)):
            return path
        return os.path.join(self.base_dir, path)

    # ------------------------------------------------------------------ values

    def expr(self, value: Any, where: str) -> PlExpr:
        if not isinstance(value, dict) or set(value) != {"polars_expr"}:
            raise PlanError(f"deserialize: {where}: an expression should be {{\"polars_expr\": ...}}")
        tree = value["polars_expr"]
        bad = _unsafe(tree)
        if bad:
            raise PlanError(f"deserialize: {where}: the expression holds Python code ({bad}); semframe never loads "
                            "code from a plan file")
        try:
            return PlExpr(pl.Expr.deserialize(io.StringIO(json.dumps(tree)), format="json"))
        except (Exception, pl.exceptions.PanicException) as exc:  # noqa: BLE001 - polars' own failure, reworded
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PlanError(f"deserialize: {where}: polars {pl.__version__} cannot read an expression written with "
                            f"polars {self.polars_version} ({first})") from None

    def value(self, value: Any, where: str, n_inputs: int) -> Any:
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, list):
            raise PlanError(f"deserialize: {where}: a bare list (write {{\"list\": [...]}})")
        if not isinstance(value, dict) or len(value) != 1:
            raise PlanError(f"deserialize: {where}: an argument should be a JSON scalar or a one-key object")
        (tag, inner), = value.items()
        if tag == "polars_expr":
            return self.expr(value, where)
        if tag == "input":
            if not isinstance(inner, int) or isinstance(inner, bool) or not 0 <= inner < max(n_inputs, 1):
                raise PlanError(f"deserialize: {where}: input {inner!r} is not one of the step's inputs")
            return InputRef(inner)
        if tag in ("list", "tuple"):
            items = tuple(self.value(v, where, n_inputs) for v in self._list(inner, where))
            return FrozenList(items) if tag == "list" else items
        if tag == "dict":
            pairs = self._list(inner, where)
            if not all(isinstance(p, list) and len(p) == 2 for p in pairs):
                raise PlanError(f"deserialize: {where}: a dict should be a list of [key, value] pairs")
            return FrozenDict(sorted(((self.value(k, where, n_inputs), self.value(v, where, n_inputs))
                                      for k, v in pairs), key=lambda kv: repr(kv[0])))
        if tag == "dtype":
            return dtype_from_json(inner, where)
        if tag == "float" and inner in ("nan", "inf", "-inf"):
            return float(inner)
        raise PlanError(f"deserialize: {where}: unknown argument tag {tag!r}")

    def spec(self, value: Any, where: str) -> OutputSpec:
        kind = value.get("kind") if isinstance(value, dict) else None
        if kind == "choice":
            obj = self._obj(value, f"{where} spec", ("kind", "labels"))
            return ChoiceSpec(tuple(self._list(obj["labels"], where)))
        if kind == "text":
            self._obj(value, f"{where} spec", ("kind",))
            return TextSpec()
        if kind == "json":
            obj = self._obj(value, f"{where} spec", ("kind", "fields"), ("model", "model_key", "attrs"))
            fields = tuple((n, self.field(ft, where)) for n, ft in self._pairs(obj["fields"], where))
            if "model" not in obj:
                return JsonSpec(fields)
            model = self.model(obj["model"], obj.get("model_key"), where)
            return JsonSpec(fields, model_key=obj.get("model_key"), attrs=tuple(obj.get("attrs") or ()) or None,
                            model=model)
        raise PlanError(f"deserialize: {where}: unknown output spec {kind!r} (one of choice, text, json)")

    def field(self, value: Any, where: str) -> FieldType:
        obj = self._obj(value, f"{where} schema field", ("kind",), (*_FIELD_DEFAULTS, "model"))
        kwargs: dict[str, Any] = {}
        for name, raw in obj.items():
            if name == "item":
                kwargs[name] = self.field(raw, where)
            elif name == "fields":
                kwargs[name] = tuple((n, self.field(ft, where)) for n, ft in self._pairs(raw, where))
            elif name in ("values", "attrs"):
                kwargs[name] = tuple(self._list(raw, where))
            elif name == "model":
                kwargs[name] = self.model(raw, obj.get("model_key"), where)
            else:
                kwargs[name] = self._scalar(raw, f"{where} schema field {name}")
        return FieldType(**kwargs)

    def model(self, ref: Any, key: Any, where: str) -> Any:
        if not isinstance(ref, str) or ":" not in ref:
            raise PlanError(f"deserialize: {where}: a model should be named 'module:QualName', got {ref!r}")
        if not self.import_models:
            raise PlanError(f"deserialize: {where}: the extract schema uses the pydantic model {ref}; loading it imports "
                            "that module (code). Pass import_models=True (semframe run --import-models) if you trust "
                            "the plan, or save the plan with a dict schema")
        import importlib

        module_name, _, qualname = ref.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
            for part in qualname.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            raise PlanError(f"deserialize: {where}: cannot import the model {ref} ({exc})") from None
        from semframe.plan.spec import _model_key

        try:
            current = _model_key(obj)
        except Exception as exc:  # noqa: BLE001 - not a pydantic model
            raise PlanError(f"deserialize: {where}: {ref} is not a pydantic model ({exc})") from None
        if key is not None and current != key:
            raise PlanError(f"deserialize: {where}: the model {ref} has changed since the plan was saved "
                            "(its fields or types differ); save the plan again")
        return obj

    # ------------------------------------------------------------------ shapes

    def _list(self, value: Any, where: str) -> list[Any]:
        if not isinstance(value, list):
            raise PlanError(f"deserialize: {where}: expected a list, got {type(value).__name__}")
        return value

    def _strings(self, value: Any, where: str) -> list[str]:
        items = self._list(value, where)
        if not all(isinstance(s, str) for s in items):
            raise PlanError(f"deserialize: {where}: expected a list of strings")
        return items

    def _pairs(self, value: Any, where: str) -> list[tuple[str, Any]]:
        items = self._list(value, where)
        if not all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) for p in items):
            raise PlanError(f"deserialize: {where}: expected [name, value] pairs")
        return [(p[0], p[1]) for p in items]

    def _scalar(self, value: Any, where: str) -> Any:
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise PlanError(f"deserialize: {where}: expected a JSON scalar, got {type(value).__name__}")


def dtype_from_json(value: Any, where: str) -> pl.DataType:
    if not isinstance(value, dict) or value.get("name") not in _DTYPES:
        raise PlanError(f"deserialize: {where}: unknown data type {value!r}")
    name = value["name"]
    cls = getattr(pl, name)
    if name == "List":
        return pl.List(dtype_from_json(value.get("inner"), where))
    if name == "Array":
        return pl.Array(dtype_from_json(value.get("inner"), where), shape=tuple(value.get("shape") or ()))
    if name == "Struct":
        return pl.Struct([pl.Field(n, dtype_from_json(d, where)) for n, d in value.get("fields") or ()])
    if name == "Datetime":
        return pl.Datetime(value.get("time_unit", "us"), value.get("time_zone"))
    if name == "Duration":
        return pl.Duration(value.get("time_unit", "us"))
    if name == "Decimal":
        return pl.Decimal(value.get("precision"), value.get("scale", 0))
    if name == "Enum":
        return pl.Enum(list(value.get("categories") or ()))
    return cls()


def _allowed_method(name: str, *, first: bool) -> bool:
    """A public, side-effect-free method of pl.LazyFrame (first call) or of what a call returns."""
    if not name.isidentifier() or name.startswith("_") or name.startswith(_FORBIDDEN_PREFIXES):
        return False
    owners: list[Any] = [pl.LazyFrame]
    if not first:
        from polars.lazyframe.group_by import LazyGroupBy

        owners.append(LazyGroupBy)
    return any(callable(getattr(owner, name, None)) for owner in owners)


# =========================================================================== safety


def _unsafe(tree: Any) -> str | None:
    """What in polars' JSON stands for Python code (a UDF key, pickled bytes), else None."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(key, str) and _UNSAFE_KEY.search(key):
                    return key
                stack.append(value)
        elif isinstance(node, list):
            if len(node) >= 4 and all(isinstance(v, int) and not isinstance(v, bool) for v in node[:8]):
                head = bytes(v & 0xFF for v in node[:6])
                if head.startswith(b"PLPY") or (node[0] == 0x80 and 2 <= node[1] <= 5):
                    return "pickled Python data"
            else:
                stack.extend(node)
    return None


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
