"""Physical operators for ``semantic.embed``, ``semantic.search`` and ``semantic.sim_join``.

No LLM: each operator renders its texts (as the row-wise verbs do: a null or blank text is
skipped), has them embedded by the step's embedding engine (:func:`~semframe.engines.embedding.resolve_embedder`)
through :func:`~semframe.cache.embed.embed_cached` -- each distinct text once per call, vectors
kept in the answer store by text digest and the engine's fingerprint, so a rerun embeds nothing
-- and compares unit vectors with :func:`~semframe.execution.vectors.top_k` (exact: numpy in
blocks, FAISS for large corpora; ties go to the earlier row).

- :class:`EmbedOp` streams: one embedding call per input batch.
- :class:`SearchOp` streams too: each batch's best ``k`` are merged into a running top ``k``,
  so memory is one batch plus ``k`` rows, whatever the input size.
- :class:`SimJoinOp` gathers the right side (the corpus: embedded once), then streams the left
  side, a batch at a time, each left row's top ``k`` right rows by one ``top_k`` call.

Lineage (see docs/embeddings.md): ``embed`` writes one record per row -- ``source`` "engine"
(embedded in this run), "exact_cache" (its vector came from the store), "dedup" (a repeat of a
text earlier in the same batch; ``source_row_id`` names it) or "skipped" (null or blank text,
with the reason); ``value`` is null (the vector is in the frame, not copied to lineage) and
``model`` the embedder's ``name:model``. ``search`` writes one record per *output* row (its input
row, its similarity, its rank); ``sim_join`` one per output pair (provenance ``{left, right}``,
the similarity, the rank among the left row's matches). Metrics: rows in/out, seconds, and on
:class:`EmbeddingMetrics` texts embedded / cached / repeated and embedding seconds; engine
requests and tokens stay 0 (they count LLM calls).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from semframe.accounting.estimate import StepEstimate
from semframe.cache.embed import EmbedResult, embed_cached
from semframe.engines.embedding import EmbeddingEngine, embedder_label, resolve_embedder
from semframe.errors import SemframeError
from semframe.execution.context import RunContext, RunOptions
from semframe.execution.lineage import Outcome, StepMetrics
from semframe.execution.provenance import CARRIER, Batch
from semframe.execution.render import render_exprs, render_texts
from semframe.execution.vectors import top_k
from semframe.physical.base import EstimateContext, EstState, PhysicalOp
from semframe.physical.relational import rebatch
from semframe.physical.semantic import SemanticOperator, StepRun, expected_rows, gather, physical_for
from semframe.plan.embedding import SemEmbed, SemSearch, SemSimJoin
from semframe.plan.template import Template


@dataclass
class EmbeddingMetrics(StepMetrics):
    """A step's metrics plus what its embedding engine did (``run.step_metrics[i]``)."""

    #: Distinct texts the embedding engine embedded in this run.
    texts_embedded: int = 0
    #: Distinct texts whose vectors came from the answer store.
    texts_cached: int = 0
    #: Texts that repeated another of the same batch (embedded once).
    texts_repeated: int = 0
    #: Seconds inside the embedding engine.
    embedding_seconds: float = 0.0
    #: The embedding engine (``name:model``).
    embedder: str = ""
    #: Rows of the right side (``sim_join``).
    right_rows: int = 0

    def add_embedding(self, res: EmbedResult) -> None:
        self.texts_embedded += res.embedded
        self.texts_cached += res.cached
        self.texts_repeated += res.repeated
        self.embedding_seconds += res.seconds


@dataclass(frozen=True)
class EmbeddingStepEstimate(StepEstimate):
    """An embedding step's estimate: 0 engine calls, and the distinct texts it may embed (fewer
    when the answer store already holds their vectors)."""

    texts_high: int = 0


class EmbeddingOperator(SemanticOperator):
    """Shared by the three operators: the embedder, the store, the step's bookkeeping."""

    def __init__(self, node: Any, inputs: tuple[PhysicalOp, ...], index: int, options: RunOptions):
        super().__init__(node, inputs, index, options)
        self.dedupe = False  # no LLM requests to collapse (texts are embedded once per call anyway)
        self._engine: EmbeddingEngine | None = None

    def embedding_engine(self) -> EmbeddingEngine:
        """The step's embedding engine (made on first use: a model loads on its first embed)."""
        if self._engine is None:
            self._engine = resolve_embedder(self.node.embedder)
        return self._engine

    def _store(self, ctx: RunContext) -> Any:
        cache = ctx.resolver.exact_cache if self.exact_cache else None
        return getattr(cache, "store", None)

    def open_embedding_step(self, ctx: RunContext, expected: int | None = None) -> tuple[StepRun, EmbeddingMetrics]:
        node = self.node
        engine = self.embedding_engine()
        metrics = EmbeddingMetrics(step=self.index, operator=node.operator, column=node.output_name,
                                   embedder=engine.label())
        ctx.metrics.append(metrics)
        if ctx.progress is not None:
            ctx.progress.start_step(self.index, node.operator, node.output_name, expected, metrics)
        return StepRun(metrics, self.step_info(metrics), engine.label()), metrics

    def embed(self, ctx: RunContext, metrics: EmbeddingMetrics, texts: list[str]) -> EmbedResult:
        res = embed_cached(self.embedding_engine(), texts, self._store(ctx))
        metrics.add_embedding(res)
        return res

    def embed_valid(self, ctx: RunContext, metrics: EmbeddingMetrics, template: Template,
                    frame: pl.DataFrame) -> tuple[np.ndarray, EmbedResult, list[str | None]]:
        """The positions of the rows with a text, their vectors (and how they were had), and
        each row's skip reason."""
        texts, reasons = render_texts(template, frame)
        valid = np.array([i for i, t in enumerate(texts) if t is not None], dtype=np.int64)
        res = self.embed(ctx, metrics, [texts[i] for i in valid])  # type: ignore[misc]
        return valid, res, reasons

    def flags(self) -> list[str]:
        flags = [f"embedder {embedder_label(self.node.embedder)}"]
        flags.append("embeddings cached" if self.exact_cache else "embedding cache off")
        return flags

    def estimate_texts(self, state: EstState, template: Template) -> tuple[int, int, int]:
        """(rows with a text, rows skipped, distinct texts) where the input is known, else from the row counts."""
        if state.batch is None or set(template.columns) & state.unknown:
            return round(state.rows_high), 0, round(state.rows_high)
        text, has_null, all_empty = render_exprs(template, state.batch.frame.schema)
        texts = state.batch.frame.select(pl.when(has_null | all_empty).then(None).otherwise(text).alias("t"))["t"]
        valid = texts.drop_nulls()
        return valid.len(), texts.len() - valid.len(), valid.n_unique()

    def step_estimate(self, state_rows: tuple[float, float], skipped: int, texts: int,
                      exact: bool) -> EmbeddingStepEstimate:
        node = self.node
        return EmbeddingStepEstimate(
            step=self.index, operator=node.operator, column=node.output_name,
            rows_low=round(state_rows[0]), rows_high=round(state_rows[1]), skipped=skipped,
            calls_low=0, calls_high=0, rows_exact=exact, prompt_tokens_per_call=0.0,
            output_tokens_per_call=(0.0, 0.0, 0.0), texts_high=texts,
        )


def _take(batch: Batch, idx: np.ndarray) -> Batch:
    return Batch(batch.frame[idx], batch.ids.gather(idx))


def _dimension_check(node: Any, engine: EmbeddingEngine, vecs: np.ndarray) -> None:
    d = getattr(node, "dimension", None)
    if d is not None and vecs.shape[0] and vecs.shape[1] != d:
        raise SemframeError(
            f"semantic.{node.operator}: the embedder {engine.label()} gives {vecs.shape[1]}-dimensional vectors, but "
            f"the plan was built for {d} (the embedding model changed since); build the plan again"
        )


def vector_column(name: str, vecs: np.ndarray, rows: np.ndarray, height: int, dtype: pl.DataType) -> pl.Series:
    """A column of ``height`` rows: row ``rows[j]`` holds ``vecs[j]``, the others null."""
    width = dtype.size if isinstance(dtype, pl.Array) else (vecs.shape[1] if vecs.ndim == 2 else 0)
    if width == 0:
        return pl.Series(name, [None] * height, dtype=dtype)
    full = np.zeros((height, width), dtype=np.float32)
    if len(rows):
        full[rows] = vecs
    series = pl.Series(name, full)
    if len(rows) < height:
        mask = np.zeros(height, dtype=bool)
        mask[rows] = True
        series = pl.DataFrame({name: series, "keep": mask}).select(pl.when("keep").then(pl.col(name)))[name]
    return series.cast(dtype)


@physical_for(SemEmbed)
class EmbedOp(EmbeddingOperator):
    node: SemEmbed

    def execute(self, ctx: RunContext) -> Iterator[Batch]:
        node = self.node
        progress = ctx.progress
        run, metrics = self.open_embedding_step(ctx, expected_rows(self.inputs[0], progress)
                                                if progress is not None else None)
        engine = self.embedding_engine()
        note = f"embedding, fingerprint {engine.fingerprint()}"
        for batch in rebatch(self.inputs[0].execute(ctx), ctx.options.batch_size):
            start = time.perf_counter()
            valid, res, reasons = self.embed_valid(ctx, metrics, node.template, batch.frame)
            _dimension_check(node, engine, res.vectors)
            column = vector_column(node.name, res.vectors, valid, batch.height, node.output_dtype)
            outcomes = [Outcome(None, "skipped", error=reasons[i] or "no text") for i in range(batch.height)]
            scalar = batch.ids.dtype == pl.UInt32
            for j, i in enumerate(valid.tolist()):
                src = res.sources[j]
                first = int(valid[res.first[j]])
                outcomes[i] = Outcome(None, src, note=note,
                                      source_row_id=batch.ids[first] if src == "dedup" and scalar else None)
            ctx.recorder.record(self.index, node.operator, node.name, run.model, batch.ids, outcomes)
            metrics.skipped += batch.height - len(valid)
            metrics.rows_in += batch.height
            metrics.rows_out += batch.height
            metrics.seconds += time.perf_counter() - start
            if progress is not None:
                progress.rows(batch.height, step=self.index)
            yield Batch(batch.frame.with_columns(column), batch.ids)
        self.close_step(ctx, run)

    def describe(self) -> str:
        node = self.node
        return (f"SEMANTIC EMBED -> {node.name} (step {self.index}) [{', '.join(self.flags())}; "
                f"{node.output_dtype}; no LLM]")

    def estimate(self, est: EstimateContext) -> EstState:
        node = self.node
        state = self.inputs[0].estimate(est)
        _, skipped, texts = self.estimate_texts(state, node.template)
        est.steps.append(self.step_estimate((state.rows_low, state.rows_high), skipped, texts, state.exact))
        if state.batch is None:
            return state
        frame = state.batch.frame.with_columns(pl.lit(None, dtype=node.output_dtype).alias(node.name))
        return EstState(Batch(frame, state.batch.ids), state.rows_low, state.rows_high, state.exact,
                        state.unknown | {node.name})


@physical_for(SemSearch)
class SearchOp(EmbeddingOperator):
    node: SemSearch

    def execute(self, ctx: RunContext) -> Iterator[Batch]:
        node = self.node
        progress = ctx.progress
        run, metrics = self.open_embedding_step(ctx, expected_rows(self.inputs[0], progress)
                                                if progress is not None else None)
        start = time.perf_counter()
        query = self.embed(ctx, metrics, [node.query]).vectors
        best: Batch | None = None
        best_scores = np.zeros(0, dtype=np.float32)
        best_pos = np.zeros(0, dtype=np.int64)
        seen = 0
        metrics.seconds += time.perf_counter() - start
        for batch in rebatch(self.inputs[0].execute(ctx), ctx.options.batch_size):
            start = time.perf_counter()
            valid, res, _ = self.embed_valid(ctx, metrics, node.template, batch.frame)
            _dimension_check(node, self.embedding_engine(), res.vectors)
            metrics.skipped += batch.height - len(valid)
            if len(valid):
                idx, sims = top_k(query, res.vectors, node.k)
                rows = valid[idx[0]]
                cand = _take(batch, rows)
                pool = cand if best is None else Batch.concat([best, cand])
                scores = np.concatenate([best_scores, sims[0]])
                pos = np.concatenate([best_pos, seen + rows])
                order = np.lexsort((pos, -scores))[:node.k]
                best, best_scores, best_pos = _take(pool, order), scores[order], pos[order]
            seen += batch.height
            metrics.rows_in += batch.height
            metrics.seconds += time.perf_counter() - start
            if progress is not None:
                progress.rows(batch.height, step=self.index)
        if best is None:
            best = Batch.empty(self.inputs[0].node.schema)
        out = Batch(best.frame.with_columns(pl.Series(node.name, best_scores.astype(np.float64), dtype=pl.Float64)),
                    best.ids)
        outcomes = [Outcome(float(s), "engine", similarity=float(s), note=f"rank {r + 1} of {node.k}")
                    for r, s in enumerate(best_scores.tolist())]
        ctx.recorder.record(self.index, node.operator, node.name, run.model, out.ids, outcomes)
        metrics.rows_out += out.height
        self.close_step(ctx, run)
        yield out

    def describe(self) -> str:
        node = self.node
        return (f"SEMANTIC SEARCH -> {node.name} (step {self.index}) [top {node.k} by cosine similarity, exact "
                f"(streamed: running top {node.k}); {', '.join(self.flags())}; no LLM]")

    def estimate(self, est: EstimateContext) -> EstState:
        node = self.node
        state = self.inputs[0].estimate(est)
        valid, skipped, texts = self.estimate_texts(state, node.template)
        est.steps.append(self.step_estimate((state.rows_low, state.rows_high), skipped, texts + 1, state.exact))
        known = state.batch is not None and not (set(node.template.columns) & state.unknown)
        low = min(node.k, valid) if known and state.exact else 0
        high = min(node.k, valid if known else state.rows_high)
        if state.batch is None:
            return EstState(None, low, high, False, state.unknown | {node.name})
        # Which rows win is only known after embedding: the input rows are a superset of them.
        frame = state.batch.frame.with_columns(pl.lit(None, dtype=pl.Float64).alias(node.name))
        return EstState(Batch(frame, state.batch.ids), low, high, False, state.unknown | {node.name})


@physical_for(SemSimJoin)
class SimJoinOp(EmbeddingOperator):
    node: SemSimJoin

    def execute(self, ctx: RunContext) -> Iterator[Batch]:
        node = self.node
        run, metrics = self.open_embedding_step(ctx)
        engine = self.embedding_engine()
        start = time.perf_counter()
        right = gather(self.inputs[1], ctx)
        r_valid, r_res, _ = self.embed_valid(ctx, metrics, node.right_template, right.frame)
        _dimension_check(node, engine, r_res.vectors)
        renames = {c: out for c, out in node.right_names.items() if c != out}
        right_frame = right.frame.rename(renames) if renames else right.frame
        metrics.right_rows = right.height
        metrics.seconds += time.perf_counter() - start
        for batch in rebatch(self.inputs[0].execute(ctx), ctx.options.batch_size):
            start = time.perf_counter()
            valid, res, _ = self.embed_valid(ctx, metrics, node.left_template, batch.frame)
            metrics.rows_in += batch.height
            metrics.skipped += batch.height - len(valid)
            if not len(valid) or not len(r_valid):
                metrics.seconds += time.perf_counter() - start
                continue
            idx, sims = top_k(res.vectors, r_res.vectors, node.k)
            width = idx.shape[1]
            left_rows = np.repeat(valid, width)
            right_rows = r_valid[idx.ravel()]
            scores = sims.ravel().astype(np.float64)
            ranks = np.tile(np.arange(1, width + 1), len(valid))
            if node.threshold is not None:
                keep = sims.ravel() >= np.float32(node.threshold)
                left_rows, right_rows, scores, ranks = left_rows[keep], right_rows[keep], scores[keep], ranks[keep]
            if not len(left_rows):
                metrics.seconds += time.perf_counter() - start
                continue
            frame = pl.concat([batch.frame[left_rows], right_frame[right_rows],
                               pl.DataFrame({node.name: pl.Series(scores, dtype=pl.Float64)})], how="horizontal")
            ids = pl.DataFrame([batch.ids.gather(left_rows).alias("left"),
                                right.ids.gather(right_rows).alias("right")]).to_struct(CARRIER)
            outcomes = [Outcome(s, "engine", similarity=s, note=f"rank {r}")
                        for s, r in zip(scores.tolist(), ranks.tolist())]
            ctx.recorder.record(self.index, node.operator, node.name, run.model, ids, outcomes)
            metrics.rows_out += frame.height
            metrics.seconds += time.perf_counter() - start
            yield Batch(frame, ids)
        self.close_step(ctx, run)

    def describe(self) -> str:
        node = self.node
        cut = f", similarity >= {node.threshold:g}" if node.threshold is not None else ""
        return (f"SEMANTIC SIM_JOIN -> {node.name} (step {self.index}) [top {node.k} right rows per left row{cut}, "
                f"exact (right side embedded once, left side streamed); {', '.join(self.flags())}; no LLM]")

    def estimate(self, est: EstimateContext) -> EstState:
        node = self.node
        left = self.inputs[0].estimate(est)
        right = self.inputs[1].estimate(est)
        l_valid, l_skipped, l_texts = self.estimate_texts(left, node.left_template)
        r_valid, _, r_texts = self.estimate_texts(right, node.right_template)
        exact = left.exact and right.exact
        est.steps.append(self.step_estimate((left.rows_low, left.rows_high), l_skipped, l_texts + r_texts, exact))
        per_row = min(node.k, r_valid)
        high = l_valid * per_row
        low = high if (exact and node.threshold is None) else 0
        unknown = left.unknown | right.unknown | {node.name}
        return EstState(None, low, high, False, frozenset(unknown))
