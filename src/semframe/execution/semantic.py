"""The physical semantic operator: one batch of rows in, the same batch with answers out.

For each batch it renders every row's prompt (vectorized, values inserted literally), skips rows
whose input is null or empty, answers repeats from the in-run memo (when the step dedupes) and
from the caches, sends the remaining distinct requests to the engine in one call, and records
one lineage entry per row.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from semframe.engines.base import Completion, Engine, Request
from semframe.execution.lineage import LineageRecorder, Outcome, StepMetrics
from semframe.execution.prompts import build_request, shared_text
from semframe.plan.nodes import ROW_ID, SemanticStep, SemFilter

_NESTED = (pl.List, pl.Array, pl.Struct)


def text_expr(column: str, dtype: pl.DataType) -> pl.Expr:
    """The column as text for a prompt.

    Strings pass through; numbers, booleans, dates and other scalars are cast with polars'
    own formatting; lists, arrays and structs become compact JSON. Nulls stay null.
    """
    col = pl.col(column)
    if dtype == pl.String:
        return col
    if isinstance(dtype, _NESTED):
        wrapped = pl.struct(col.alias("v")).struct.json_encode()
        as_json = wrapped.str.strip_prefix('{"v":').str.strip_suffix("}")
        return pl.when(col.is_null()).then(pl.lit(None, dtype=pl.String)).otherwise(as_json)
    return col.cast(pl.String)


def render_exprs(step: SemanticStep, schema: pl.Schema) -> tuple[pl.Expr, pl.Expr, pl.Expr]:
    """``(text, has_null, all_empty)``: polars expressions for the step's rendered template.

    ``text`` concatenates the template's literal pieces with each referenced column as text
    (values are inserted literally); a row is skipped when any referenced value is null
    (``has_null``) or all of them are empty or whitespace (``all_empty``). The run
    (:func:`render_texts`) and the estimate both render through here.
    """
    values = {c: text_expr(c, schema[c]) for c in step.template.columns}
    pieces = [pl.lit(part, dtype=pl.String) if k % 2 == 0 else values[part]
              for k, part in enumerate(step.template.parts) if k % 2 or part]
    text = pl.concat_str(pieces, ignore_nulls=False)
    has_null = pl.any_horizontal([v.is_null() for v in values.values()])
    all_empty = pl.all_horizontal([v.str.strip_chars().str.len_chars() == 0 for v in values.values()])
    return text, has_null, all_empty


def render_texts(step: SemanticStep, batch: pl.DataFrame) -> tuple[list[str | None], list[str | None]]:
    """Render the step's template for every row.

    Returns ``(texts, skip_reasons)``: a row whose referenced value is null, or whose
    referenced values are all empty or whitespace, gets text None and a reason.
    """
    text, has_null, all_empty = render_exprs(step, batch.schema)
    frame = batch.select(text.alias("text"), has_null.alias("has_null"), all_empty.alias("all_empty"))
    rendered = frame["text"].to_list()
    reasons: list[str | None] = [None] * len(rendered)
    null_cols = [c for c in step.template.columns if batch[c].null_count()]
    for i, (has_null, all_empty) in enumerate(zip(frame["has_null"], frame["all_empty"])):
        if has_null:
            which = [c for c in null_cols if batch[c][i] is None]
            reasons[i] = f"null input in column {which[0]!r}" if which else "null input"
            rendered[i] = None
        elif all_empty:
            reasons[i] = "empty input text"
            rendered[i] = None
    return rendered, reasons


@dataclass
class SemanticRunner:
    """Runs one semantic step of one run, batch by batch.

    Each row is answered by the first of: the in-run memo (an identical request earlier in the
    run, when the step dedupes), the exact cache, the semantic cache (when the step has a
    threshold), the engine. ``exact_cache`` (optional) has ``get_many(fingerprint, keys) ->
    {key: Completion}``, ``put_many(fingerprint, [(key, Request, Completion)])`` and ``store``
    (its :class:`~semframe.cache.store.AnswerStore`, where semantic entries persist too); answers
    are stored as each engine batch finishes. Without it the semantic cache lasts one run.

    ``before_engine_batch`` is called with each batch of requests before it goes to the engine
    and may raise to stop the run (budgets); ``on_engine_batch`` gets the completions after.
    """

    step: SemanticStep
    step_index: int
    engine: Engine
    recorder: LineageRecorder
    metrics: StepMetrics
    exact_cache: Any = None
    before_engine_batch: Callable[[list[Request]], None] | None = None
    on_engine_batch: Callable[[list[Completion]], None] | None = None
    _memo: dict[str, tuple[Completion, int]] = field(default_factory=dict)
    _samples: dict[str, int] = field(default_factory=dict)
    _shared: str = ""

    def __post_init__(self) -> None:
        self._shared = shared_text(self.step)
        needs_fp = self.exact_cache is not None or self.step.semantic_cache is not None
        self._fingerprint = self.engine.fingerprint() if needs_fp else ""
        self._semantic: Any = None  # created on first use (it loads the embedding model)

    def process(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Answer every row of ``batch``; return it with the output column (or filtered)."""
        start = time.perf_counter()
        step = self.step
        texts, reasons = render_texts(step, batch)
        row_ids = batch[ROW_ID].to_list()
        outcomes: list[Outcome | None] = [None] * len(texts)
        requests: list[Request | None] = [None] * len(texts)
        for i, text in enumerate(texts):
            if text is None:
                outcomes[i] = Outcome(None, "skipped", error=reasons[i])
            else:
                requests[i] = build_request(step, text, self._shared)
        self._resolve(requests, texts, row_ids, outcomes)
        done: list[Outcome] = outcomes  # type: ignore[assignment]
        self.recorder.record(self.step_index, step.operator, step.name, self.engine.model, row_ids, done)
        for o in done:
            self.metrics.add(o)
        self.metrics.rows_in += batch.height
        out = self._attach(batch, [o.value for o in done])
        self.metrics.rows_out += out.height
        self.metrics.seconds += time.perf_counter() - start
        return out

    # ------------------------------------------------------------------ resolution

    def _resolve(self, requests: list[Request | None], texts: list[str | None], row_ids: list[int],
                 outcomes: list[Outcome | None]) -> None:
        dedupe = self.step.dedupe
        # Rows still to answer, grouped by cache key. Deduping, that is the request key; else each
        # row is its own sample: the n-th row of the step asking a request is sample n of it
        # (its own cache entry, so a rerun gives every row its own sample back).
        pending: dict[str, list[int]] = {}
        keyed: dict[str, Request] = {}
        for i, req in enumerate(requests):
            if req is None:
                continue
            key = req.key
            self.recorder.remember_prompt(req)
            if dedupe and key in self._memo:
                comp, first_row = self._memo[key]
                outcomes[i] = _outcome(comp, "dedup", key, source_row_id=first_row, free=True)
                continue
            group_key = key
            if not dedupe:
                n = self._samples.get(key, 0)
                self._samples[key] = n + 1
                group_key = key if n == 0 else f"{key}#{n}"
            pending.setdefault(group_key, []).append(i)
            keyed[group_key] = req
        if pending and self.exact_cache is not None:
            hits = self.exact_cache.get_many(self._fingerprint, set(pending))
            for gk in [gk for gk in pending if gk in hits]:
                self._fan_out(hits[gk], "exact_cache", keyed[gk].key, pending.pop(gk), row_ids, outcomes)
        if not pending:
            return
        order = list(pending)
        if self.step.semantic_cache is None:
            completions = self._ask_engine([keyed[gk] for gk in order], order)
            for gk, comp in zip(order, completions):
                self._fan_out(comp, "engine", keyed[gk].key, pending[gk], row_ids, outcomes)
            return
        self._resolve_semantic(order, pending, keyed, texts, row_ids, outcomes)

    def _resolve_semantic(self, order: list[str], pending: dict[str, list[int]], keyed: dict[str, Request],
                          texts: list[str | None], row_ids: list[int], outcomes: list[Outcome | None]) -> None:
        """Reuse answers of near-duplicate texts; send one representative per cluster to the engine."""
        from semframe.cache.embed import text_digest
        from semframe.cache.semantic import SemanticHit

        cache = self._semantic_cache()
        group_texts: list[str] = [texts[pending[gk][0]] for gk in order]  # type: ignore[misc]
        vectors = cache.embed(group_texts)
        plan = cache.plan(vectors)
        for pos, hit in plan.hits.items():
            gk = order[pos]
            first = pending[gk][0]
            cache.note_hit(keyed[gk], group_texts[pos], hit, row_ids[first])
            self._fan_out(hit.completion, "semantic_cache", keyed[gk].key, pending[gk], row_ids, outcomes,
                          similarity=hit.similarity, source_row_id=hit.source_row_id)
        reps = plan.representatives
        completions = self._ask_engine([keyed[order[p]] for p in reps], [order[p] for p in reps])
        answer = dict(zip(reps, completions))
        for p, comp in answer.items():
            self._fan_out(comp, "engine", keyed[order[p]].key, pending[order[p]], row_ids, outcomes)
        cache.add(vectors[reps], completions, [row_ids[pending[order[p]][0]] for p in reps],
                  [text_digest(group_texts[p]) for p in reps])
        # A member reuses its representative's answer; if that failed, it asks for itself.
        retry = [m for m, (rep, _) in plan.members.items() if not answer[rep].ok]
        retried = (dict(zip(retry, self._ask_engine([keyed[order[m]] for m in retry], [order[m] for m in retry])))
                   if retry else {})
        for m, (rep, sim) in plan.members.items():
            gk = order[m]
            if m in retried:
                self._fan_out(retried[m], "engine", keyed[gk].key, pending[gk], row_ids, outcomes)
                continue
            hit = SemanticHit(answer[rep], sim, row_ids[pending[order[rep]][0]])
            cache.note_hit(keyed[gk], group_texts[m], hit, row_ids[pending[gk][0]])
            self._fan_out(hit.completion, "semantic_cache", keyed[gk].key, pending[gk], row_ids, outcomes,
                          similarity=sim, source_row_id=hit.source_row_id)

    def _semantic_cache(self) -> Any:
        if self._semantic is None:
            from semframe.cache.embed import default_embedder
            from semframe.cache.semantic import SemanticCache, semantic_step_key

            step = self.step
            embedder = default_embedder()
            key = semantic_step_key({
                "operator": step.operator,
                "shared": self._shared,
                "template": step.template.source,
                "spec": step.spec.to_dict(),
                "max_tokens": step.effective_max_tokens,
                "temperature": step.temperature,
                "layout": step.layout,
                "engine": self._fingerprint,
            }, embedder.model_id)
            store = getattr(self.exact_cache, "store", None)
            self._semantic = SemanticCache(key, step.semantic_cache, embedder, store)  # type: ignore[arg-type]
        return self._semantic

    def _ask_engine(self, batch: list[Request], cache_keys: list[str]) -> list[Completion]:
        """One engine call; answers go to the exact cache (under ``cache_keys``) as soon as it returns."""
        if not batch:
            return []
        if self.before_engine_batch is not None:
            self.before_engine_batch(batch)  # may raise (a budget) before anything is spent
        completions = self.engine.generate(batch)
        self.metrics.engine_batches += 1
        if self.exact_cache is not None:
            self.exact_cache.put_many(self._fingerprint,
                                      [(k, r, c) for k, r, c in zip(cache_keys, batch, completions) if c.ok])
        if self.on_engine_batch is not None:
            self.on_engine_batch(completions)
        return completions

    def _fan_out(self, comp: Completion, source: str, key: str, rows: list[int], row_ids: list[int],
                 outcomes: list[Outcome | None], *, similarity: float | None = None,
                 source_row_id: int | None = None) -> None:
        first = rows[0]
        outcomes[first] = _outcome(comp, source, key, free=source != "engine", similarity=similarity,
                                   source_row_id=source_row_id)
        for i in rows[1:]:
            outcomes[i] = _outcome(comp, "dedup", key, source_row_id=row_ids[first], free=True)
        if self.step.dedupe:
            self._memo.setdefault(key, (comp, row_ids[first]))

    # ------------------------------------------------------------------ output

    def _attach(self, batch: pl.DataFrame, values: list[Any]) -> pl.DataFrame:
        step = self.step
        if isinstance(step, SemFilter):
            return batch.filter(pl.Series([v == "YES" for v in values], dtype=pl.Boolean))
        series = pl.Series(step.name, values, dtype=step.output_dtype, strict=False)
        return batch.with_columns(series)


def _outcome(comp: Completion, source: str, key: str, *, source_row_id: int | None = None,
             free: bool = False, similarity: float | None = None) -> Outcome:
    """An Outcome from a completion; ``free`` rows reuse an answer and cost no tokens."""
    return Outcome(
        value=comp.value,
        source=source,
        request_key=key,
        raw_output=comp.text,
        error=comp.error,
        finish_reason=comp.finish_reason,
        prompt_tokens=0 if free else comp.prompt_tokens,
        cached_prompt_tokens=0 if free else comp.cached_prompt_tokens,
        output_tokens=0 if free else comp.output_tokens,
        latency_s=0.0 if free else comp.latency_s,
        source_row_id=source_row_id,
        similarity=similarity,
    )
