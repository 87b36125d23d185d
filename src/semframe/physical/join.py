"""The physical semantic join: three algorithms, chosen by estimated calls x tokens.

1. **nested loop** -- every left x right pair is asked (YES/NO), streamed in blocks of
   ``batch_size`` pairs, one resolver round per block: the pairs of a block are made from two
   integer ranges, so no more than one block of pairs is ever in memory.
2. **embedding blocking** -- the left and right texts (the columns the template names on each
   side) are embedded with :func:`semframe.cache.embed.default_embedder` (cached by text in the
   exact-cache store when the cache is on), each left row's top-``candidates`` right rows are
   found with :func:`semframe.execution.vectors.top_k` (exact search, numpy or FAISS), and only
   those pairs are asked. An **audit** first asks ``audit`` random pairs outside the blocks
   (a fixed seed, so a rerun asks the same ones): their YES rate times the pairs outside the
   blocks estimates the matches blocking missed, reported as the estimated recall in the step's
   ``StepMetrics.notes`` (``sf.last_run().step_metrics``) and, per pair, in lineage's ``note``.
   Audit pairs the model answers YES are matches like any other and are in the result.
3. **join as classification** -- for a small right side (at most :data:`CLASSIFY_MAX_ITEMS`
   rows, their texts within :data:`CLASSIFY_MAX_SHARED_TOKENS`), every right item is listed,
   numbered, in the shared instruction (so the engine's prefix cache computes it once), and each
   left row is one request whose answer is a JSON object ``{"matches": [numbers]}`` decoded
   under a schema of a list of item numbers (an enum); each number is a pair.

The cost model (:meth:`JoinOp.costs`): nested loop = ``|L| x |R|`` calls, blocking =
``|L| x m`` + the audit, classify = ``|L|`` calls with a longer prompt; each call's tokens are
counted on a sample of real prompts with the heuristic counter (about 4 characters a token) so
``explain()``, ``estimate()`` and the run make the same choice whatever engine counts tokens.
``"auto"`` takes the fewest calls x tokens; ``algorithm=`` forces one.

The output is the same for every algorithm: the left columns, then the right ones, ordered by
(left row, right row); ``how="left"`` adds each unmatched left row with null right columns. Each
output row's provenance is ``{left, right}`` of the two sides' provenance; each asked pair's
lineage names ``{left, right}`` too (a classify request names its left row and the list of right
rows it listed).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import polars as pl

from semframe.accounting.estimate import StepEstimate
from semframe.accounting.tokens import output_tokens, request_prompt_tokens
from semframe.errors import PlanError
from semframe.execution.context import RunContext, RunOptions
from semframe.execution.lineage import Outcome
from semframe.execution.provenance import CARRIER, Batch
from semframe.execution.render import render_exprs, render_texts
from semframe.physical.base import EstimateContext, EstState, PhysicalOp
from semframe.physical.prompts import RequestBuilder
from semframe.physical.relational import PolarsQuery
from semframe.physical.semantic import SemanticOperator, StepRun, gather, physical_for
from semframe.plan.join import CLASSIFY_MAX_ITEMS, PAIR_SPEC, SemJoin, classify_too_large, side_columns, template_from_parts
from semframe.plan.spec import FieldType, JsonSpec
from semframe.plan.template import Template

logger = logging.getLogger("semframe")

#: ... and only while their listing (the shared instruction) stays within this many tokens.
CLASSIFY_MAX_SHARED_TOKENS = 2000
#: What the classify prompt's question says in place of the right side's columns.
ITEM = "[ITEM]"
#: Up to this many pairs, the estimate renders every pair (exact calls); above, it counts.
EXACT_PAIRS = 200_000
#: Prompts sampled per algorithm for the cost model's tokens per call.
COST_SAMPLE = 32
#: The seed of the audit's sample (fixed: a rerun asks the same pairs, from the cache).
AUDIT_SEED = 0
#: Ties in the cost model go to the exact algorithms first.
_ORDER = ("nested_loop", "classify", "blocking")


@dataclass(frozen=True)
class AlgorithmCost:
    """One algorithm's estimated work for a join: engine calls and tokens (prompt + answer) per call."""

    algorithm: str
    calls: int
    tokens_per_call: float
    available: bool = True
    why_not: str = ""

    @property
    def tokens(self) -> float:
        return self.calls * self.tokens_per_call

    def describe(self) -> str:
        if not self.available:
            return f"{self.algorithm}: not possible ({self.why_not})"
        return f"{self.algorithm}: {self.calls:,} calls x {self.tokens_per_call:,.0f} tokens = {self.tokens:,.0f} tokens"


class _Sides:
    """Both inputs of one join, gathered, with what every algorithm needs of them."""

    def __init__(self, node: SemJoin, left: Batch, right: Batch):
        self.node, self.left, self.right = node, left, right
        self.left_cols = side_columns(node.template, "left")
        self.right_cols = side_columns(node.template, "right")
        # The template's columns under their qualified names, so one frame can hold a pair.
        self.left_q = left.frame.select([pl.col(c).alias(f"left.{c}") for c in self.left_cols])
        self.right_q = right.frame.select([pl.col(c).alias(f"right.{c}") for c in self.right_cols])
        self._texts: dict[str, list[str | None]] = {}

    def texts(self, side: str) -> list[str | None]:
        """Each row's text of one side: the values of the columns the template names there
        (``"; "`` between several); None where one is null (then every pair of the row is skipped)."""
        if side not in self._texts:
            cols, frame = (self.left_cols, self.left_q) if side == "left" else (self.right_cols, self.right_q)
            text, has_null, _ = render_exprs(side_template(side, cols), frame.schema)
            self._texts[side] = frame.select(pl.when(has_null).then(None).otherwise(text))[:, 0].to_list()
        return self._texts[side]

    def valid(self, side: str) -> list[int]:
        """Positions of the rows of one side that have a text."""
        return [i for i, t in enumerate(self.texts(side)) if t is not None]

    def pair_frame(self, li: pl.Series, ri: pl.Series) -> pl.DataFrame:
        return pl.concat([self.left_q.select(pl.all().gather(li)), self.right_q.select(pl.all().gather(ri))],
                         how="horizontal")

    def pair_ids(self, li: pl.Series, ri: pl.Series) -> pl.Series:
        return pl.DataFrame({"left": self.left.ids.gather(li), "right": self.right.ids.gather(ri)}).to_struct(CARRIER)


def side_template(side: str, columns: tuple[str, ...]) -> Template:
    """The text of one side's columns, ``"; "`` between them (what blocking embeds, what
    classify lists)."""
    parts: list[str] = []
    for i, c in enumerate(columns):
        parts += ["; " if i else "", f"{side}.{c}"]
    return template_from_parts([*parts, ""])


def question_template(template: Template) -> Template:
    """The join's template with the right side's columns replaced by :data:`ITEM`."""
    parts = [template.parts[0]]
    for k in range(1, len(template.parts), 2):
        name, after = template.parts[k], template.parts[k + 1]
        if name.startswith("right."):
            parts[-1] += ITEM + after
        else:
            parts += [name, after]
    return template_from_parts(parts)


def _u32(values: Any) -> pl.Series:
    return pl.Series(values, dtype=pl.UInt32)


@physical_for(SemJoin)
class JoinOp(SemanticOperator):
    """The physical ``semantic.join`` (see the module docstring)."""

    node: SemJoin

    def __init__(self, node: SemJoin, inputs: tuple[PhysicalOp, ...], index: int, options: RunOptions):
        super().__init__(node, inputs, index, options)
        self.pair_builder = RequestBuilder(self.pair_shared(), PAIR_SPEC, node.effective_max_tokens,
                                           node.temperature, options.prompt_layout)
        self.question = question_template(node.template)
        self._explained: tuple[str, list[AlgorithmCost]] | None = None

    # ------------------------------------------------------------------ prompts

    def pair_shared(self) -> str:
        lead = self.node.instruction or "Answer the question about the two records."
        return f"{lead}\nAnswer with exactly one word: YES or NO."

    def classify_spec(self, n: int) -> JsonSpec:
        numbers = FieldType("enum", values=tuple(range(1, n + 1)))
        return JsonSpec((("matches", FieldType("list", item=numbers, max_length=n)),))

    def classify_builder(self, items: list[str]) -> RequestBuilder:
        node = self.node
        lead = node.instruction or "Answer the question for each numbered item."
        listing = "\n".join(f"{k}. {text}" for k, text in enumerate(items, 1))
        shared = (f"{lead}\nIn the question, {ITEM} stands for each of these items in turn:\n{listing}\n"
                  'Reply with a JSON object {"matches": [...]} listing the numbers of the items for which '
                  "the answer is YES (an empty list if there are none).")
        spec = self.classify_spec(len(items))
        max_tokens = node.max_tokens if node.max_tokens is not None else spec.default_max_tokens()
        return RequestBuilder(shared, spec, max_tokens, node.temperature, self.options.prompt_layout)

    # ------------------------------------------------------------------ the cost model

    def costs(self, s: _Sides) -> list[AlgorithmCost]:
        """Every algorithm's estimated calls and tokens per call on these inputs (no engine asked)."""
        node = self.node
        lv, rv = s.valid("left"), s.valid("right")
        nl, nr = len(lv), len(rv)
        rng = random.Random(AUDIT_SEED)
        pair_tokens = 1.0 + output_tokens(PAIR_SPEC, node.effective_max_tokens).typical
        if nl and nr:
            li = _u32([rng.choice(lv) for _ in range(COST_SAMPLE)])
            ri = _u32([rng.choice(rv) for _ in range(COST_SAMPLE)])
            texts = [t for t in render_texts(node.template, s.pair_frame(li, ri))[0] if t is not None]
            if texts:
                pair_tokens = (sum(request_prompt_tokens(self.pair_builder.build(t)) for t in texts) / len(texts)
                               + output_tokens(PAIR_SPEC, node.effective_max_tokens).typical)
        nested = AlgorithmCost("nested_loop", nl * nr, pair_tokens)
        m = min(node.candidates, nr)
        outside = nl * nr - nl * m
        audit = min(node.audit, outside)
        why = ""
        if m >= nr:
            why = f"the right side has {nr} row(s), not more than candidates={node.candidates}"
        elif not embeddings_available():
            why = "no embedding model is installed (pip install 'semframe[embeddings]')"
        blocking = AlgorithmCost("blocking", nl * m + audit, pair_tokens, available=not why, why_not=why)
        return [nested, self._classify_cost(s, lv, rv), blocking]

    def _classify_cost(self, s: _Sides, lv: list[int], rv: list[int]) -> AlgorithmCost:
        if len(rv) > CLASSIFY_MAX_ITEMS:
            return AlgorithmCost("classify", len(lv), 0.0, False,
                                 f"the right side has {len(rv):,} rows; at most {CLASSIFY_MAX_ITEMS} are listed")
        if not rv:
            return AlgorithmCost("classify", 0, 0.0)
        texts = s.texts("right")
        builder = self.classify_builder([texts[i] for i in rv])  # type: ignore[misc]
        shared = request_prompt_tokens(builder.build(""))
        if shared > CLASSIFY_MAX_SHARED_TOKENS:
            return AlgorithmCost("classify", len(lv), 0.0, False,
                                 f"listing the right side takes ~{shared:,} tokens, over {CLASSIFY_MAX_SHARED_TOKENS:,}")
        questions = [t for t in render_texts(self.question, s.left_q)[0] if t is not None][:COST_SAMPLE]
        per_call = (sum(request_prompt_tokens(builder.build(q)) for q in questions) / len(questions)
                    if questions else shared)
        per_call += output_tokens(builder.spec, builder.max_tokens).typical
        return AlgorithmCost("classify", len(lv), per_call)

    def choose(self, costs: list[AlgorithmCost]) -> AlgorithmCost:
        """The forced algorithm, or the available one with the fewest calls x tokens."""
        by_name = {c.algorithm: c for c in costs}
        forced = self.node.algorithm
        if forced != "auto":
            chosen = by_name[forced]
            if forced == "classify" and not chosen.available:
                raise PlanError(f"semantic.join: algorithm='classify' is not possible: {chosen.why_not}; "
                                "use algorithm='blocking' or 'nested_loop'")
            return chosen
        usable = [c for c in costs if c.available]
        return min(usable, key=lambda c: (c.tokens, _ORDER.index(c.algorithm)))

    # ------------------------------------------------------------------ execution

    def execute(self, ctx: RunContext) -> Iterator[Batch]:
        right = gather(self.inputs[1], ctx)
        if self.node.algorithm == "classify" and right.height > CLASSIFY_MAX_ITEMS:
            raise PlanError(classify_too_large(right.height))  # before the left side asks anything
        left = gather(self.inputs[0], ctx)
        run = self.open_step(ctx, left.height)  # progress counts left rows done
        start = time.perf_counter()
        s = _Sides(self.node, left, right)
        costs = self.costs(s)
        chosen = self._blocking_for_recall(costs) if self.node.approx is not None else self.choose(costs)
        self._explained = (chosen.algorithm, costs)
        metrics = run.metrics
        metrics.rows_in = left.height + right.height
        metrics.notes.update(algorithm=chosen.algorithm, estimated_calls=chosen.calls,
                             all_pairs=left.height * right.height)
        algorithm = {"nested_loop": self._nested_loop, "blocking": self._blocking,
                     "classify": self._classify}[chosen.algorithm]
        if self.node.approx is not None:
            algorithm = self._blocking_recall
        metrics.seconds += time.perf_counter() - start
        stream = algorithm(ctx, run, s)
        while True:
            start = time.perf_counter()
            step = next(stream, None)
            metrics.seconds += time.perf_counter() - start
            if step is None:
                break
            batch, left_rows = step
            metrics.rows_out += batch.height
            if ctx.progress is not None:
                ctx.progress.rows(left_rows, step=self.index)
            yield batch
        self.close_step(ctx, run)

    def _ask(self, ctx: RunContext, run: StepRun, requests: list[Any], texts: list[str | None], ids: pl.Series,
             reasons: list[str | None], note: str | None = None) -> list[Outcome]:
        """:meth:`SemanticOperator.ask`, with a lineage ``note`` on every record (the audit's)."""
        if note is None:
            return self.ask(ctx, run, requests, texts, ids, reasons)
        outcomes = ctx.resolver.resolve(run.info, requests, texts, None)
        done = [replace(Outcome(None, "skipped", error=reasons[i] or "no request") if o is None else o, note=note)
                for i, o in enumerate(outcomes)]
        ctx.recorder.record(self.index, self.node.operator, None, run.model, ids, done)
        run.metrics.add_all(done)
        return done

    def _ask_pairs(self, ctx: RunContext, run: StepRun, s: _Sides, li: pl.Series, ri: pl.Series,
                   note: str | None = None) -> pl.Series:
        """Ask the pairs ``(li[k], ri[k])`` in one round; True where the model answered YES."""
        texts, reasons = render_texts(self.node.template, s.pair_frame(li, ri))
        done = self._ask(ctx, run, self.pair_builder.build_all(texts), texts, s.pair_ids(li, ri), reasons, note)
        return pl.Series([o.value == "YES" for o in done], dtype=pl.Boolean)

    def _emit(self, s: _Sides, lo: int, hi: int, li: pl.Series, ri: pl.Series) -> Batch:
        """The output rows of left rows ``lo..hi-1`` given their matched pairs, by (left, right)."""
        pairs = pl.DataFrame({"li": li, "ri": ri}, schema={"li": pl.UInt32, "ri": pl.UInt32})
        if self.node.how == "left":
            rows = pl.DataFrame({"li": pl.int_range(lo, hi, dtype=pl.UInt32, eager=True)})
            lonely = rows.filter(~pl.col("li").is_in(pairs["li"].implode()))
            pairs = pl.concat([pairs, lonely.with_columns(ri=pl.lit(None, dtype=pl.UInt32))])
        pairs = pairs.unique(maintain_order=True).sort("li", "ri", nulls_last=True)
        li, ri = pairs["li"], pairs["ri"]
        right = s.right.frame.select(pl.all().gather(ri)).rename(self.node.right_names())
        frame = pl.concat([s.left.frame.select(pl.all().gather(li)), right], how="horizontal")
        return Batch(frame, s.pair_ids(li, ri))

    # Each algorithm yields (output batch, left rows it finished).

    def _nested_loop(self, ctx: RunContext, run: StepRun, s: _Sides) -> Iterator[tuple[Batch, int]]:
        nl, nr = s.left.height, s.right.height
        total, block = nl * nr, ctx.options.batch_size
        if nr == 0:
            yield self._emit(s, 0, nl, _u32([]), _u32([])), nl
            return
        done_left = 0
        found_li: list[pl.Series] = []
        found_ri: list[pl.Series] = []
        for start in range(0, total, block):
            idx = pl.int_range(start, min(start + block, total), dtype=pl.UInt64, eager=True)
            li, ri = (idx // nr).cast(pl.UInt32), (idx % nr).cast(pl.UInt32)
            yes = self._ask_pairs(ctx, run, s, li, ri)
            found_li.append(li.filter(yes))
            found_ri.append(ri.filter(yes))
            complete = (start + idx.len()) // nr  # left rows whose every pair is answered
            if complete > done_left:
                mli, mri = pl.concat(found_li), pl.concat(found_ri)
                keep = mli < complete
                yield self._emit(s, done_left, complete, mli.filter(keep), mri.filter(keep)), complete - done_left
                found_li, found_ri = [mli.filter(~keep)], [mri.filter(~keep)]
                done_left = complete
        if done_left < nl:  # only with no pairs at all
            yield self._emit(s, done_left, nl, _u32([]), _u32([])), nl - done_left

    def _blocking(self, ctx: RunContext, run: StepRun, s: _Sides) -> Iterator[tuple[Batch, int]]:
        import numpy as np

        from semframe.execution.vectors import top_k

        node, notes = self.node, run.metrics.notes
        lv, rv = s.valid("left"), s.valid("right")
        m = min(node.candidates, len(rv))
        start, cpu = time.perf_counter(), time.process_time()
        cand_li = np.zeros(0, dtype=np.int64)
        cand_ri = np.zeros(0, dtype=np.int64)
        if lv and rv:
            store = getattr(ctx.resolver.exact_cache, "store", None) if self.exact_cache else None
            embedder = default_embedder()
            ltexts, rtexts = s.texts("left"), s.texts("right")
            queries = embedder.embed([ltexts[i] for i in lv], store)
            corpus = embedder.embed([rtexts[i] for i in rv], store)
            idx, _ = top_k(queries, corpus, m)
            cand_li = np.repeat(np.asarray(lv, dtype=np.int64), idx.shape[1])
            cand_ri = np.asarray(rv, dtype=np.int64)[idx.reshape(-1)]
        notes["embedding_seconds"] = time.perf_counter() - start  # embedding and the top-k search
        notes["embedding_cpu_seconds"] = time.process_time() - cpu  # (this process's CPU time: on a busy machine)
        order = np.lexsort((cand_ri, cand_li))
        cand_li, cand_ri = cand_li[order], cand_ri[order]
        nr = s.right.height
        blocked = set((cand_li * nr + cand_ri).tolist())
        outside = len(lv) * len(rv) - len(blocked)
        # The audit: random pairs outside the blocks, asked first (one round).
        audit = self._audit_pairs(lv, rv, blocked, nr, min(node.audit, outside))
        audit_li, audit_ri = _u32([p[0] for p in audit]), _u32([p[1] for p in audit])
        audit_yes = pl.Series([], dtype=pl.Boolean)
        if audit:
            audit_yes = self._ask_pairs(ctx, run, s, audit_li, audit_ri, note="blocking audit: a pair outside the blocks")
        hits_li, hits_ri = audit_li.filter(audit_yes), audit_ri.filter(audit_yes)
        # The candidates, a block of left rows per round.
        rows_per_round = max(1, ctx.options.batch_size // max(1, m))
        found = 0
        for lo in range(0, max(s.left.height, 1), rows_per_round):
            hi = min(lo + rows_per_round, s.left.height)
            a, b = (int(x) for x in np.searchsorted(cand_li, [lo, hi]))
            li, ri = _u32(cand_li[a:b]), _u32(cand_ri[a:b])
            yes = self._ask_pairs(ctx, run, s, li, ri) if len(li) else pl.Series([], dtype=pl.Boolean)
            found += int(yes.sum())
            in_block = (hits_li >= lo) & (hits_li < hi)
            yield self._emit(s, lo, hi, pl.concat([li.filter(yes), hits_li.filter(in_block)]),
                             pl.concat([ri.filter(yes), hits_ri.filter(in_block)])), hi - lo
        notes.update(self.recall_notes(m, len(cand_li), len(audit), int(audit_yes.sum()), found, outside))
        logger.info("semantic.join (step %d), blocking with %d candidates: %d pairs asked of %d; audit: %d of %d "
                    "pairs outside the blocks answered YES, estimated recall %s", self.index, m, notes["pairs_asked"],
                    s.left.height * s.right.height, notes["audit_yes"], len(audit), notes["estimated_recall"])

    def _blocking_for_recall(self, costs: list[AlgorithmCost]) -> AlgorithmCost:
        """A recall target always runs blocking (widened until certified)."""
        chosen = next(c for c in costs if c.algorithm == "blocking")
        if not embeddings_available():
            raise PlanError(f"semantic.join: a recall target needs embedding blocking, which is not possible "
                            f"here ({chosen.why_not}); install an embedder or drop approx=")
        return chosen

    def _blocking_recall(self, ctx: RunContext, run: StepRun, s: _Sides) -> Iterator[tuple[Batch, int]]:
        """Blocking with a certified recall (``approx=sf.Target(recall=...)``).

        1. Rank every valid right row for each valid left row by embedding similarity.
        2. Ask a simple random sample of the pairs outside the first blocks (each left row's
           ``candidates`` most similar right rows): ``Target.sample`` pairs (default a fifth of
           them, 200-2,000).
        3. Widen the blocks along the fixed schedule ``m, 2m, 4m, ...`` (up to every right row),
           asking the new pairs; after each widening, the sampled pairs still outside the blocks
           are a simple random sample of the pairs outside, so the exact hypergeometric upper
           bound of the matches among them bounds the matches lost. Stop at the first width whose
           bound ``found / (found + lost_high)`` reaches the target; each test runs at
           ``(1 - confidence) / tests`` (Bonferroni over the schedule), so the width stopped at
           is certified with probability at least ``confidence``. At full width nothing is lost.
        """
        import numpy as np

        from semframe.execution.calibration import default_sample_size, hypergeometric_upper
        from semframe.execution.vectors import top_k

        node, notes, target = self.node, run.metrics.notes, self.node.approx
        lv, rv = s.valid("left"), s.valid("right")
        nl = s.left.height
        if not lv or not rv:
            notes.update(recall_target=target.recall, recall_bound=1.0, certified=True, pairs_asked=0)
            yield self._emit(s, 0, nl, _u32([]), _u32([])), nl
            return
        start, cpu = time.perf_counter(), time.process_time()
        store = getattr(ctx.resolver.exact_cache, "store", None) if self.exact_cache else None
        embedder = default_embedder()
        ltexts, rtexts = s.texts("left"), s.texts("right")
        queries = embedder.embed([ltexts[i] for i in lv], store)
        corpus = embedder.embed([rtexts[i] for i in rv], store)
        order, _ = top_k(queries, corpus, len(rv))  # every right row of each left row, most similar first
        notes["embedding_seconds"] = time.perf_counter() - start
        notes["embedding_cpu_seconds"] = time.process_time() - cpu
        lva, rva = np.asarray(lv, dtype=np.int64), np.asarray(rv, dtype=np.int64)
        width, first = len(rv), min(node.candidates, len(rv))
        schedule = [first]
        while schedule[-1] < width:
            schedule.append(min(width, schedule[-1] * 2))
        tests = max(1, len(schedule) - 1)  # the full width needs no test
        level = 1.0 - (1.0 - target.confidence) / tests
        outside = len(lv) * (width - first)
        size = min(outside, target.sample if target.sample is not None else default_sample_size(outside))
        picks = np.asarray(sorted(random.Random(target.seed).sample(range(outside), size)), dtype=np.int64) \
            if size else np.zeros(0, dtype=np.int64)
        span = max(1, width - first)
        s_row, s_rank = picks // span, first + picks % span  # (left position, rank) of each sampled pair
        s_yes = np.zeros(size, dtype=bool)
        if size:
            asked = self._ask_pairs(ctx, run, s, _u32(lva[s_row]), _u32(rva[order[s_row, s_rank]]),
                                    note="recall sample: a random pair outside the first blocks")
            s_yes = asked.to_numpy().astype(bool)
        sampled = set((s_row * width + s_rank).tolist())
        found_li: list[Any] = [lva[s_row[s_yes]]]
        found_ri: list[Any] = [rva[order[s_row[s_yes], s_rank[s_yes]]]]
        found, lo, tested = 0, 0, []
        block = max(1, ctx.options.batch_size)
        bound, chosen = 1.0, width
        for m in schedule:
            rows, ranks = np.divmod(np.arange(len(lv) * (m - lo), dtype=np.int64), m - lo)
            ranks = ranks + lo
            keep = np.fromiter(((r * width + k) not in sampled for r, k in zip(rows.tolist(), ranks.tolist())),
                               dtype=bool, count=len(rows))
            rows, ranks = rows[keep], ranks[keep]
            for a in range(0, len(rows), block):
                li, ri = lva[rows[a:a + block]], rva[order[rows[a:a + block], ranks[a:a + block]]]
                yes = self._ask_pairs(ctx, run, s, _u32(li), _u32(ri)).to_numpy().astype(bool)
                found += int(yes.sum())
                found_li.append(li[yes])
                found_ri.append(ri[yes])
            lo = m
            if m == width:
                bound, chosen = 1.0, m
                tested.append((m, 0, 0, 1.0, True))
                break
            out = s_rank >= m
            n_out, yes_out = int(out.sum()), int(s_yes[out].sum())
            lost_high = hypergeometric_upper(yes_out, n_out, len(lv) * (width - m), level) - yes_out
            kept = found + int(s_yes.sum())
            bound = 1.0 if kept + lost_high == 0 else kept / (kept + lost_high)
            tested.append((m, n_out, yes_out, bound, bound >= target.recall))
            if bound >= target.recall:
                chosen = m
                break
        li_all = np.concatenate(found_li) if found_li else np.zeros(0, dtype=np.int64)
        ri_all = np.concatenate(found_ri) if found_ri else np.zeros(0, dtype=np.int64)
        notes.update(recall_target=target.recall, confidence=target.confidence, recall_bound=bound,
                     candidates_final=chosen, certified=True, sample_pairs=size, sample_yes=int(s_yes.sum()),
                     found_in_blocks=found, pairs_asked=run.metrics.engine_requests + run.metrics.dedup_hits
                     + run.metrics.exact_cache_hits, outside_pairs=len(lv) * (width - chosen),
                     tests=[{"candidates": m, "sampled_outside": n, "sampled_yes": y, "recall_bound": b,
                             "certified": ok} for m, n, y, b, ok in tested])
        yield self._emit(s, 0, nl, _u32(li_all.tolist()), _u32(ri_all.tolist())), nl

    @staticmethod
    def _audit_pairs(lv: list[int], rv: list[int], blocked: set[int], nr: int, n: int) -> list[tuple[int, int]]:
        """``n`` distinct random pairs of rows with texts, outside the blocks (fixed seed)."""
        if n <= 0:
            return []
        rng = random.Random(AUDIT_SEED)
        if n * 4 >= len(lv) * len(rv) - len(blocked):  # few pairs outside: list them all, sample
            every = [(i, j) for i in lv for j in rv if i * nr + j not in blocked]
            return sorted(rng.sample(every, n))
        chosen: set[tuple[int, int]] = set()
        while len(chosen) < n:
            i, j = rng.choice(lv), rng.choice(rv)
            if i * nr + j not in blocked:
                chosen.add((i, j))
        return sorted(chosen)

    @staticmethod
    def recall_notes(m: int, asked: int, audited: int, audit_yes: int, found: int, outside: int) -> dict[str, Any]:
        """What the audit says about blocking's recall.

        The audit's YES rate ``p`` over the pairs outside the blocks estimates the matches the
        blocks missed (``p x outside``); the estimated recall is ``found / (found + missed)``.
        ``recall_low_95`` uses the Wilson 95% upper bound of ``p`` instead (with no YES in
        ``n`` audit pairs that bound is about ``3.8 / n``, so a small audit of a large join
        proves little: raise ``audit=`` to tighten it).
        """
        notes: dict[str, Any] = {"candidates": m, "pairs_asked": asked + audited, "audit_pairs": audited,
                                 "audit_yes": audit_yes, "found_in_blocks": found, "outside_pairs": outside}
        if audited:
            p = audit_yes / audited
            z = 1.96
            high = (p + z * z / (2 * audited) + z * math.sqrt(p * (1 - p) / audited + z * z / (4 * audited ** 2))) \
                / (1 + z * z / audited)
            missed = p * outside
            notes["estimated_missed"] = missed
            notes["estimated_recall"] = found / (found + missed) if found + missed else 1.0
            notes["recall_low_95"] = found / (found + high * outside) if found + high * outside else 1.0
        else:
            notes["estimated_missed"] = 0.0 if outside == 0 else None
            notes["estimated_recall"] = 1.0 if outside == 0 else None
            notes["recall_low_95"] = 1.0 if outside == 0 else None
        return notes

    def _classify(self, ctx: RunContext, run: StepRun, s: _Sides) -> Iterator[tuple[Batch, int]]:
        rv = s.valid("right")
        rtexts = s.texts("right")
        builder = self.classify_builder([rtexts[i] for i in rv]) if rv else None  # type: ignore[misc]
        listed = s.right.ids.gather(_u32(rv)).to_list()
        questions, reasons = render_texts(self.question, s.left_q)
        size = ctx.options.batch_size
        for lo in range(0, max(s.left.height, 1), size):
            hi = min(lo + size, s.left.height)
            texts = questions[lo:hi]
            if builder is None:
                requests, why = [None] * len(texts), ["the right side has no row to match"] * len(texts)
            else:
                requests, why = builder.build_all(texts), reasons[lo:hi]
            ids = pl.DataFrame({"left": s.left.ids.slice(lo, hi - lo),
                                "right": pl.Series([listed] * (hi - lo))}).to_struct(CARRIER)
            done = self.ask(ctx, run, requests, texts, ids, why) if hi > lo else []
            li: list[int] = []
            ri: list[int] = []
            for k, o in enumerate(done):
                for number in sorted(set((o.value or {}).get("matches") or ())):
                    li.append(lo + k)
                    ri.append(rv[number - 1])
            yield self._emit(s, lo, hi, _u32(li), _u32(ri)), hi - lo

    # ------------------------------------------------------------------ estimation

    def estimate(self, est: EstimateContext) -> EstState:
        node = self.node
        ls, rs = self.inputs[0].estimate(est), self.inputs[1].estimate(est)
        known = (ls.batch is not None and rs.batch is not None
                 and not (set(side_columns(node.template, "left")) & ls.unknown)
                 and not (set(side_columns(node.template, "right")) & rs.unknown))
        if known:
            s = _Sides(node, ls.batch, rs.batch)  # type: ignore[arg-type]
            costs = self.costs(s)
            chosen = self.choose(costs)
            self._explained = (chosen.algorithm, costs)
            calls, exact, prompt_tokens, out = self._estimate_calls(s, chosen, est)
            exact = exact and ls.exact and rs.exact and not est.under_head
            calls_low = calls if exact else min(calls, round(calls * min(1.0, ls.rows_low / max(1, ls.rows_high))))
            if chosen.algorithm == "blocking":
                # Repeated pair texts are asked once: surely asked is one pair per distinct left text.
                left_texts = s.texts("left")
                calls_low = min(calls_low, len({left_texts[i] for i in s.valid("left")}))
        else:
            # Rows written by an earlier step: every row is a call, at the template's size.
            nl, nr = round(ls.rows_high), round(rs.rows_high)
            chosen = self.choose(self._blind_costs(nl, nr))
            calls_low = calls = chosen.calls
            exact, out = False, output_tokens(PAIR_SPEC, node.effective_max_tokens, est.count)
            prompt_tokens = request_prompt_tokens(self.pair_builder.build(node.template.source), est.engine)
        if node.approx is not None:  # the blocks and the sample at least; every pair if widened to the end
            from semframe.execution.calibration import default_sample_size

            nl, nr = ((len(s.valid("left")), len(s.valid("right"))) if known
                      else (round(ls.rows_high), round(rs.rows_high)))
            m = min(node.candidates, nr)
            outside = nl * (nr - m)
            sample = min(outside, node.approx.sample if node.approx.sample is not None
                         else default_sample_size(outside))
            calls, exact = nl * nr, False
            calls_low = min(calls, nl * m + sample)
        est.steps.append(StepEstimate(
            step=self.index, operator=node.operator, column=None,
            rows_low=round(ls.rows_low), rows_high=round(ls.rows_high), skipped=0,
            calls_low=calls_low, calls_high=calls, rows_exact=exact,
            prompt_tokens_per_call=prompt_tokens, output_tokens_per_call=(out.low, out.typical, out.high),
        ))
        pairs_high = round(ls.rows_high * rs.rows_high)
        if chosen.algorithm == "blocking" and node.approx is None:
            pairs_high = min(pairs_high, chosen.calls)
        low = ls.rows_low if node.how == "left" else 0
        high = max(pairs_high, round(ls.rows_high)) if node.how == "left" else pairs_high
        return EstState(None, low, high, False, frozenset(node.columns))

    def _blind_costs(self, nl: int, nr: int) -> list[AlgorithmCost]:
        node = self.node
        m = min(node.candidates, nr)
        audit = min(node.audit, nl * nr - nl * m)
        blocking_ok = m < nr and embeddings_available()
        return [AlgorithmCost("nested_loop", nl * nr, 1.0),
                AlgorithmCost("classify", nl, float(max(1, nr)), nr <= CLASSIFY_MAX_ITEMS, "the right side is large"),
                AlgorithmCost("blocking", nl * m + audit, 1.0, blocking_ok, "no embeddings or a small right side")]

    def _estimate_calls(self, s: _Sides, chosen: AlgorithmCost, est: EstimateContext) -> tuple[int, bool, float, Any]:
        """(calls, exact, prompt tokens per call, output TokenRange) of the chosen algorithm."""
        node = self.node
        if chosen.algorithm == "classify":
            rv = s.valid("right")
            if not rv:
                return 0, True, 0.0, output_tokens(PAIR_SPEC, 1, est.count)
            builder = self.classify_builder([s.texts("right")[i] for i in rv])  # type: ignore[misc]
            texts = pl.Series(render_texts(self.question, s.left_q)[0], dtype=pl.String).drop_nulls()
            pool = texts.unique(maintain_order=True) if self.dedupe else texts
            sample = pool.head(est.sample).to_list()
            tokens = (sum(request_prompt_tokens(builder.build(t), est.engine) for t in sample) / len(sample)
                      if sample else 0.0)
            return pool.len(), True, tokens, output_tokens(builder.spec, builder.max_tokens, est.count)
        out = output_tokens(PAIR_SPEC, node.effective_max_tokens, est.count)
        lv, rv = s.valid("left"), s.valid("right")
        sample = self._pair_sample(s, lv, rv, est.sample)
        tokens = (sum(request_prompt_tokens(self.pair_builder.build(t), est.engine) for t in sample) / len(sample)
                  if sample else 0.0)
        if chosen.algorithm == "blocking":
            return chosen.calls, False, tokens, out
        total = s.left.height * s.right.height
        if total > EXACT_PAIRS:
            return chosen.calls, False, tokens, out
        # Render every pair, as the run will (nulls and blanks skipped, repeats asked once).
        seen: set[str] = set()
        count = 0
        for start in range(0, total, 65_536):
            idx = pl.int_range(start, min(start + 65_536, total), dtype=pl.UInt64, eager=True)
            li, ri = (idx // s.right.height).cast(pl.UInt32), (idx % s.right.height).cast(pl.UInt32)
            texts = [t for t in render_texts(node.template, s.pair_frame(li, ri))[0] if t is not None]
            if self.dedupe:
                seen.update(texts)
            else:
                count += len(texts)
        return (len(seen) if self.dedupe else count), True, tokens, out

    def _pair_sample(self, s: _Sides, lv: list[int], rv: list[int], n: int) -> list[str]:
        if not lv or not rv:
            return []
        rng = random.Random(AUDIT_SEED)
        li = _u32([rng.choice(lv) for _ in range(n)])
        ri = _u32([rng.choice(rv) for _ in range(n)])
        return [t for t in render_texts(self.node.template, s.pair_frame(li, ri))[0] if t is not None]

    # ------------------------------------------------------------------ display

    def describe(self) -> str:
        node = self.node
        chosen = self._choice_for_explain()
        if node.algorithm != "auto":
            algo = f"algorithm={node.algorithm} (forced)"
        elif chosen is not None:
            algo = f"algorithm=auto -> {chosen[0]}"
        else:
            algo = "algorithm=auto (chosen when the inputs are read)"
        flags = [f"how={node.how}", algo]
        if node.approx is not None:
            flags.append(f"candidates={node.candidates}, approx recall >= {node.approx.recall:g} "
                         f"@ confidence {node.approx.confidence:g}")
        elif node.algorithm in ("auto", "blocking"):
            flags.append(f"candidates={node.candidates}, audit={node.audit}")
        flags.append(f"max_tokens={node.effective_max_tokens}")
        flags += self.planning_flags()
        if node.temperature:
            flags.append(f"temperature={node.temperature:g}")
        return f"SEMANTIC JOIN (step {self.index}) [{', '.join(flags)}]"

    def detail_lines(self) -> list[str]:
        lines = self.node.detail_lines()
        chosen = self._choice_for_explain()
        if chosen is not None:
            name, costs = chosen
            lines.append("cost model (calls x tokens per call):")
            lines += [f"  {c.describe()}{'  <- chosen' if c.algorithm == name else ''}" for c in costs]
        return lines

    def _choice_for_explain(self) -> tuple[str, list[AlgorithmCost]] | None:
        """The algorithm and every algorithm's cost, where known without reading files: after an
        estimate or a run, or at once when both inputs are data in memory."""
        if self._explained is None and all(_in_memory(op) for op in self.inputs):
            from semframe.execution import provenance

            left, right = (provenance.to_batch(op.frame().collect()) for op in self.inputs)  # type: ignore[attr-defined]
            costs = self.costs(_Sides(self.node, left, right))
            try:
                self._explained = (self.choose(costs).algorithm, costs)
            except PlanError as exc:
                return (f"impossible: {exc}", costs)
        return self._explained


def _in_memory(op: PhysicalOp) -> bool:
    """True for a polars query over data in memory only (reading it for explain costs no I/O)."""
    return isinstance(op, PolarsQuery) and all(
        s.in_memory or "SCAN" not in s.frame.explain(optimized=False) for s in op.sources)


def default_embedder() -> Any:
    """The embedder blocking uses (tests replace it)."""
    from semframe.cache.embed import default_embedder as embedder

    return embedder()


_EMBEDDINGS: list[bool] = []


def embeddings_available() -> bool:
    """True if an embedding model can be loaded (checked once per process, loads nothing)."""
    if not _EMBEDDINGS:
        import importlib.util

        from semframe.errors import SemframeError

        ok = importlib.util.find_spec("sentence_transformers") is not None
        if ok:
            try:
                default_embedder()
            except SemframeError:
                ok = False
        _EMBEDDINGS.append(ok)
    return _EMBEDDINGS[0]
