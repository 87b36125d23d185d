"""Physical operators for ``semantic.cluster`` and ``semantic.dedup``: embeddings first, then the LLM.

Both need their whole input (a centroid, a row's nearest neighbours depend on every row), so
each gathers its input into one batch, embeds the distinct texts once (the process's embedder,
``semframe.cache.embed.default_embedder()``, with embeddings kept in the answer store; or the
step's own ``embedder``), and then asks the answer resolver -- so the memo, the exact cache and
lineage apply to every request, and a rerun is free.

- :class:`ClusterOp`: k-means from scikit-learn (``sklearn.cluster.KMeans``: a well-kept,
  deterministic-under-a-seed implementation; no reason to write our own), cluster ids renumbered
  in order of first appearance, then one label request per cluster showing the distinct texts
  nearest its centroid (one resolver round, split by the run's ``batch_size``).
- :class:`DedupOp`: embedding blocking with :func:`semframe.execution.vectors.top_k` (each row's
  ``candidates`` nearest rows, optionally above a similarity threshold), the candidate pairs as
  unordered pairs ``i < j``, one YES/NO request per pair with the two texts in a canonical
  (sorted) order, then the transitive closure of the YES pairs with SciPy's
  ``scipy.sparse.csgraph.connected_components`` (well-kept, linear time), and optionally one
  canonical-value request per entity.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import polars as pl

from semframe.accounting.estimate import StepEstimate
from semframe.accounting.tokens import output_tokens, request_prompt_tokens
from semframe.errors import PlanError
from semframe.execution.context import RunContext, RunOptions
from semframe.execution.provenance import Batch
from semframe.execution.render import render_exprs, render_texts
from semframe.physical.base import EstimateContext, EstState
from semframe.physical.prompts import RequestBuilder
from semframe.physical.semantic import SemanticOperator, StepRun, expected_rows, gather, physical_for
from semframe.plan.cluster import SemCluster, SemDedup, embedder_label
from semframe.plan.semantic import engine_label
from semframe.plan.spec import ChoiceSpec, TextSpec

if TYPE_CHECKING:
    import numpy as np

#: Tokens a cluster label may take.
LABEL_MAX_TOKENS = 16
#: Tokens a canonical value may take.
CANONICAL_MAX_TOKENS = 128
#: Characters of each row shown in a label or canonical request (long texts are cut).
SHOWN_CHARS = 300
#: k-means restarts (the best of them is kept).
KMEANS_N_INIT = 10

DEFAULT_LABEL_INSTRUCTION = ("These texts belong to one group. Name what they have in common in a short label "
                             "of at most five words.")
CANONICAL_INSTRUCTION = ("These records all refer to the same entity. Write its canonical record: the same "
                         "fields in the same format, with typos and variants resolved to the most likely value.")


# --------------------------------------------------------------------------- shared pieces


def embed_texts(embedder: Any, texts: list[str], store: Any = None) -> np.ndarray:
    """Unit float32 rows for ``texts``; each distinct text is embedded once.

    ``embedder`` None is the process's embedder, and an embedding engine
    (:mod:`semframe.engines.embedding`, e.g. ``HashingEmbedder``) goes through the same cache:
    vectors kept in ``store`` by text digest. Any other object whose ``.embed(texts)`` returns
    one row per text is called as it is; a string is a model name or folder
    (``semframe.engines.embedding.resolve_embedder``).
    """
    import numpy as np

    distinct = list(dict.fromkeys(texts))
    if not distinct:
        return np.zeros((0, 0), dtype=np.float32)
    from semframe.cache import embed as cached

    embed_cached = getattr(cached, "embed_cached", None)
    if isinstance(embedder, str):  # a model name or folder: the embedding engine it names
        from semframe.engines.embedding import resolve_embedder

        embedder = resolve_embedder(embedder)
    if embedder is None:
        vecs = cached.default_embedder().embed(distinct, store)
    elif embed_cached is not None and callable(getattr(embedder, "fingerprint", None)):
        vecs = embed_cached(embedder, distinct, store).vectors  # an embedding engine: vectors kept in the store
    else:
        vecs = embedder.embed(distinct)
    vecs = np.ascontiguousarray(np.asarray(vecs, dtype=np.float32))
    if vecs.ndim != 2 or vecs.shape[0] != len(distinct):
        raise PlanError(f"the embedder returned an array of shape {vecs.shape} for {len(distinct)} texts; "
                        "expected one row per text")
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    vecs = vecs / np.where(norms > 0, norms, 1.0)  # unit rows, whatever the embedder gave
    where = {t: i for i, t in enumerate(distinct)}
    return vecs[[where[t] for t in texts]]


def _shown(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 3] + "..."


def _numbered(texts: list[str]) -> str:
    return "\n".join(f"{i}. {_shown(t)}" for i, t in enumerate(texts, 1))


def _groups_ids(ids: pl.Series, groups: list[list[int]]) -> pl.Series:
    """Provenance of groups of rows: one list of the rows' ids per group."""
    return pl.Series("ids", [ids.gather(g) for g in groups], dtype=pl.List(ids.dtype))


def _pair_ids(ids: pl.Series, left: list[int], right: list[int]) -> pl.Series:
    """Provenance of pairs of rows: a struct ``{left, right}`` of the two rows' ids (as a join's)."""
    return pl.DataFrame({"left": ids.gather(left), "right": ids.gather(right)}).to_struct("ids")


def _known_texts(op: SemanticOperator, state: EstState) -> pl.Series | None:
    """Every row's text at estimate time (null where the run would skip it), or None if unknown."""
    template = op.node.template  # type: ignore[attr-defined]
    if state.batch is None or set(template.columns) & state.unknown:
        return None
    frame = state.batch.frame
    text, has_null, all_empty = render_exprs(template, frame.schema)
    return frame.select(pl.when(has_null | all_empty).then(None).otherwise(text).alias("t"))["t"]


def _output_state(state: EstState, added: tuple[tuple[str, pl.DataType], ...]) -> EstState:
    """The same rows leave the step, with its columns as unknown placeholders."""
    if state.batch is None:
        return state
    frame = state.batch.frame.with_columns(pl.lit(None, dtype=dt).alias(name) for name, dt in added)
    return EstState(Batch(frame, state.batch.ids), state.rows_low, state.rows_high, state.exact,
                    state.unknown | {name for name, _ in added})


class _WholeColumnOp(SemanticOperator):
    """What cluster and dedup share: the step's bookkeeping, the embedding store, and asking a
    list of prompts in rounds of ``batch_size``."""

    def _ask_all(self, ctx: RunContext, run: StepRun, builder: RequestBuilder, prompts: list[str],
                 ids: pl.Series) -> list[Any]:
        """One request per prompt, sent to the resolver ``batch_size`` at a time; the answers."""
        values: list[Any] = []
        size = ctx.options.batch_size
        for start in range(0, len(prompts), size):
            part = prompts[start:start + size]
            requests = builder.build_all(part)  # type: ignore[arg-type]
            outcomes = self.ask(ctx, run, requests, part, ids.slice(start, len(part)))  # type: ignore[arg-type]
            values.extend(o.value for o in outcomes)
        return values

    def _open(self, ctx: RunContext) -> StepRun:
        progress = ctx.progress
        return self.open_step(ctx, expected_rows(self.inputs[0], progress) if progress is not None else None)

    def _close(self, ctx: RunContext, run: StepRun, rows: int, start: float) -> None:
        """Every row went in and comes out; the step's time is its own (not its input's)."""
        run.metrics.rows_in += rows
        run.metrics.rows_out += rows
        run.metrics.seconds += time.perf_counter() - start
        if ctx.progress is not None:
            ctx.progress.rows(rows, step=self.index)
        self.close_step(ctx, run)

    def _store(self, ctx: RunContext) -> Any:
        cache = ctx.resolver.exact_cache if self.exact_cache else None
        return getattr(cache, "store", None)

    def _flags(self) -> list[str]:
        flags = ["shared prefix first" if self.options.prompt_layout == "shared_first" else "inline prompt"]
        if self.dedupe:
            flags.append("dedupe")
        flags.append("exact cache" if self.exact_cache else "exact cache off")
        node = self.node
        if getattr(node, "embedder", None) is not None:
            flags.append(f"embedder {embedder_label(node.embedder)}")  # type: ignore[attr-defined]
        if node.engine is not None:  # type: ignore[attr-defined]
            flags.append(f"engine {engine_label(node.engine)}")  # type: ignore[attr-defined]
        return flags


# --------------------------------------------------------------------------- cluster


@physical_for(SemCluster)
class ClusterOp(_WholeColumnOp):
    """k-means over the embedded texts, then one label request per cluster."""

    node: SemCluster

    def __init__(self, node: SemCluster, inputs: tuple, index: int, options: RunOptions):
        super().__init__(node, inputs, index, options)
        shared = f"{node.instruction or DEFAULT_LABEL_INSTRUCTION}\nReply with the label only."
        self.builder = RequestBuilder(shared, TextSpec(), LABEL_MAX_TOKENS, 0.0, options.prompt_layout)

    def execute(self, ctx: RunContext) -> Iterator[Batch]:
        import numpy as np

        node = self.node
        run = self._open(ctx)
        batch = gather(self.inputs[0], ctx)
        start = time.perf_counter()
        texts, _ = render_texts(node.template, batch.frame)
        valid = [i for i, t in enumerate(texts) if t is not None]
        ids_col: list[int | None] = [None] * batch.height
        labels_col: list[str | None] = [None] * batch.height
        if valid:
            valid_texts = [texts[i] for i in valid]
            distinct = len(set(valid_texts))
            if node.k > distinct:
                raise PlanError(
                    f"semantic.cluster: k={node.k} but the column has only {distinct} distinct text(s) in "
                    f"{len(valid)} row(s) with text; pass k <= {distinct}")
            vectors = embed_texts(node.embedder, valid_texts, self._store(ctx))
            assign, dist = kmeans(vectors, node.k, node.seed)
            groups = [np.flatnonzero(assign == c) for c in range(node.k)]
            for c, members in enumerate(groups):
                for m in members:
                    ids_col[valid[m]] = c
            if node.with_label:
                shown = [self._nearest(members, dist, valid_texts) for members in groups if len(members)]
                prompts = [_numbered([valid_texts[m] for m in rows]) for rows in shown]
                rows = [[valid[m] for m in rows] for rows in shown]
                answers = self._ask_all(ctx, run, self.builder, prompts, _groups_ids(batch.ids, rows))
                present = [c for c, members in enumerate(groups) if len(members)]
                names = dict(zip(present, answers))
                labels_col = [None if c is None else names.get(c) for c in ids_col]
        frame = batch.frame.with_columns(pl.Series(node.name, ids_col, dtype=pl.Int32))
        if node.with_label:
            frame = frame.with_columns(pl.Series(node.label_column, labels_col, dtype=pl.String))
        self._close(ctx, run, batch.height, start)
        yield Batch(frame, batch.ids)

    def _nearest(self, members: np.ndarray, dist: np.ndarray, texts: list[str]) -> list[int]:
        """The members (positions among the valid rows) shown for a label: the ``shown`` distinct
        texts nearest the centroid, nearest first (ties by position)."""
        import numpy as np

        order = members[np.lexsort((members, dist[members]))]
        picked: list[int] = []
        seen: set[str] = set()
        for m in order.tolist():
            if texts[m] not in seen:
                seen.add(texts[m])
                picked.append(m)
                if len(picked) == self.node.shown:
                    break
        return picked

    def describe(self) -> str:
        node = self.node
        algo = f"k-means (scikit-learn, k={node.k}, seed={node.seed}, n_init={KMEANS_N_INIT}) over embeddings"
        if node.with_label:
            ask = (f"one label request per cluster from the {node.shown} distinct rows nearest its centroid; "
                   f"max_tokens={LABEL_MAX_TOKENS}, {', '.join(self._flags())}")
        else:
            ask = "no labels (no LLM)"
        return f"SEMANTIC CLUSTER -> {node.name} (step {self.index}) [{algo}; {ask}]"

    def estimate(self, est: EstimateContext) -> EstState:
        node = self.node
        state = self.inputs[0].estimate(est)
        texts = _known_texts(self, state)
        if texts is not None:
            valid = texts.drop_nulls()
            skipped = texts.len() - valid.len()
            distinct = valid.unique(maintain_order=True)
            calls = min(node.k, distinct.len()) if node.with_label else 0
            exact = state.exact and state.rows_low == state.rows_high == texts.len()
            low = high = calls
            sample = distinct.head(node.shown).to_list()
        else:
            skipped, exact = 0, False
            low = high = node.k if node.with_label else 0
            sample = []
        prompt = (request_prompt_tokens(self.builder.build(_numbered(sample) or "1. ..."), est.engine)
                  if node.with_label else 0.0)
        out = output_tokens(TextSpec(), LABEL_MAX_TOKENS, est.count)
        est.steps.append(StepEstimate(
            step=self.index, operator=node.operator, column=node.name,
            rows_low=round(state.rows_low), rows_high=round(state.rows_high), skipped=skipped,
            calls_low=low, calls_high=high, rows_exact=exact, prompt_tokens_per_call=float(prompt),
            output_tokens_per_call=(out.low, out.typical, out.high) if node.with_label else (0.0, 0.0, 0.0),
        ))
        return _output_state(state, node.added)


def kmeans(vectors: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Cluster ids (renumbered ``0..k-1`` in order of first appearance) and each row's squared
    distance to its centroid."""
    import numpy as np
    from sklearn.cluster import KMeans

    model = KMeans(n_clusters=k, random_state=seed, n_init=KMEANS_N_INIT)
    raw = model.fit_predict(vectors.astype(np.float64))
    dist = ((vectors - model.cluster_centers_[raw]) ** 2).sum(axis=1)
    _, first = np.unique(raw, return_index=True)
    order = np.unique(raw)[np.argsort(first)]
    renumber = np.empty(k, dtype=np.int64)
    renumber[order] = np.arange(len(order))
    return renumber[raw], dist


# --------------------------------------------------------------------------- dedup


@physical_for(SemDedup)
class DedupOp(_WholeColumnOp):
    """Embedding blocking, a YES/NO request per candidate pair, transitive closure."""

    node: SemDedup

    def __init__(self, node: SemDedup, inputs: tuple, index: int, options: RunOptions):
        super().__init__(node, inputs, index, options)
        shared = f"{node.effective_question}\nAnswer with exactly one word: YES or NO."
        self.builder = RequestBuilder(shared, ChoiceSpec(("YES", "NO")), 5, 0.0, options.prompt_layout)
        self.canonical_builder = RequestBuilder(f"{CANONICAL_INSTRUCTION}\nReply with the record only.",
                                                TextSpec(), CANONICAL_MAX_TOKENS, 0.0, options.prompt_layout)

    def execute(self, ctx: RunContext) -> Iterator[Batch]:
        import numpy as np

        node = self.node
        run = self._open(ctx)
        batch = gather(self.inputs[0], ctx)
        start = time.perf_counter()
        texts, _ = render_texts(node.template, batch.frame)
        valid = np.array([i for i, t in enumerate(texts) if t is not None], dtype=np.int64)
        entity: list[int | None] = [None] * batch.height
        canonical: list[str | None] = [None] * batch.height
        if len(valid):
            valid_texts = [texts[i] for i in valid]
            vectors = embed_texts(node.embedder, valid_texts, self._store(ctx))
            a, b = candidate_pairs(vectors, node.candidates, node.threshold)
            left, right = valid[a].tolist(), valid[b].tolist()
            prompts = [pair_prompt(texts[i], texts[j]) for i, j in zip(left, right)]  # type: ignore[arg-type]
            answers = self._ask_all(ctx, run, self.builder, prompts, _pair_ids(batch.ids, left, right))
            yes = np.array([v == "YES" for v in answers], dtype=bool)
            first = entities(len(valid), a[yes], b[yes])
            for pos, f in zip(valid.tolist(), valid[first].tolist()):
                entity[pos] = f
            if node.canonical:
                canonical = self._canonical(ctx, run, batch, texts, entity)
        frame = batch.frame.with_columns(pl.Series(node.name, entity, dtype=pl.Int64))
        if node.canonical:
            frame = frame.with_columns(pl.Series(node.canonical_column, canonical, dtype=pl.String))
        self._close(ctx, run, batch.height, start)
        yield Batch(frame, batch.ids)

    def _canonical(self, ctx: RunContext, run: StepRun, batch: Batch, texts: list[str | None],
                   entity: list[int | None]) -> list[str | None]:
        """One request per entity whose rows hold two or more distinct texts; an entity whose rows
        all say the same keeps that text (so does a one-row entity)."""
        members: dict[int, list[int]] = {}
        for pos, e in enumerate(entity):
            if e is not None:
                members.setdefault(e, []).append(pos)
        out: list[str | None] = [texts[pos] if e is not None else None for pos, e in enumerate(entity)]
        asked = [(e, rows) for e, rows in members.items() if len({texts[r] for r in rows}) > 1]
        prompts = [_numbered(list(dict.fromkeys(texts[r] for r in rows))) for _, rows in asked]  # type: ignore[misc]
        answers = self._ask_all(ctx, run, self.canonical_builder, prompts,
                                _groups_ids(batch.ids, [rows for _, rows in asked]))
        for (_, rows), value in zip(asked, answers):
            for r in rows:
                out[r] = value
        return out

    def describe(self) -> str:
        node = self.node
        block = f"embedding blocking: {node.candidates} nearest rows per row (exact top-k)"
        if node.threshold is not None:
            block += f" with similarity >= {node.threshold:g}"
        canon = "; a canonical value per entity of 2+ distinct texts" if node.canonical else ""
        return (f"SEMANTIC DEDUP -> {node.name} (step {self.index}) [{block}; one YES/NO request per distinct "
                f"unordered pair; transitive closure (connected components){canon}; estimate: pairs bounded "
                f"n*{node.candidates}/2..n*{node.candidates}, blocking not computed before the run; "
                f"{', '.join(self._flags())}]")

    def detail_lines(self) -> list[str]:
        return self.node.detail_lines()

    def estimate(self, est: EstimateContext) -> EstState:
        node = self.node
        state = self.inputs[0].estimate(est)
        texts = _known_texts(self, state)
        c = node.candidates
        if texts is not None:
            valid = texts.drop_nulls()
            skipped = texts.len() - valid.len()
            distinct = valid.unique(maintain_order=True)
            low, high = pair_bounds(valid.len(), distinct.len(), c, node.threshold is not None)
            n_high = valid.len()
            sample = distinct.head(2 * 16).to_list()
        else:
            skipped = 0
            n_high = round(state.rows_high)
            low, high = 0, pair_bounds(n_high, n_high, c, True)[1]
            sample = []
        if node.canonical:
            high += n_high // 2  # at most one entity per two rows
        pairs = [pair_prompt(sample[i], sample[i + 1]) for i in range(0, len(sample) - 1, 2)] or \
            [pair_prompt("...", "...")]
        prompt = sum(request_prompt_tokens(self.builder.build(p), est.engine) for p in pairs) / len(pairs)
        out = output_tokens(self.builder.spec, 5, est.count)
        est.steps.append(StepEstimate(
            step=self.index, operator=node.operator, column=node.name,
            rows_low=round(state.rows_low), rows_high=round(state.rows_high), skipped=skipped,
            calls_low=low, calls_high=high, rows_exact=False, prompt_tokens_per_call=float(prompt),
            output_tokens_per_call=(out.low, out.typical, out.high),
        ))
        return _output_state(state, node.added)


def pair_prompt(a: str, b: str) -> str:
    """The text of a pair's request: the two records in sorted order, so (a, b) and (b, a) are one
    request (one cache entry, one memo entry)."""
    first, second = sorted((a, b))
    return f"Record 1: {first}\nRecord 2: {second}"


def candidate_pairs(vectors: np.ndarray, candidates: int, threshold: float | None) -> tuple[np.ndarray, np.ndarray]:
    """The distinct unordered pairs ``(a, b)``, ``a < b``, of rows among each other's
    ``candidates`` nearest neighbours (at least ``threshold`` similar), sorted."""
    import numpy as np

    from semframe.execution.vectors import top_k

    n = len(vectors)
    idx, sim = top_k(vectors, vectors, candidates, exclude_self=True)
    rows = np.repeat(np.arange(n, dtype=np.int64), idx.shape[1])
    cols = idx.ravel()
    if threshold is not None:
        keep = sim.ravel() >= threshold
        rows, cols = rows[keep], cols[keep]
    lo, hi = np.minimum(rows, cols), np.maximum(rows, cols)
    codes = np.unique(lo * n + hi)
    return codes // n, codes % n


def entities(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each of ``n`` rows, the smallest row of its connected component under the edges (a, b)."""
    import numpy as np
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    count, comp = connected_components(graph, directed=False)
    first = np.full(count, n, dtype=np.int64)
    np.minimum.at(first, comp, np.arange(n, dtype=np.int64))
    return first[comp]


def pair_bounds(n: int, distinct: int, candidates: int, threshold: bool) -> tuple[int, int]:
    """Bounds on the distinct pair requests of ``n`` texts (``distinct`` of them different).

    Each row brings ``c = min(candidates, n - 1)`` pairs, each pair counted at most twice, so at
    least ``ceil(n * c / 2)`` pairs when all texts differ; at most ``n * c`` (and no more than
    there are pairs). Equal texts make equal requests: then at least ``ceil(distinct / 2)``. A
    threshold may drop any pair: then at least 0.
    """
    if n < 2:
        return 0, 0
    c = min(candidates, n - 1)
    high = min(n * c, n * (n - 1) // 2, distinct * (distinct + 1) // 2)
    if threshold:
        return 0, high
    low = math.ceil(n * c / 2) if distinct == n else math.ceil(distinct / 2)
    return min(low, high), high
