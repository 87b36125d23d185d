"""Batch files: write what a run would still ask as an OpenAI Batch API file, load the answers back.

:func:`write_batch` (``plan.write_batch(path)``) walks the plan exactly as a run does -- the same
optimizer, planner, operators, in-run dedup and exact cache -- but with an answer resolver whose
engine is never called: every request that would reach the engine is written to ``path`` as one
line of an OpenAI Batch API input file (``custom_id`` = the request's cache key, ``body`` = the
chat-completions request the :class:`~semframe.engines.openai.OpenAIEngine` would send, with the
same structured-output fields). So what the file holds is exactly what a run would still send: not
the repeats, not what is cached.

:func:`read_batch_results` (``sf.read_batch_results(path)``) reads a batch *output* file (OpenAI's
format, which ``vllm run-batch`` writes too) and stores each answer in the exact cache under the
engine's fingerprint, after validating it like any engine answer (parsed against its request's
output spec; a bad one is reported and not stored). The next ``collect()`` then finds every answer
in the cache and makes no engine call.

The output file names requests only by ``custom_id``; their specs come from a record written with
the batch file, ``<cache dir>/batches/<digest>.jsonl`` (one JSON line per request: messages, output
spec, sampling settings, the engine's fingerprint and model). A request rebuilt from it must hash
to its ``custom_id``, else its answer is rejected.

A step whose prompts (or rows) depend on the answers of an earlier step that is itself in the file
cannot be written yet: the summary names it as waiting. Load the results, then call
``write_batch`` again for the next step. Operators that ask in several dependent rounds (anything
but the row-wise verbs) write their first round only, for the same reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semframe import config
from semframe.engines.base import Completion, Engine, Message, Request, finish
from semframe.engines.registry import resolve_engine
from semframe.errors import PlanError, SemframeError
from semframe.execution.context import RunContext, RunOptions
from semframe.execution.lineage import LineageRecorder
from semframe.execution.resolver import AnswerResolver, StepInfo
from semframe.physical.executor import prepare, uses_llm
from semframe.physical.semantic import RowOperator, SemanticOperator
from semframe.plan.nodes import Node, walk

logger = logging.getLogger("semframe")

#: The endpoint every line asks (OpenAI's Batch API and ``vllm run-batch``).
CHAT_URL = "/v1/chat/completions"
#: Sub-directory of the cache directory holding the request records of written batch files.
RECORDS_DIR = "batches"
_NOT_SENT = "not sent: written to a batch file"
#: The base URL of the stand-in OpenAIEngine that shapes requests for a non-HTTP engine.
_OFFLINE_URL = "http://batch.invalid/v1"


# -- summaries ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchWritten:
    """What :func:`write_batch` wrote.

    ``requests``: lines in the file (requests a run would still send); ``cached``: rows whose
    answer is already in the exact cache; ``repeats``: rows that ask a request another row asks
    (sent once); ``steps``: the steps whose requests are in the file; ``waiting``: later steps
    whose prompts need those answers first (write them after loading the results).
    """

    path: str
    requests: int
    cached: int
    repeats: int
    model: str | None
    steps: tuple[int, ...]
    waiting: tuple[int, ...]
    record: str | None
    note: str = ""

    def __str__(self) -> str:
        head = f"wrote {self.requests} request(s) to {self.path}"
        if self.model:
            head += f" (model {self.model})"
        parts = [head, f"{self.cached} row(s) already cached, {self.repeats} repeat(s) asked once"]
        if self.steps:
            parts.append("step(s) " + ", ".join(map(str, self.steps)))
        if self.waiting:
            parts.append("waiting: step(s) " + ", ".join(map(str, self.waiting)) + " need these answers first "
                         "(read_batch_results, then write_batch again)")
        if self.note:
            parts.append(self.note)
        return "; ".join(parts)


@dataclass(frozen=True)
class BatchResults:
    """What :func:`read_batch_results` loaded.

    ``stored``: answers now in the exact cache; ``rejected``: ``(custom_id, reason)`` for each line
    that was not stored (an error line, an answer that fails its spec, a request this cache
    directory has no record of, or one written for another engine); the tokens the batch used
    (its own ``usage``); ``cost_usd``: those tokens at the engine's per-token prices with the
    Batch API discount (None for an engine priced by the machine-hour).
    """

    path: str
    stored: int
    rejected: tuple[tuple[str, str], ...]
    prompt_tokens: int
    cached_prompt_tokens: int
    output_tokens: int
    cost_usd: float | None
    fingerprint: str

    def __str__(self) -> str:
        text = f"stored {self.stored} answer(s) from {self.path}; rejected {len(self.rejected)}"
        if self.rejected:
            text += " (first: " + ": ".join(self.rejected[0]) + ")"
        if self.cost_usd is not None:
            text += f"; batch cost ~${self.cost_usd:.4f}"
        return text


# -- writing --------------------------------------------------------------------------------------


@dataclass
class _Recorded:
    request: Request
    engine: Engine
    fingerprint: str
    step: int


class _RecordingResolver(AnswerResolver):
    """An answer resolver whose engine is never called: what would go to it is recorded instead
    (and answered with an error, which is never cached)."""

    def __init__(self, *args: Any, **kwargs: Any):
        AnswerResolver.__init__(self, *args, **kwargs)
        self.recorded: dict[str, _Recorded] = {}
        #: Per step: how many resolver calls sent it something; and the steps cut after one round.
        self.rounds: dict[int, int] = {}
        self.first_round_only: set[int] = set()
        self.cut: set[int] = set()

    def _ask_engine(self, step: StepInfo, batch: list[Request], cache_keys: list[str]) -> list[Completion]:
        if not batch:
            return []
        engine = self.engine_of(step)
        fp = self.fingerprint_of(step)
        rounds = self.rounds.get(step.index, 0)
        if step.index in self.first_round_only and rounds >= 1:
            self.cut.add(step.index)  # a later round may depend on the first one's answers
        else:
            for key, req in zip(cache_keys, batch):
                self.recorded.setdefault(key, _Recorded(req, engine, fp, step.index))
        self.rounds[step.index] = rounds + 1
        return [Completion(None, None, "error", error=_NOT_SENT) for _ in batch]

    def _resolve_semantic(self, step: StepInfo, order: list[str], pending: dict[str, list[int]],
                          keyed: dict[str, Request], texts: Sequence[str | None], ids: Sequence[int | None],
                          outcomes: list[Any]) -> None:
        # Near-duplicates reuse their representative's answer, which a batch file cannot give yet:
        # the representatives are written, the members wait (they are answered after loading).
        self.first_round_only.add(step.index)
        super()._resolve_semantic(step, order, pending, keyed, texts, ids, outcomes)


def write_batch(plan: Node, path: str | os.PathLike[str], engine: Any = None, **options: Any) -> BatchWritten:
    """Write the requests a run of ``plan`` would still send as an OpenAI Batch API input file.

    ``engine``: the run's engine (None: the configured one), whose fingerprint keys the exact
    cache and whose model names every line; it is never asked anything. ``options``: run options
    as for ``collect()`` (``batch_size``, ``dedupe``, ``prompt_layout``, ``cache`` ...) -- use the same
    ones for the run that reads the answers back, since they shape the requests.
    """
    opts = RunOptions.resolve(config.settings, **{**options, "progress": False, "lineage": False})
    plan, root = prepare(plan, opts)
    needs_default = any(uses_llm(n) and getattr(n, "engine", None) is None for n in walk(plan))
    eng = resolve_engine(engine) if needs_default else None
    exact_cache = None
    if opts.cache:
        from semframe.cache import open_exact_cache

        exact_cache = open_exact_cache(config.cache_dir())
    recorder = LineageRecorder(enabled=False)
    resolver = _RecordingResolver(eng, exact_cache=exact_cache, recorder=recorder, on_error="null",
                                  memo_size=opts.memo_size)
    ctx = RunContext(engine=eng, options=opts, resolver=resolver, recorder=recorder)
    operators = [op for op in root.walk() if isinstance(op, SemanticOperator)]
    resolver.first_round_only.update(op.index for op in operators if not isinstance(op, RowOperator))
    note = ""
    try:
        for _ in root.execute(ctx):
            pass
    except SemframeError:
        raise
    except Exception as exc:  # an operator that cannot go on with unanswered rows
        if not resolver.recorded:
            raise
        note = (f"the walk stopped early ({type(exc).__name__}: {exc}); what was reached is written: load its "
                "answers, then write_batch again")
    pending_steps = {r.step for r in resolver.recorded.values()}
    waiting = _waiting(operators, pending_steps | resolver.cut)
    chosen = [(key, r) for key, r in resolver.recorded.items() if r.step not in waiting]
    fingerprints = {r.fingerprint: r.engine for _, r in chosen}
    if len(fingerprints) > 1:
        models = ", ".join(sorted({e.model for e in fingerprints.values()}))
        raise PlanError(f"write_batch: the plan's steps are answered by {len(fingerprints)} engines ({models}); a "
                        "batch file holds one model's requests. Give the steps one engine, or write a plan per engine")
    cut = sorted(resolver.cut & pending_steps)
    if cut:
        note = (note + "; " if note else "") + (
            "step(s) " + ", ".join(map(str, cut)) + " ask in rounds that depend on earlier answers: their first "
            "round is written, the rest waits")
    metrics = {m.step: m for m in ctx.metrics}
    ready = [i for i in sorted(metrics) if i not in waiting]
    cached = sum(metrics[i].exact_cache_hits for i in ready)
    repeats = sum(metrics[i].dedup_hits for i in ready)
    target = Path(path).expanduser()
    model = None
    record_path = None
    lines: list[str] = []
    records: list[str] = []
    if chosen:
        first_engine = chosen[0][1].engine
        model = first_engine.model
        codec, mode = _codec(first_engine)
        try:
            for key, r in chosen:
                body = codec._body(r.request, r.request.messages, True)
                lines.append(json.dumps({"custom_id": key, "method": "POST", "url": CHAT_URL, "body": body},
                                        ensure_ascii=False))
                records.append(json.dumps({"custom_id": key, "fingerprint": r.fingerprint, "model": model,
                                           "structured": mode, "request": _request_json(r.request, key)},
                                          ensure_ascii=False))
        finally:
            if codec is not first_engine:
                codec.close()
        record_path = _write_record(records, chosen[0][1].fingerprint)
    _write_text(target, "".join(line + "\n" for line in lines))
    steps = tuple(sorted({r.step for _, r in chosen}))
    if not chosen and not waiting:
        note = (note + "; " if note else "") + "nothing to send: every answer is cached or repeated"
    summary = BatchWritten(str(target), len(lines), cached, repeats, model, steps, tuple(sorted(waiting)),
                           None if record_path is None else str(record_path), note)
    logger.info("write_batch: %s", summary)
    return summary


def _waiting(operators: list[SemanticOperator], unanswered: set[int]) -> set[int]:
    """The steps whose rows or prompts depend on answers not given yet (``unanswered`` steps,
    and, in turn, the steps found waiting), read from the plan nodes' properties: a step waits
    when a column its prompts read is written by an unanswered step, or the rows reaching it are
    chosen by one (a semantic filter, or a relational filter on such a column). Where the
    properties do not tell, it waits."""
    unresolved = set(unanswered)
    while True:
        waiting = set()
        for op in operators:
            try:
                needs = list(op.node.columns_needed(frozenset()))
            except Exception:  # noqa: BLE001 - a node that cannot say: assume it reads everything
                needs = [None] * len(op.inputs)
            if len(needs) != len(op.inputs):
                needs = [None] * len(op.inputs)
            if any(_depends(child, need, unresolved) for child, need in zip(op.inputs, needs)):
                waiting.add(op.index)
        if waiting <= unresolved:
            return waiting
        unresolved |= waiting


def _depends(op: Any, needed: frozenset[str] | None, unresolved: set[int]) -> bool:
    """Whether ``op``'s output columns ``needed`` (None: all) or its set of rows depend on the
    answers of an ``unresolved`` step."""
    from semframe.plan.nodes import union_needed

    node = op.node
    if isinstance(op, SemanticOperator) and op.index in unresolved:
        produced = node.produces
        if needed is None or produced is None or needed & produced or node.rows != "aligned":
            return True
    if not op.inputs:
        return False
    if len(node.children) != len(op.inputs):
        return any(isinstance(o, SemanticOperator) and o.index in unresolved for c in op.inputs for o in c.walk())
    try:
        needs = list(node.columns_needed(needed))
        if node.rows != "aligned":  # which rows pass depends on what the node itself reads
            needs = [union_needed(n, own) for n, own in zip(needs, node.columns_needed(frozenset()))]
    except Exception:  # noqa: BLE001 - a node that cannot say: everything
        needs = [None] * len(op.inputs)
    if len(needs) != len(op.inputs):
        needs = [None] * len(op.inputs)
    return any(_depends(child, need, unresolved) for child, need in zip(op.inputs, needs))


def _codec(engine: Engine) -> tuple[Any, str]:
    """The OpenAIEngine whose request-body and answer-reading code shapes ``engine``'s lines, and
    its structured-output mode: the engine itself where it is one, else an offline stand-in for
    its model in vLLM's dialect (``structured_outputs``, what ``vllm run-batch`` reads)."""
    from semframe.engines.openai import OpenAIEngine

    if isinstance(engine, OpenAIEngine):
        return engine, engine.structured
    return OpenAIEngine(_OFFLINE_URL, model=engine.model, api_key="", structured="vllm"), "vllm"


def _request_json(request: Request, key: str) -> dict[str, Any]:
    from semframe.plan.serialize import spec_to_json

    return {"messages": [[m.role, m.content] for m in request.messages],
            "spec": spec_to_json(request.spec, f"batch request {key}"),
            "max_tokens": request.max_tokens, "temperature": request.temperature, "top_p": request.top_p}


def _request_from_json(data: dict[str, Any]) -> Request:
    from semframe.plan.serialize import _Reader

    # The record is this cache directory's own file, written with the plan: a pydantic model it
    # names is the plan's own, imported as the plan did.
    spec = _Reader(import_models=True, base_dir=None, polars_version="").spec(data["spec"], "batch request")
    messages = tuple(Message(str(role), str(content)) for role, content in data["messages"])
    return Request(messages, spec, int(data["max_tokens"]), float(data["temperature"]), float(data["top_p"]))


def _records_dir() -> Path:
    return config.cache_dir() / RECORDS_DIR


def _write_record(lines: list[str], fingerprint: str) -> Path:
    digest = hashlib.sha256("\n".join([fingerprint, *lines]).encode("utf-8", "surrogatepass")).hexdigest()[:24]
    path = _records_dir() / f"{digest}.jsonl"
    _write_text(path, "".join(line + "\n" for line in lines))
    return path


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# -- reading --------------------------------------------------------------------------------------


@dataclass
class _Line:
    custom_id: str
    body: dict[str, Any] | None
    error: str | None


def _read_output(path: Path) -> list[_Line]:
    out: list[_Line] = []
    with path.open(encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except ValueError as exc:
                out.append(_Line(f"<line {n}>", None, f"not JSON ({exc})"))
                continue
            cid = obj.get("custom_id") if isinstance(obj, dict) else None
            if not isinstance(cid, str):
                out.append(_Line(f"<line {n}>", None, "no custom_id"))
                continue
            error = obj.get("error")
            response = obj.get("response") if isinstance(obj.get("response"), dict) else {}
            status = response.get("status_code")
            body = response.get("body")
            if error:
                msg = error.get("message") if isinstance(error, dict) else error
                out.append(_Line(cid, None, f"the batch reports an error: {str(msg)[:300]}"))
            elif status != 200 or not isinstance(body, dict):
                detail = body.get("error") if isinstance(body, dict) else body
                out.append(_Line(cid, None, f"HTTP {status} in the batch: {str(detail)[:300]}"))
            elif not isinstance(body.get("choices"), list) or not body["choices"]:
                out.append(_Line(cid, None, "the answer has no choices"))
            else:
                out.append(_Line(cid, body, None))
    return out


def _load_records(wanted: set[str]) -> dict[str, dict[str, Any]]:
    """The request records of ``wanted`` custom ids, from every batch written in this cache dir
    (the newest record of an id wins)."""
    found: dict[str, dict[str, Any]] = {}
    folder = _records_dir()
    if not folder.is_dir():
        return found
    for path in sorted(folder.glob("*.jsonl"), key=lambda p: p.stat().st_mtime):
        with path.open(encoding="utf-8") as f:
            for raw in f:
                try:
                    rec = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(rec, dict) and rec.get("custom_id") in wanted:
                    found[rec["custom_id"]] = rec
    return found


def read_batch_results(path: str | os.PathLike[str], engine: Any = None) -> BatchResults:
    """Load a batch output file's answers into the exact cache, for ``engine`` (None: the configured one).

    Each line is validated like any engine answer: parsed against its request's output spec (a
    choice must be one of its labels, JSON must fit its schema, an answer cut off at
    ``max_tokens`` is no answer); a line that fails, reports an error, or names a request this
    cache directory has no record of (or one written for an engine with another fingerprint) is
    rejected, reported in the summary, and not stored. The engine is never asked anything.
    """
    target = Path(path).expanduser()
    if not target.is_file():
        raise FileNotFoundError(f"read_batch_results: no batch output file at {target}")
    eng = resolve_engine(engine)
    fp = eng.fingerprint()
    lines = _read_output(target)
    records = _load_records({ln.custom_id for ln in lines})
    rejected: list[tuple[str, str]] = []
    items: list[tuple[str, Request, Completion]] = []
    codecs: dict[tuple[str, str], Any] = {}
    prompt = cached = output = 0
    seen: set[str] = set()
    try:
        for ln in lines:
            cid = ln.custom_id
            if cid in seen:
                rejected.append((cid, "a second answer for the same custom_id"))
                continue
            seen.add(cid)
            if ln.error is not None:
                rejected.append((cid, ln.error))
                continue
            rec = records.get(cid)
            if rec is None:
                rejected.append((cid, "no request with this custom_id was written by write_batch in this cache "
                                      f"directory ({config.cache_dir()})"))
                continue
            if rec.get("fingerprint") != fp:
                rejected.append((cid, f"written for another engine (model {rec.get('model')}, fingerprint "
                                      f"{str(rec.get('fingerprint'))[:12]}...), not {eng.model}: pass that engine"))
                continue
            try:
                request = _request_from_json(rec["request"])
            except Exception as exc:  # noqa: BLE001 - a record that no longer reads is one bad line
                rejected.append((cid, f"its request record cannot be read ({type(exc).__name__}: {exc})"))
                continue
            if cid != request.key and not cid.startswith(request.key + "#"):
                rejected.append((cid, "its request record does not hash to this custom_id"))
                continue
            mode = str(rec.get("structured", "vllm"))
            codec = codecs.get((mode, str(rec.get("model"))))
            if codec is None:
                from semframe.engines.openai import OpenAIEngine

                codec = codecs[(mode, str(rec.get("model")))] = OpenAIEngine(
                    _OFFLINE_URL, model=str(rec.get("model") or "batch"), api_key="", structured=mode)
            comp = finish(request, codec._read(request, ln.body), 0.0)
            prompt += comp.prompt_tokens
            cached += comp.cached_prompt_tokens
            output += comp.output_tokens
            if not comp.ok:
                rejected.append((cid, comp.error or "invalid answer"))
                continue
            items.append((cid, request, comp))
    finally:
        for codec in codecs.values():
            codec.close()
    if items:
        from semframe.cache import open_exact_cache

        open_exact_cache(config.cache_dir()).put_many(fp, items)
    pricing = getattr(eng, "pricing", None)
    cost = None
    if pricing is not None:
        cost = pricing.cost(prompt_tokens=prompt, output_tokens=output, cached_prompt_tokens=cached, batch=True)
    result = BatchResults(str(target), len(items), tuple(rejected), prompt, cached, output, cost, fp)
    if rejected:
        logger.warning("read_batch_results: %s", result)
    else:
        logger.info("read_batch_results: %s", result)
    return result


__all__ = ["BatchResults", "BatchWritten", "read_batch_results", "write_batch"]

