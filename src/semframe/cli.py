"""The ``semframe`` command line (also ``python -m semframe``): one pipeline step per call.

::

    semframe classify INPUT --column title --labels YES,NO --instruction "..." -o OUTPUT
    semframe filter   INPUT --question "Is {title} about a war?" -o OUTPUT
    semframe extract  INPUT --column title --schema schema.json -o OUTPUT
    semframe map      INPUT --template "Summarize {title}." --name gist -o OUTPUT
    semframe run      PLAN [--input INPUT] -o OUTPUT
    semframe explain  PLAN | VERB ...
    semframe cache    stats | clear

Inputs and outputs are Parquet, CSV, NDJSON or Arrow IPC by extension (``-`` is stdin/stdout,
with ``--format``/``--input-format``); rows stream through in batches, so memory stays flat. Exit
codes: 0 done; 1 any other failure (the engine, I/O); 2 a usage or plan error, before any engine
call; 3 stopped by a budget (the rows done are in ``OUTPUT.partial``); 4 more failed rows than
``--max-failed-rows`` (the output is written). Logs go to stderr (``--log-format json`` for log
collectors), progress only to a terminal, and nothing but data to stdout when the output is
``-``. Everything is described in ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_BUDGET = 3
EXIT_FAILED_ROWS = 4

VERBS = ("classify", "filter", "extract", "map")
FORMATS = ("parquet", "csv", "ndjson", "ipc")
_EXTENSIONS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "csv", ".ndjson": "ndjson",
               ".jsonl": "ndjson", ".arrow": "ipc", ".ipc": "ipc", ".feather": "ipc"}
#: Where ``--metrics`` files say which format they follow.
METRICS_FORMAT = "semframe.metrics"

logger = logging.getLogger("semframe.cli")


class UsageError(Exception):
    """A command line that cannot work (exit code 2)."""


# =========================================================================== the parser


def build_parser() -> argparse.ArgumentParser:
    from semframe import __version__

    parser = argparse.ArgumentParser(
        prog="semframe", description="Run semantic DataFrame steps (classify, filter, extract, map) over files.",
        epilog="Exit codes: 0 done, 1 failure, 2 usage or plan error, 3 stopped by a budget (partial output in "
               "OUTPUT.partial), 4 too many failed rows. See docs/cli.md.")
    parser.add_argument("--version", action="version", version=f"semframe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for verb in VERBS:
        p = sub.add_parser(verb, help=_VERB_HELP[verb], description=_VERB_HELP[verb])
        _verb_arguments(p, verb)
        _output_arguments(p)
        _run_arguments(p)
        p.set_defaults(handler=_cmd_verb)
    p = sub.add_parser("run", help="run a saved plan file", description="Run a plan file (plan.serialize()).")
    p.add_argument("plan", metavar="PLAN", help="the plan file (JSON)")
    p.add_argument("--input", metavar="PATH",
                   help="read this file instead of the one the plan's (single) file scan names")
    p.add_argument("--import-models", action="store_true",
                   help="allow importing the pydantic models the plan's extract steps name (runs their module)")
    _output_arguments(p)
    _run_arguments(p)
    p.set_defaults(handler=_cmd_run)
    p = sub.add_parser("explain", help="print the plan and its estimate, run nothing",
                       description="Print the physical plan and its estimate (engine calls, tokens, cost) of a "
                                   "plan file or of a verb's command line, without running it: "
                                   "semframe explain PLAN, or semframe explain classify INPUT --column ...")
    p.add_argument("target", metavar="PLAN|VERB", help="a plan file, or classify/filter/extract/map")
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(handler=_cmd_explain)
    p = sub.add_parser("cache", help="the persistent answer cache: stats or clear",
                       description="Show what the exact cache holds, or delete it.")
    p.add_argument("action", choices=("stats", "clear"))
    p.add_argument("--json", action="store_true", help="stats as one JSON object")
    p.add_argument("--cache-dir", metavar="DIR", help="the cache directory (default $SEMFRAME_CACHE_DIR or "
                                                      "~/.cache/semframe)")
    _log_arguments(p)
    p.set_defaults(handler=_cmd_cache)
    return parser


_VERB_HELP = {
    "classify": "label each row with one of --labels",
    "filter": "keep the rows the model answers YES to --question for",
    "extract": "extract typed fields (--schema) into a struct column",
    "map": "free text for each row from --template",
}


def _verb_arguments(p: argparse.ArgumentParser, verb: str) -> None:
    p.add_argument("input", metavar="INPUT", help="Parquet, CSV, NDJSON or Arrow IPC file; - for stdin")
    if verb in ("classify", "extract"):
        p.add_argument("-c", "--column", required=True, help="the column (or a template such as '{title}: {body}')")
    if verb == "classify":
        p.add_argument("--labels", required=True,
                       help="the labels, comma-separated (YES,NO) or a JSON list ('[\"a, b\", \"c\"]')")
    if verb == "filter":
        p.add_argument("-q", "--question", required=True, help="a template such as 'Is {title} about a war?'")
    if verb == "extract":
        p.add_argument("--schema", required=True,
                       help="a JSON schema file (short form {\"year\": \"int\"} or JSON Schema), inline JSON, or "
                            "module:Model (a pydantic model; imports that module)")
    if verb == "map":
        p.add_argument("-t", "--template", required=True, help="a template such as 'Summarize {title}.'")
    p.add_argument("--instruction", help="the task, shared by every row")
    if verb != "filter":
        p.add_argument("--name", default=verb, help=f"the output column (default {verb})")
    p.add_argument("--max-answer-tokens", type=int, metavar="N", help="the most tokens per answer")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default 0: greedy)")
    p.add_argument("--semantic-cache", nargs="?", const=True, default=None, type=_threshold, metavar="THRESHOLD",
                   help="reuse answers of near-duplicate texts: bare, above a threshold calibrated for "
                        "the step (none certified: nothing reused); THRESHOLD: a fixed similarity")
    p.add_argument("--save-plan", metavar="PATH", help="write the step as a plan file and stop (run it later "
                                                       "with semframe run PATH)")


def _output_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", default="-", metavar="OUTPUT",
                   help="the output file, by extension (.parquet .csv .ndjson/.jsonl .arrow); - for stdout (default)")
    p.add_argument("--format", choices=FORMATS, help="the output format (for - or an unknown extension)")
    p.add_argument("--input-format", choices=FORMATS, help="the input format (for - or an unknown extension)")


def _run_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("running")
    g.add_argument("--engine", default=os.environ.get("SEMFRAME_ENGINE") or None, metavar="NAME",
                   help="an engine name (deterministic for dry runs, vllm, one registered with sf.configure), a "
                        "model folder, or a URL (default $SEMFRAME_ENGINE, else the configured engine)")
    g.add_argument("--max-cost", type=float, metavar="USD", help="stop before the run would cost more")
    g.add_argument("--max-tokens", type=int, metavar="N", help="stop before the run would use more engine tokens")
    g.add_argument("--max-failed-rows", type=int, metavar="N",
                   help="exit 4 if more than N rows get no answer because the engine or the answer failed")
    g.add_argument("--lineage", metavar="PATH", help="write the run's lineage here (.parquet .csv .ndjson)")
    g.add_argument("--lineage-prompts", action="store_true", help="add each cell's full prompt to the lineage")
    g.add_argument("--metrics", metavar="PATH", help="write the run's metrics here (JSON)")
    g.add_argument("--batch-size", type=int, metavar="N", help="rows per engine batch")
    g.add_argument("--no-cache", action="store_true", help="do not use the persistent exact cache")
    g.add_argument("--cache-dir", metavar="DIR", help="the cache directory")
    g.add_argument("--on-error", choices=("null", "raise"), help="null (default): a failed answer is a null; "
                                                                 "raise: stop at the first engine failure")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show progress on stderr (default: only in a terminal)")
    _log_arguments(p)


def _log_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("logging")
    g.add_argument("--log-format", choices=("text", "json"), default="text", help="logs on stderr as text or "
                                                                                   "JSON lines")
    g.add_argument("--log-level", default="INFO", type=str.upper,
                   choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="default INFO")
    g.add_argument("--quiet", action="store_true", help="only warnings and errors (same as --log-level WARNING)")


def _threshold(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"a similarity threshold is in (0, 1], got {text}")
    return value


# =========================================================================== entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (the console script exits with it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help, --version (0) or a usage error (2)
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_USAGE
    restore = _setup_logging(args)
    try:
        return _dispatch(args)
    finally:
        restore()


def _dispatch(args: argparse.Namespace) -> int:
    if getattr(args, "cache_dir", None):
        import semframe as sf

        sf.configure(cache_dir=args.cache_dir)
    from semframe.errors import PlanError

    try:
        return args.handler(args)
    except (UsageError, PlanError) as exc:
        logger.error("%s", exc, extra={"semframe": {"event": "usage_error", "exit_code": EXIT_USAGE}})
        _failure_metrics(args, EXIT_USAGE, "plan_error", exc)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        logger.error("interrupted")
        _failure_metrics(args, 130, "interrupted", exc)
        return 130
    except Exception as exc:  # noqa: BLE001 - a failure: logged with its type, exit code 1
        logger.error("%s: %s", type(exc).__name__, exc, extra={"semframe": {"event": "error", "exit_code": EXIT_ERROR}})
        logger.debug("traceback", exc_info=True)
        _failure_metrics(args, EXIT_ERROR, "error", exc)
        return EXIT_ERROR


def _failure_metrics(args: argparse.Namespace, code: int, status: str, exc: BaseException) -> None:
    """A step that failed before it ran still leaves its --metrics file (never a stale one)."""
    path = getattr(args, "metrics", None)
    if not path:
        return
    report = _metrics_report(None, status, code, exc, getattr(args, "output", "-"), None, None, 0, 0)
    with contextlib.suppress(OSError):
        Path(path).expanduser().write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")


# =========================================================================== logging


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the record's ``semframe`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        fields = getattr(record, "semframe", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def _setup_logging(args: argparse.Namespace) -> Any:
    """Send semframe's logs (and Python warnings) to stderr; returns what undoes it."""
    root = logging.getLogger("semframe")
    handler = logging.StreamHandler(sys.stderr)
    if getattr(args, "log_format", "text") == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved = (root.level, root.propagate)
    root.addHandler(handler)
    root.setLevel("WARNING" if getattr(args, "quiet", False) else getattr(args, "log_level", "INFO"))
    root.propagate = False
    py_warnings = logging.getLogger("py.warnings")
    py_warnings.addHandler(handler)
    logging.captureWarnings(True)

    def restore() -> None:
        logging.captureWarnings(False)
        py_warnings.removeHandler(handler)
        root.removeHandler(handler)
        root.setLevel(saved[0])
        root.propagate = saved[1]

    return restore


# =========================================================================== inputs


def file_format(path: str, given: str | None, role: str) -> str:
    if given:
        return given
    suffix = Path(path).suffix.lower()
    kind = _EXTENSIONS.get(suffix)
    if kind is None:
        raise UsageError(f"cannot tell the format of the {role} {path!r} from its extension; name it .parquet, .csv, "
                         f".ndjson or .arrow, or give --{'input-' if role == 'input' else ''}format")
    return kind


def _sniff(head: bytes) -> str:
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"ARROW1") or head.startswith(b"\xff\xff\xff\xff"):
        return "ipc"
    if head.lstrip()[:1] in (b"{", b"["):
        return "ndjson"
    return "csv"


@contextlib.contextmanager
def open_input(path: str, given: str | None) -> Iterator[Any]:
    """A lazy plan over the input (a file, or stdin spooled to a temporary file: memory stays flat)."""
    import semframe as sf

    if path != "-":
        kind = file_format(path, given, "input")
        if not any(ch in path for ch in "*?[") and not Path(path).expanduser().exists():
            raise UsageError(f"the input {path!r} does not exist")
        options = {"separator": "\t"} if kind == "csv" and path.lower().endswith(".tsv") else {}
        yield getattr(sf, f"scan_{kind}")(path, **options), kind
        return
    with tempfile.TemporaryDirectory(prefix="semframe-stdin-") as tmp:
        spooled = Path(tmp) / "stdin"
        with open(spooled, "wb") as out:
            shutil.copyfileobj(sys.stdin.buffer, out, 1 << 20)
        with open(spooled, "rb") as f:
            head = f.read(16)
        if not head:
            raise UsageError("the input on stdin is empty")
        kind = given or _sniff(head)
        yield getattr(sf, f"scan_{kind}")(str(spooled)), kind


def _labels(text: str) -> list[str]:
    text = text.strip()
    if text.startswith("["):
        try:
            labels = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--labels is not a valid JSON list ({exc.msg})") from None
        if not isinstance(labels, list):
            raise UsageError("--labels must be a list")
        return labels
    return [label.strip() for label in text.split(",")]


def _schema(text: str) -> Any:
    """--schema: a file, inline JSON, or module:Model."""
    from semframe.frontends.schemas import spec_from_json

    stripped = text.strip()
    if stripped.startswith("{"):
        return spec_from_json(stripped, "--schema")
    path = Path(text).expanduser()
    if path.is_file():
        return spec_from_json(path.read_text(encoding="utf-8"), f"--schema {text}")
    if ":" in text and not path.suffix:
        import importlib

        module_name, _, qualname = text.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
            for part in qualname.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            raise UsageError(f"--schema {text}: cannot import it ({exc})") from None
        return obj
    raise UsageError(f"--schema {text!r} is neither a file, inline JSON, nor module:Model")


def _verb_plan(args: argparse.Namespace, lf: Any) -> Any:
    verb = args.command
    step = {"instruction": args.instruction, "max_tokens": args.max_answer_tokens, "temperature": args.temperature,
            "semantic_cache": args.semantic_cache}
    if verb == "classify":
        return lf.semantic.classify(args.column, _labels(args.labels), name=args.name, **step)
    if verb == "filter":
        return lf.semantic.filter(args.question, **step)
    if verb == "extract":
        schema = _schema(args.schema)
        from semframe.plan.semantic import SemExtract
        from semframe.plan.spec import JsonSpec

        if isinstance(schema, JsonSpec):  # already a spec: build the node the verb would
            from semframe.frontends.lazy import SemLazyFrame
            from semframe.frontends.verbs import _semantic_cache, resolve_template

            plan = lf.plan
            node = SemExtract(plan, resolve_template(args.column, plan.columns, "semantic.extract"), args.instruction,
                              schema, args.name, args.max_answer_tokens, args.temperature,
                              semantic_cache=_semantic_cache(args.semantic_cache, "semantic.extract"))
            return SemLazyFrame(node)
        return lf.semantic.extract(args.column, schema, name=args.name, **step)
    return lf.semantic.map(args.template, name=args.name, **step)


def _plan_file(args: argparse.Namespace) -> Any:
    """The plan of ``semframe run/explain PLAN``, with ``--input`` replacing its file scan."""
    import semframe as sf
    from semframe.plan.serialize import plan_from_dict

    path = Path(args.plan).expanduser()
    if not path.is_file():
        raise UsageError(f"no plan file {args.plan!r}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"the plan file {args.plan!r} is not valid JSON ({exc})") from None
    new_input = getattr(args, "input", None)
    if new_input:
        scans = list(_file_scans(data.get("plan") if isinstance(data, dict) else None))
        if len(scans) != 1:
            raise UsageError(f"--input replaces the plan's file scan, but the plan has {len(scans)} file scans")
        kind = file_format(new_input, getattr(args, "input_format", None), "input")
        source = scans[0]
        if source.get("kind") != kind:
            source["options"] = {}
        source.update(kind=kind, path=new_input)
    return sf.SemLazyFrame(plan_from_dict(data, import_models=getattr(args, "import_models", False)))


def _file_scans(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if node.get("op") == "scan" and isinstance(node.get("source"), dict) and node["source"].get("kind") in FORMATS:
            yield node["source"]
        for key in ("input", "inputs"):
            child = node.get(key)
            for c in child if isinstance(child, list) else [child]:
                yield from _file_scans(c)


# =========================================================================== outputs


def _keeping(cls: type) -> type:
    """A sink class that, on failure, keeps its finished temporary file (for a partial output)."""

    class KeepingSink(cls):  # type: ignore[valid-type, misc]
        closed = False

        def close(self, ok: bool) -> None:
            if self.closed:
                return
            self.closed = True
            self._finish()
            if ok:
                os.replace(self.tmp, self.path)

    return KeepingSink


class StdoutSink:
    """Writes each batch to stdout as it comes (Parquet, Arrow IPC, CSV or NDJSON)."""

    def __init__(self, stream: Any, kind: str, schema: Any):
        import polars as pl

        self.stream = stream
        self.kind = kind
        self.rows = 0
        self._writer: Any = None
        self._arrow_schema = pl.DataFrame(schema=schema).to_arrow().schema
        if kind == "parquet":
            import pyarrow.parquet as pq

            self._writer = pq.ParquetWriter(stream, self._arrow_schema, compression="zstd")
        elif kind == "ipc":
            import pyarrow as pa

            self._writer = pa.ipc.new_file(stream, self._arrow_schema)
        elif kind == "csv":
            pl.DataFrame(schema=schema).write_csv(stream)
            stream.flush()

    def write(self, frame: Any) -> None:
        if self.kind in ("parquet", "ipc"):
            table = frame.to_arrow()
            if table.schema != self._arrow_schema:
                table = table.cast(self._arrow_schema)
            self._writer.write_table(table)
        elif self.kind == "csv":
            frame.write_csv(self.stream, include_header=False)
        else:
            frame.write_ndjson(self.stream)
        self.stream.flush()
        self.rows += frame.height

    def close(self, ok: bool) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        self.stream.flush()


@contextlib.contextmanager
def _data_stdout(active: bool) -> Iterator[Any]:
    """While the output is stdout, fd 1 points at stderr, so only the data reaches stdout (not a
    library's print, not even one from C code); the data goes to a copy of the original fd 1."""
    if not active:
        yield None
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    stream = os.fdopen(os.dup(saved), "wb", buffering=1 << 16)
    try:
        yield stream
    finally:
        try:
            stream.close()
        except BrokenPipeError:  # the reader went away (``| head``): reported by the caller
            with contextlib.suppress(OSError):
                os.close(stream.fileno())
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


# =========================================================================== running


def _cmd_verb(args: argparse.Namespace) -> int:
    with open_input(args.input, args.input_format) as (lf, in_kind):
        plan = _verb_plan(args, lf)
        if args.save_plan:
            if args.input == "-":
                raise UsageError("--save-plan needs an input file, not stdin (the plan names its input)")
            plan.serialize(args.save_plan)
            logger.info("saved the plan to %s (run it with: semframe run %s -o OUTPUT)", args.save_plan,
                        args.save_plan, extra={"semframe": {"event": "plan_saved", "path": args.save_plan}})
            return EXIT_OK
        return execute(plan, args, in_kind)


def _cmd_run(args: argparse.Namespace) -> int:
    plan = _plan_file(args)
    return execute(plan, args, None)


def _cmd_explain(args: argparse.Namespace) -> int:
    from semframe.engines.registry import check_engine, existing_engine

    verb = args.target in VERBS
    sub = argparse.ArgumentParser(prog=f"semframe explain {args.target if verb else 'PLAN'}")
    if verb:
        _verb_arguments(sub, args.target)
    else:
        sub.add_argument("--input")
        sub.add_argument("--import-models", action="store_true")
    sub.add_argument("--input-format", choices=FORMATS)
    sub.add_argument("--engine", default=os.environ.get("SEMFRAME_ENGINE") or None)
    sub.add_argument("--no-estimate", action="store_true")
    try:
        opts = sub.parse_args(args.rest)
    except SystemExit as exc:
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_USAGE

    def show(plan: Any) -> None:
        check_engine(opts.engine, "--engine")
        print(plan.explain(estimate=not opts.no_estimate, engine=existing_engine(opts.engine)))

    if verb:
        opts.command = args.target
        with open_input(opts.input, opts.input_format) as (lf, _):
            show(_verb_plan(opts, lf))
    else:
        opts.plan = args.target
        show(_plan_file(opts))
    return EXIT_OK


def execute(plan: Any, args: argparse.Namespace, in_kind: str | None) -> int:
    """Run ``plan`` into ``args.output``; write lineage and metrics; return the exit code."""
    from semframe.engines.registry import check_engine
    from semframe.errors import BudgetExceeded, PlanError, SemframeError
    from semframe.physical.executor import run_plan
    from semframe.physical.sinks import SINKS

    output = args.output
    to_stdout = output == "-"
    kind = (args.format or in_kind or "ndjson") if to_stdout else file_format(output, args.format, "output")
    if not to_stdout and not Path(output).expanduser().parent.exists():
        raise UsageError(f"the output folder {str(Path(output).expanduser().parent)!r} does not exist")
    for option, path in (("--lineage", args.lineage), ("--metrics", args.metrics)):
        if path and not Path(path).expanduser().parent.exists():
            raise UsageError(f"{option}: the folder {str(Path(path).expanduser().parent)!r} does not exist")
    if args.lineage:
        file_format(args.lineage, None, "lineage file")
    for name in ("max_failed_rows", "batch_size", "max_tokens"):
        value = getattr(args, name)
        if value is not None and value < 0:
            raise UsageError(f"--{name.replace('_', '-')} must not be negative, got {value}")
    check_engine(args.engine, "--engine")  # a name that cannot resolve is a usage error; nothing is made yet
    options = {"batch_size": args.batch_size, "cache": False if args.no_cache else None, "progress": args.progress,
               "on_error": args.on_error}
    partial = Path(str(Path(output).expanduser()) + ".partial") if not to_stdout else None
    result = None
    error: BaseException | None = None
    code = EXIT_OK
    with _data_stdout(to_stdout) as data:
        if to_stdout:
            sink: Any = StdoutSink(data, kind, plan.collect_schema())
        else:
            sink = _keeping(SINKS[f"sink_{kind}"])(output, plan.collect_schema())
        logger.info("running: %s -> %s", _describe_inputs(plan), output,
                    extra={"semframe": {"event": "run_started", "output": output}})
        try:
            result = run_plan(plan.plan, engine=args.engine, max_cost=args.max_cost, max_tokens=args.max_tokens,
                              sink=sink, **options)
        except BudgetExceeded as exc:
            error, result, code = exc, exc.result, EXIT_BUDGET
        except PlanError as exc:
            error, result, code = exc, exc.result, EXIT_USAGE
        except SemframeError as exc:
            error, result, code = exc, exc.result, EXIT_ERROR
        except Exception as exc:  # noqa: BLE001 - reported below with exit code 1
            error, code = exc, EXIT_ERROR
            result = getattr(exc, "result", None)
            if to_stdout and (isinstance(exc, BrokenPipeError) or "Broken pipe" in str(exc)):
                error = BrokenPipeError(f"stdout was closed after {sink.rows:,} rows (the reader stopped reading)")
        finally:
            with contextlib.suppress(Exception):
                sink.close(ok=False)  # a run that failed before its first batch never closed it
            if not to_stdout:
                tmp = Path(sink.tmp)
                if code == EXIT_BUDGET and tmp.exists():
                    os.replace(tmp, partial)  # type: ignore[arg-type]
                else:
                    tmp.unlink(missing_ok=True)
    if code == EXIT_OK and partial is not None:
        partial.unlink(missing_ok=True)  # a finished run replaces an earlier stop's rows
    failed = _failed_rows(result)
    if code == EXIT_OK and args.max_failed_rows is not None and failed > args.max_failed_rows:
        code = EXIT_FAILED_ROWS
    status = {EXIT_OK: "complete", EXIT_BUDGET: "stopped_by_budget", EXIT_FAILED_ROWS: "too_many_failed_rows",
              EXIT_USAGE: "plan_error"}.get(code, "error")
    written = None if result is None else result.rows_written
    if written is None and result is not None and code == EXIT_BUDGET:
        written = sink.rows
    output_path = None if to_stdout or code not in (EXIT_OK, EXIT_FAILED_ROWS) else output
    report = _metrics_report(result, status, code, error, output if not to_stdout else "-", output_path,
                             str(partial) if code == EXIT_BUDGET and partial is not None else None,
                             written if written is not None else sink.rows, failed)
    if args.lineage and result is not None:
        _write_lineage(result, args.lineage, args.lineage_prompts)
    if args.metrics:
        Path(args.metrics).expanduser().write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    _log_outcome(report, error)
    return code


def _describe_inputs(plan: Any) -> str:
    from semframe.plan.nodes import Scan, walk

    return ", ".join(n.source.description for n in walk(plan.plan) if isinstance(n, Scan)) or "no input"


def _failed_rows(result: Any) -> int:
    if result is None:
        return 0
    return int(sum(m.errors for m in result.step_metrics))


def _metrics_report(result: Any, status: str, code: int, error: BaseException | None, output: str,
                    output_path: str | None, partial: str | None, rows: int, failed: int) -> dict[str, Any]:
    from semframe import __version__

    report: dict[str, Any] = {
        "format": METRICS_FORMAT, "version": 1, "semframe": __version__, "status": status, "exit_code": code,
        "complete": code in (EXIT_OK, EXIT_FAILED_ROWS), "error": None if error is None else f"{type(error).__name__}: "
                                                                                              f"{error}",
        "output": output, "output_written": output_path, "partial_output": partial, "rows_written": rows,
        "failed_rows": failed,
    }
    if result is not None:
        # From the step metrics only: result.cost would load the whole lineage into memory.
        steps = result.step_metrics
        engine_seconds = sum(m.engine_seconds for m in steps)
        report.update(
            seconds=round(result.seconds, 6), engine_model=result.engine_model or None,
            engine_requests=result.engine_requests, prompt_tokens=sum(m.prompt_tokens for m in steps),
            output_tokens=sum(m.output_tokens for m in steps), engine_seconds=round(engine_seconds, 6),
            cost_usd=result.machine.cost(engine_seconds),
            answers_reused={"dedup": sum(m.dedup_hits for m in steps),
                            "exact_cache": sum(m.exact_cache_hits for m in steps),
                            "semantic_cache": sum(m.semantic_cache_hits for m in steps)},
            steps=result.metrics.to_dicts())
    return report


def _write_lineage(result: Any, path: str, with_prompts: bool) -> None:
    kind = file_format(path, None, "lineage file")
    lf = result.scan_lineage()
    if with_prompts:
        lf = lf.join(result.prompts.lazy(), on="request_key", how="left", maintain_order="left")
    target = Path(path).expanduser()
    if kind == "parquet":
        lf.sink_parquet(target)
    elif kind == "csv":
        lf.sink_csv(target)
    elif kind == "ndjson":
        lf.sink_ndjson(target)
    else:
        lf.sink_ipc(target)


def _log_outcome(report: dict[str, Any], error: BaseException | None) -> None:
    fields = {"event": "run_finished", **{k: v for k, v in report.items() if k not in ("steps", "format", "version")}}
    extra = {"semframe": fields}
    status = report["status"]
    rows = report["rows_written"]
    if status == "complete":
        logger.info("done: %s rows written to %s; %s engine requests, %s answers reused, $%.6f", f"{rows:,}",
                    report["output"], report.get("engine_requests", 0), sum((report.get("answers_reused") or {}).values()),
                    report.get("cost_usd") or 0.0, extra=extra)
    elif status == "stopped_by_budget":
        where = report["partial_output"] or "stdout"
        logger.warning("stopped by the budget: %s rows done are in %s (exit 3); rerun with a larger budget to go "
                       "on, answers given so far are cached: %s", f"{rows:,}", where, error, extra=extra)
    elif status == "too_many_failed_rows":
        logger.error("%s rows failed, more than --max-failed-rows; the output %s is written (exit 4)",
                     f"{report['failed_rows']:,}", report["output"], extra=extra)
    else:
        logger.error("%s", error, extra=extra)


# =========================================================================== the cache


def _cmd_cache(args: argparse.Namespace) -> int:
    from semframe import config
    from semframe.cache import answers_dir, clear_cache

    directory = answers_dir(config.cache_dir())
    if args.action == "clear":
        clear_cache(config.cache_dir())
        logger.info("cleared the cache in %s", directory, extra={"semframe": {"event": "cache_cleared",
                                                                            "path": str(directory)}})
        return EXIT_OK
    stats = cache_stats(directory)
    if args.json:
        print(json.dumps(stats, indent=1))
    else:
        print(f"cache directory: {stats['directory']}")
        print(f"database: {stats['database'] or '(none yet)'} ({_size(stats['bytes'])})")
        print(f"answers: {stats['answers']:,} exact, {stats['semantic']:,} semantic, {stats['embeddings']:,} embeddings")
        for row in stats["by_engine"]:
            name = f"{row['model']} " if row["model"] else ""
            print(f"  {name}engine {row['fingerprint'][:16]}: {row['answers']:,} answers")
    return EXIT_OK


def cache_stats(directory: Path) -> dict[str, Any]:
    """What the answer store under ``directory`` holds (without creating it)."""
    from semframe.cache.store import DB_NAME, AnswerStore

    db = directory / DB_NAME
    stats: dict[str, Any] = {"directory": str(directory), "database": str(db) if db.exists() else None,
                             "bytes": sum(p.stat().st_size for p in directory.glob(f"{DB_NAME}*")) if directory.exists()
                             else 0, "answers": 0, "semantic": 0, "embeddings": 0, "by_engine": []}
    if not db.exists():
        return stats
    store = AnswerStore(directory)
    try:
        counts = store.counts()
        stats.update(answers=counts.get("exact", 0), semantic=counts.get("semantic", 0),
                     embeddings=counts.get("embeddings", 0))
        rows = store.run(lambda con, _h: con.execute(
            "SELECT fingerprint, max(coalesce(model, '')), count(*) FROM exact GROUP BY 1 ORDER BY 3 DESC, 1").fetchall())
        stats["by_engine"] = [{"fingerprint": fp, "model": model or None, "answers": n} for fp, model, n in rows]
    finally:
        store.close()
    return stats


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"  # pragma: no cover
