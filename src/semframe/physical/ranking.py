"""Physical operator of ``semantic.topk`` and ``semantic.sort``: pairwise comparisons in rounds.

**quickselect** (the default): a partial quicksort whose partitions run side by side. The rows
to rank start as one *block* that needs its best ``k`` rows in order. Each round, every block
with more than one row and a need picks a pivot (a fixed-seed random choice, so a rerun makes the
same requests) and compares each of its other rows to the pivot; all those comparisons go to the
answer resolver together, as one engine batch. A block splits into the rows that beat the pivot,
the pivot, and the rest; each part keeps what is still needed of it (the rest is dropped once the
best ``k`` are known to lie above it). When every block left is one row, the blocks in order are
the answer. With random pivots that takes (Martinez, "Partial quicksort", 2004)
``2n + 2(n+1)H(n) - 2(n+3-k)H(n+1-k) - 6k + 6`` comparisons on average -- about ``2n + 2k ln k``
-- and quicksort's ``2(n+1)H(n) - 4n`` for a full sort; at worst every pair, ``n(n-1)/2``.

Where a block is large and needs few of its rows (at least 64 rows, ``k`` at most 1/8 of them),
its first pivot comes from a sample instead (:func:`sample_plan`, after Floyd and Rivest): about
``n/k`` rows drawn at random are ranked first, by the same loop, and the sample's 4th best is
the pivot, so only ~4k rows beat it and one partition discards the rest. About ``1.3n``
comparisons instead of ``2.1n`` for k = 10 of 1,000, for some more (smaller) rounds. A block that
needs only its best row takes no pivot: neighbouring rows are compared and the winners go on (a
knockout: ``n - 1`` comparisons in ``log2 n`` rounds).

Each pair is compared at most once per run (decisions are kept by the unordered pair). With
``both_orders=False`` a pair is asked once, the earlier row (by input position) as ``A``, so the
request -- and its exact-cache key -- is the same whichever side asked. With ``both_orders=True``
it is asked as ``(A, B)`` and ``(B, A)`` in the same round: an item wins only when both answers
name it; a disagreement (the model preferring a position, not an item) or a missing answer is a
tie, and a tie goes to the earlier row. So a model that always answers "A" leaves the rows in
input order.

**score** (opt in with ``algorithm="score"``): each row is rated once, 1 to 10, in one round of
``n`` requests; rows are ordered by rating, ties by input position.

Lineage: each comparison request is a record whose provenance is ``{"a": ..., "b": ...}`` (the
two rows shown as A and B) and whose ``note`` says who won the pair (``winner: a`` or ``winner: b``,
plus why on a tie); the comparisons an output row won are the records that name it on the
winning side. An output row's provenance is its own input row.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import polars as pl

from semframe.accounting.estimate import StepEstimate
from semframe.accounting.tokens import output_tokens, request_prompt_tokens
from semframe.execution.context import RunContext, RunOptions
from semframe.execution.lineage import Outcome
from semframe.execution.provenance import Batch
from semframe.execution.render import render_texts
from semframe.physical.base import EstimateContext, EstState, PhysicalOp
from semframe.physical.prompts import RequestBuilder
from semframe.physical.relational import PolarsQuery
from semframe.physical.semantic import SemanticOperator, StepRun, gather, physical_for
from semframe.plan.ranking import COMPARISON_SPEC, SCORE_SPEC, SemRank, SemSort, SemTopK

#: Seed of the pivot choice: fixed, so the same rows always make the same requests.
PIVOT_SEED = 0

#: ``decide(pairs) -> {pair: True if pair[0] ranks above pair[1]}`` for pairs ``(i, j)``, ``i < j``.
Decide = Callable[[list[tuple[int, int]]], dict[tuple[int, int], bool]]


# --------------------------------------------------------------------------- the algorithm


#: A block at least this large, needing at most 1/8 of its rows, takes its first pivot from a sample.
SAMPLE_MIN = 64
#: The sampled pivot is the sample's ``SAMPLE_RANK``-th best row (see :func:`sample_plan`).
SAMPLE_RANK = 4


def sample_plan(size: int, need: int) -> tuple[int, int] | None:
    """``(sample size, rank in the sample)`` of the first pivot of a block, or None (a random pivot).

    For a block of ``size`` rows that needs its best ``need`` (far fewer), a random pivot wastes
    about ``size`` comparisons on rows far below the best ones. Instead a random sample of
    ``size / need`` rows (so about one of the best ``need`` is expected in it) is ranked first,
    and its 4th best row is the pivot: about ``4 * need`` rows beat it, and fewer than ``need``
    do with a probability of about 2% (then the rest is found below it, as usual). The idea is
    Floyd and Rivest's (SELECT, 1975), with a fixed sample rank.
    """
    if size < SAMPLE_MIN or need * 8 > size or need == 1:
        return None  # (the best one row is a knockout: no pivot at all)
    t = min(size // 2, math.ceil(size / need))
    return t, min(SAMPLE_RANK, t)


def quickselect_rounds(n: int, k: int | None, decide: Decide, seed: int = PIVOT_SEED) -> tuple[list[int], int]:
    """The best ``k`` of items ``0..n-1`` (all of them if ``k`` is None), best first, and the
    number of rounds (calls of ``decide``) it took.

    ``decide`` gets each round's pairs at once, each ``(i, j)`` with ``i < j`` and never one it
    was given before, and says for each whether ``i`` ranks above ``j``.

    >>> score = [3, 1, 4, 0, 5, 2]
    >>> order, rounds = quickselect_rounds(6, 3, lambda pairs: {(i, j): score[i] > score[j] for i, j in pairs})
    >>> order
    [4, 2, 0]
    """
    need = n if k is None else min(k, n)
    rng = random.Random(seed)
    known: dict[tuple[int, int], bool] = {}
    rounds = [0]

    def ask(pairs: list[tuple[int, int]]) -> None:
        todo = [pair for pair in dict.fromkeys(pairs) if pair not in known]
        if todo:
            answers = decide(todo)
            known.update((pair, answers[pair]) for pair in todo)
            rounds[0] += 1

    order = _rank(list(range(n)), need, ask, known, rng)
    return order, rounds[0]


def _rank(members: list[int], need: int, ask: Callable[[list[tuple[int, int]]], None],
          known: dict[tuple[int, int], bool], rng: random.Random) -> list[int]:
    """The best ``need`` of ``members``, best first (the loop the module docstring describes)."""
    if not need or not members:
        return []

    def above(i: int, j: int) -> bool:
        return known[(i, j)] if i < j else not known[(j, i)]

    first = None
    plan = sample_plan(len(members), need)
    if plan is not None:  # rank a sample first: its 4th best is a pivot just above the best `need`
        t, j = plan
        first = _rank(sorted(rng.sample(members, t)), j, ask, known, rng)[-1]
    blocks: list[tuple[list[int], int]] = [(members, need)]
    while any(len(m) > 1 for m, _ in blocks):
        if first is not None:
            pivots: list[int | None] = [first]
            first = None
        else:
            pivots = [(KNOCKOUT if want == 1 else m[rng.randrange(len(m))]) if len(m) > 1 else None
                      for m, want in blocks]
        ask([pair for (m, _), p in zip(blocks, pivots) if p is not None for pair in _pairs(m, p)])
        split: list[tuple[list[int], int]] = []
        for (m, want), p in zip(blocks, pivots):
            if p is None:
                split.append((m, want))
                continue
            if p == KNOCKOUT:  # the best one: winners of neighbouring pairs go on (n - 1 comparisons)
                winners = [a if above(a, b) else b for a, b in zip(m[0::2], m[1::2])]
                split.append((winners + m[len(m) - len(m) % 2:], 1))
                continue
            better = [c for c in m if c != p and above(c, p)]
            worse = [c for c in m if c != p and not above(c, p)]
            if better:
                split.append((better, min(want, len(better))))
            if want > len(better):
                split.append(([p], 1))
            if want > len(better) + 1:
                split.append((worse, want - len(better) - 1))
        blocks = split
    return [m[0] for m, _ in blocks]


#: Stands for "no pivot: a knockout round" for a block that needs only its best row.
KNOCKOUT = -1


def _pairs(members: list[int], pivot: int) -> list[tuple[int, int]]:
    """The comparisons a block asks this round (each as ``(lower, higher)``)."""
    if pivot == KNOCKOUT:
        pairs = zip(members[0::2], members[1::2])
        return [(min(a, b), max(a, b)) for a, b in pairs]
    return [(min(c, pivot), max(c, pivot)) for c in members if c != pivot]


def harmonic(n: int) -> float:
    """H(n) = 1 + 1/2 + ... + 1/n (exact below 10,000, else the asymptotic series)."""
    if n <= 0:
        return 0.0
    if n < 10_000:
        return math.fsum(1.0 / i for i in range(1, n + 1))
    return math.log(n) + 0.5772156649015329 + 1 / (2 * n) - 1 / (12 * n * n)


def _partial_quicksort(n: int, m: int) -> float:
    """Expected comparisons of partial quicksort with random pivots (Martinez, 2004)."""
    if n < 2 or m == 0:
        return 0.0
    return 2 * n + 2 * (n + 1) * harmonic(n) - 2 * (n + 3 - m) * harmonic(n + 1 - m) - 6 * m + 6


def expected_comparisons(n: int, k: int | None) -> float:
    """Expected comparisons of :func:`quickselect_rounds` for the best ``k`` of ``n``: partial
    quicksort's (Martinez) where the pivots are random; where the first pivot comes from a
    sample, the sample's own ranking, one partition, and partial quicksort of the ~``4k`` rows
    above the pivot (the ~2% of runs where the pivot falls among the best ``k`` cost more)."""
    m = n if k is None else min(k, n)
    if n < 2 or m == 0:
        return 0.0
    if m == 1:
        return float(n - 1)  # a knockout
    plan = sample_plan(n, m)
    if plan is None:
        return _partial_quicksort(n, m)
    t, j = plan
    above = j * (n + 1) / (t + 1) - 1  # rows expected to beat the pivot
    return expected_comparisons(t, j) + (n - 1) + _partial_quicksort(max(m, round(above)), m)


def worst_comparisons(n: int, k: int | None) -> int:
    """The most comparisons it can take: every pair once."""
    m = n if k is None else min(k, n)
    return 0 if n < 2 or m == 0 else n * (n - 1) // 2


def expected_rounds(n: int, k: int | None) -> int:
    """About how many rounds (engine batches) it takes: the depth of the partial quicksort
    (fitted to simulations, n up to 10,000; k from 1 to n), plus the sample's where there is one."""
    m = n if k is None else min(k, n)
    if n < 2 or m == 0:
        return 0
    if m == 1:
        return math.ceil(math.log2(n))
    plan = sample_plan(n, m)
    if plan is None:
        return max(1, round(1.1 * math.log(n / m) + 3.0 * math.log(max(m, 1)) - 1))
    t, j = plan
    above = max(m, round(j * (n + 1) / (t + 1) - 1))
    return expected_rounds(t, j) + 1 + expected_rounds(above, m)


# --------------------------------------------------------------------------- the operator


@physical_for(SemTopK)
@physical_for(SemSort)
class RankOp(SemanticOperator):
    """``semantic.topk`` / ``semantic.sort``: gathers its input, asks comparisons in rounds (see
    the module docstring), yields the chosen rows best first with their rank."""

    node: SemRank

    def __init__(self, node: SemRank, inputs: tuple[PhysicalOp, ...], index: int, options: RunOptions):
        super().__init__(node, inputs, index, options)
        lead = f"{node.instruction}\n" if node.instruction else ""
        asked = node.question.render({"a": "A", "b": "B"})
        self.compare_builder = RequestBuilder(
            f"{lead}Question: {asked}\nA and B are the two items below. Answer with exactly one letter: A or B.",
            COMPARISON_SPEC, COMPARISON_SPEC.default_max_tokens(), 0.0, options.prompt_layout)
        self.score_builder = RequestBuilder(
            f"{lead}Items are compared by this question: {asked}\nRate the item below from 1 (it would lose "
            "to almost any other item) to 10 (it would win against almost any other). Answer with one "
            "number from 1 to 10.",
            SCORE_SPEC, SCORE_SPEC.default_max_tokens(), 0.0, options.prompt_layout)

    @staticmethod
    def pair_text(a: str, b: str) -> str:
        """The per-request text of a comparison: the two items, A first."""
        return f"A: {a}\n\nB: {b}"

    # ------------------------------------------------------------------ execution

    def execute(self, ctx: RunContext) -> Iterator[Batch]:
        node = self.node
        run = self.open_step(ctx)
        batch = gather(self.inputs[0], ctx)
        start = time.perf_counter()
        texts, reasons = render_texts(node.item, batch.frame)
        valid = [i for i, t in enumerate(texts) if t is not None]
        skipped = [i for i, t in enumerate(texts) if t is None]
        if skipped:  # never compared: one lineage record each, with the reason
            self.ask(ctx, run, [None] * len(skipped), [None] * len(skipped), batch.ids.gather(skipped),
                     [reasons[i] for i in skipped])
        item_texts = [texts[i] for i in valid]
        ids = batch.ids.gather(valid) if valid else batch.ids.clear()
        if node.effective_algorithm == "score":
            order = self._by_score(ctx, run, item_texts, ids)
        else:
            decide = lambda pairs: self._compare(ctx, run, pairs, item_texts, ids)  # noqa: E731
            order, _ = quickselect_rounds(len(valid), node.k, decide)
        if node.k is not None:
            order = order[:node.k]
        rows = [valid[i] for i in order]
        ranks: list[int | None] = list(range(1, len(rows) + 1))
        if isinstance(node, SemSort) or getattr(node, "keep_unranked", False):
            # the rows that could not be compared come last, unranked (a folded sort().head(k)
            # shows as many of them as fit in its k rows)
            room = len(skipped) if node.k is None else max(0, node.k - len(rows))
            rows += skipped[:room]
            ranks += [None] * min(room, len(skipped))
        picked = pl.Series(rows, dtype=pl.UInt32)
        frame = batch.frame.select(pl.all().gather(picked)) if batch.frame.width else batch.frame.clear(len(rows))
        out = Batch(frame.with_columns(pl.Series(node.name, ranks, dtype=pl.UInt32)), batch.ids.gather(picked))
        run.metrics.rows_in += batch.height
        run.metrics.rows_out += out.height
        run.metrics.seconds += time.perf_counter() - start
        if ctx.progress is not None:
            ctx.progress.rows(batch.height, step=self.index)
        self.close_step(ctx, run)
        yield out

    def _compare(self, ctx: RunContext, run: StepRun, pairs: list[tuple[int, int]], texts: Sequence[str],
                 ids: pl.Series) -> dict[tuple[int, int], bool]:
        """One round: every pair's request(s) in one resolver call; a decision per pair."""
        orders = [((i, j), (j, i)) if self.node.both_orders else ((i, j),) for i, j in pairs]
        shown = [ab for pair_orders in orders for ab in pair_orders]
        prompts = [self.pair_text(texts[a], texts[b]) for a, b in shown]
        requests = self.compare_builder.build_all(prompts)  # type: ignore[arg-type]
        outcomes: list[Outcome] = ctx.resolver.resolve(run.info, requests, prompts)  # type: ignore[assignment]
        decided: dict[tuple[int, int], bool] = {}
        notes: list[str] = []
        pos = 0
        for (i, j), pair_orders in zip(pairs, orders):
            votes = {i: 0, j: 0}
            answers = outcomes[pos:pos + len(pair_orders)]
            for (a, b), o in zip(pair_orders, answers):
                if o.value == "A":
                    votes[a] += 1
                elif o.value == "B":
                    votes[b] += 1
            if votes[i] != votes[j]:
                winner, why = (i if votes[i] > votes[j] else j), ""
            else:
                winner = i  # a tie goes to the earlier row
                failed = any(o.value is None for o in answers)
                why = (" (tie: no answer; the earlier row wins)" if failed else
                       " (tie: the two orders disagree; the earlier row wins)")
            decided[(i, j)] = winner == i
            notes.extend(f"winner: {'a' if winner == a else 'b'}{why}" for a, _ in pair_orders)
            pos += len(pair_orders)
        done = [replace(o, note=n if o.note is None else f"{o.note}; {n}") for o, n in zip(outcomes, notes)]
        pair_ids = pl.DataFrame({"a": ids.gather([a for a, _ in shown]),
                                 "b": ids.gather([b for _, b in shown])}).to_struct("ids")
        ctx.recorder.record(self.index, self.node.operator, self.node.output_name, run.model, pair_ids, done)
        run.metrics.add_all(done)
        return decided

    def _by_score(self, ctx: RunContext, run: StepRun, texts: list[str], ids: pl.Series) -> list[int]:
        """One round: each item rated 1-10; best rating first, ties (and unrated items, last) by position."""
        if not texts:
            return []
        done = self.ask(ctx, run, [self.score_builder.build(t) for t in texts], list(texts), ids)
        scores = [int(o.value) if o.value is not None else None for o in done]
        return sorted(range(len(texts)), key=lambda i: (scores[i] is None, -(scores[i] or 0), i))

    # ------------------------------------------------------------------ estimation and display

    def calls_for(self, n: int) -> dict[str, Any]:
        """Both algorithms' figures for ``n`` items: what explain shows and the estimate uses."""
        k = self.node.k
        per = 2 if self.node.both_orders else 1
        expected = expected_comparisons(n, k)
        return {"comparisons": expected, "comparisons_high": worst_comparisons(n, k), "per_comparison": per,
                "calls": round(expected * per), "calls_high": worst_comparisons(n, k) * per,
                "rounds": expected_rounds(n, k), "score_calls": n}

    def estimate(self, est: EstimateContext) -> EstState:
        node = self.node
        state = self.inputs[0].estimate(est)
        batch = state.batch
        cols = set(node.item.columns)
        sample: list[str] = []
        skipped = 0
        if batch is not None and not (cols & state.unknown):
            texts, _ = render_texts(node.item, batch.frame)
            items = [t for t in texts if t is not None]
            skipped = len(texts) - len(items)
            share = len(items) / len(texts) if texts else 0.0
            n_high = len(items) if state.exact else round(min(state.rows_high, len(texts)) * share)
            n_low = len(items) if state.exact else round(state.rows_low * share)
            sample = items[:2]
        else:
            n_low, n_high = round(state.rows_low), round(state.rows_high)
        exact = False
        if node.effective_algorithm == "score":
            calls_low, calls_high = n_low, n_high
            exact = state.exact and batch is not None and not (cols & state.unknown)
            if exact and self.dedupe:  # identical items are one request, asked once by the memo
                calls_low = calls_high = len(set(items))
            elif self.dedupe:
                calls_low = min(calls_low, 1)  # every row may repeat one item (an earlier step's answers)
            request = self.score_builder.build(sample[0] if sample else "")
            spec = SCORE_SPEC
        else:
            calls_low, calls_high = self.calls_for(n_low)["calls"], self.calls_for(n_high)["calls_high"]
            first, second = (sample + ["", ""])[:2]
            request = self.compare_builder.build(self.pair_text(first, second))
            spec = COMPARISON_SPEC
        out = output_tokens(spec, spec.default_max_tokens(), est.count)
        est.steps.append(StepEstimate(
            step=self.index, operator=node.operator, column=node.name,
            rows_low=round(state.rows_low), rows_high=round(state.rows_high), skipped=skipped,
            calls_low=calls_low, calls_high=calls_high, rows_exact=exact,
            prompt_tokens_per_call=float(request_prompt_tokens(request, est.engine)),
            output_tokens_per_call=(out.low, out.typical, out.high)))
        keep_low = state.rows_low if node.k is None else min(node.k, state.rows_low)
        keep_high = state.rows_high if node.k is None else min(node.k, state.rows_high)
        frame = None if batch is None else batch.frame.with_columns(pl.lit(None, dtype=pl.UInt32).alias(node.name))
        out_batch = None if frame is None else Batch(frame, batch.ids)  # type: ignore[union-attr]
        return EstState(out_batch, keep_low, keep_high, False, state.unknown | {node.name})

    def _known_rows(self) -> int | None:
        """The input's rows when that costs nothing (data in memory, straight from a query)."""
        op = self.inputs[0] if self.inputs else None
        if isinstance(op, PolarsQuery) and op.in_memory:
            return op.count_rows()
        return None

    def describe(self) -> str:
        node = self.node
        flags = node.flags()
        n = self._known_rows()
        if n is not None:
            c = self.calls_for(n)
            if node.effective_algorithm == "score":
                flags.append(f"{n:,} calls in 1 round for {n:,} rows; quickselect would be ~{c['calls']:,}")
            else:
                times = " x2 orders" if c["per_comparison"] == 2 else ""
                flags.append(f"~{c['comparisons']:,.0f} comparisons{times} = ~{c['calls']:,} calls "
                             f"(at most {c['calls_high']:,}) in ~{c['rounds']} rounds for {n:,} rows; "
                             f"score would be {n:,} calls")
        elif node.effective_algorithm == "score":
            flags.append("n calls in 1 round for n rows; explain(estimate=True) counts them")
        else:
            times = " x2 orders" if node.both_orders else ""
            if node.k is None:
                shape = "~1.39 n log2(n) comparisons"
            else:
                per_row = expected_comparisons(max(1000, 8 * node.k), node.k) / max(1000, 8 * node.k)
                shape = f"~{per_row:.1f}n comparisons"
            flags.append(f"{shape}{times} for n rows (explain(estimate=True) counts them); score would be n calls")
        if self.dedupe:
            flags.append("dedupe")
        flags.append("shared prefix first" if self.options.prompt_layout == "shared_first" else "inline prompt")
        if node.cache is not False:
            flags.append("exact cache" if self.exact_cache else "exact cache off")
        return f"{node.head_label()} -> {node.name} (step {self.index}) [{', '.join(flags)}]"
