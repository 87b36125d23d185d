"""``semantic.aggregate``: rows packed into context-window-sized requests, reduced level by level.

The algorithm (one answer per group; see docs/aggregate.md):

1. **Gather and order.** The whole input is gathered (an aggregate needs every row of a group).
   Each row's template is rendered; rows with null or blank input are left out (they are named in
   no prompt and in no lineage). Inside a group, rows are ordered by ``order_by`` (ascending,
   nulls last) and then by input row id (the scan position; arrival order where a row has no
   single id). Groups come out in order of first appearance, by input row id.
2. **Pack by tokens.** A request is the shared instruction (the task and the answer format,
   first, so the prefix cache shares it) plus as many consecutive rows, separated by ``---``
   lines, as fit in ``window - max_tokens`` prompt tokens. Tokens are counted by the engine
   (``request_prompt_tokens``: its chat template where it has one, else ``count_tokens`` over the
   messages, else ~4 characters a token), and every packed request is counted whole before it is
   sent, so no request's prompt plus ``max_tokens`` exceeds the window. A single row too long for
   a request on its own is **truncated** by tokens (its start is kept, ``[...truncated]`` ends
   it) and the lineage note says so.
3. **Reduce.** A group whose rows fit one request is answered by it. Otherwise each request's
   answer is a partial answer, and the partials are packed the same way into "combine" requests
   (level 2), and so on until one answer remains. Each level is **one resolver round over all
   groups** (one engine batch), so 100 groups needing 3 levels make 3 engine batches; a budget
   stops the run between levels (the resolver's observers raise before a batch). A partial is at
   most half a request (longer ones are truncated), so every level at least halves the items and
   the reduce always ends. A failed partial (a null answer) is left out of the next level; its
   rows are then not in the final answer's lineage, and the note says how many failed.

Lineage: one record per request. Its provenance is the list of the input rows the request covers
(for a combine request: every row under the partials it combines), and its ``note`` names the
level: ``"reduce level 1 of 2 (partial 3 of 7)"``, ``"reduce level 2 of 2 (final)"``. The final
answer's record names every row of the group that reached it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import polars as pl

from semframe.accounting.estimate import StepEstimate
from semframe.accounting.tokens import output_tokens, request_prompt_tokens, token_counter
from semframe.errors import PlanError
from semframe.execution.context import RunContext, RunOptions
from semframe.execution.lineage import Outcome
from semframe.execution.provenance import Batch
from semframe.execution.render import render_texts
from semframe.physical.base import EstimateContext, EstState, PhysicalOp
from semframe.physical.prompts import RequestBuilder, field_words
from semframe.physical.relational import PolarsQuery
from semframe.physical.semantic import SemanticOperator, StepRun, gather, physical_for
from semframe.plan.aggregate import DEFAULT_CONTEXT_WINDOW, SemAggregate
from semframe.plan.semantic import engine_label
from semframe.plan.spec import JsonSpec

#: Between two packed items of a request.
SEPARATOR = "\n---\n"
#: Ends a row (or a partial answer) cut to fit the window.
TRUNCATION_MARK = " [...truncated]"
#: explain() counts the levels of in-memory inputs up to this many rows (estimate() counts any).
DESCRIBE_ROWS = 50_000
#: A reduce never runs more levels than this (each level at least halves the items: 2**40 rows).
MAX_LEVELS = 40


@dataclass
class Item:
    """One packed unit: a row's text (level 1) or a partial answer (later levels), and the
    positions (in the gathered input) of the rows under it."""

    text: str
    rows: list[int]
    note: str | None = None


@dataclass
class Group:
    """One group while it is reduced."""

    keys: tuple[Any, ...]
    rows: list[int]  # every row of the group, null ones included (the output row's provenance)
    items: list[Item]
    answer: Outcome | None = None
    levels: int = 0
    failed: int = 0
    final_now: bool = False  # the current level answers it in one request


@dataclass
class Asked:
    """One request of a level: its group, the rows under it, its place, and notes (truncations)."""

    group: Group
    rows: list[int]
    level: int
    k: int
    of: int
    notes: list[str]


def known_window(engine: Any) -> int | None:
    """The engine's context window, if knowing it starts nothing (explain and estimate never
    start an engine): an engine object's ``context_window``; for an engine not yet started, only
    a window given at construction (``VLLMEngine(max_model_len=...)``)."""
    if engine is None or isinstance(engine, str):
        return None
    if getattr(engine, "started", None) is False:
        options = getattr(engine, "_options", None)
        given = options.get("max_model_len") if isinstance(options, dict) else None
        return int(given) if isinstance(given, int) and given > 0 else None
    window = getattr(engine, "context_window", None)
    return int(window) if isinstance(window, int) and window > 0 else None


class Packer:
    """Packs items into requests of one level under the window, counting tokens as the engine does."""

    def __init__(self, builder: RequestBuilder, engine: Any, window: int):
        self.builder = builder
        self.engine = engine
        self.count = token_counter(engine)
        self.budget = window - builder.max_tokens  # prompt tokens a request may have
        self.base = self.prompt_tokens("")
        self.sep = self.count(SEPARATOR)

    def prompt_tokens(self, text: str) -> int:
        return request_prompt_tokens(self.builder.build(text), self.engine)

    @property
    def room(self) -> int:
        """Tokens left for items in one request."""
        return self.budget - self.base

    def truncate(self, text: str, cap: int) -> tuple[str, int, str | None]:
        """``text`` cut (by tokens) so that it counts at most ``cap`` tokens, its count, and a note if
        it was cut."""
        count = self.count
        full = count(text)
        if full <= cap:
            return text, full, None
        lo, hi = 0, len(text)  # the longest prefix that fits: binary search on characters
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if count(text[:mid] + TRUNCATION_MARK) <= cap:
                lo = mid
            else:
                hi = mid - 1
        cut = text[:lo] + TRUNCATION_MARK
        n = count(cut)
        return cut, n, f"truncated from {full} to {n} tokens to fit the context window"

    def pack(self, texts: Sequence[str], counts: Sequence[int] | None = None,
             verify: bool = True) -> list[tuple[int, int]]:
        """Greedy runs ``[i, j)`` of consecutive items: as many as fit ``budget`` prompt tokens.

        Items are added while the sum of their counts fits; then (``verify``) each run's whole
        request is counted, and items are given back to the next run until it fits. A run holds
        at least one item (an item longer than a request must be truncated first).
        """
        counts = [self.count(t) for t in texts] if counts is None else counts
        runs: list[tuple[int, int]] = []
        i, n = 0, len(texts)
        while i < n:
            total, j = self.base + counts[i], i + 1
            while j < n and total + self.sep + counts[j] <= self.budget:
                total += self.sep + counts[j]
                j += 1
            if verify:  # the counts of the parts are not the count of the whole: count it
                exact = self.prompt_tokens(SEPARATOR.join(texts[i:j]))
                while j - i > 1 and exact > self.budget:
                    j -= 1
                    exact = self.prompt_tokens(SEPARATOR.join(texts[i:j]))
                while j < n and exact <= self.budget:  # room left (the parts' counts add up to more)
                    more = self.prompt_tokens(SEPARATOR.join(texts[i:j + 1]))
                    if more > self.budget:
                        break
                    exact, j = more, j + 1
            runs.append((i, j))
            i = j
        return runs


def shared_text(node: SemAggregate, level: int) -> str:
    """The shared instruction of level ``level`` (0: the rows; later: combining partial answers)."""
    lines = [node.task.strip()]
    if node.instruction:
        lines.append(node.instruction.strip())
    if level == 0:
        lines.append("The records follow, separated by lines of ---. Answer for all of them together.")
    else:
        lines.append("Each text below, separated by lines of ---, is an answer for one part of the records. "
                     "Combine them into one answer for all the records.")
    if isinstance(node.spec, JsonSpec):
        lines.append(f"Reply with a JSON object with the fields {field_words(node.spec)}.")
    return "\n".join(lines)


def answer_text(value: Any) -> str:
    """A partial answer as the next level reads it (a struct as compact JSON)."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@physical_for(SemAggregate)
class AggregateOp(SemanticOperator):
    """Packs each group's rows by tokens and reduces them level by level (see the module docstring)."""

    node: SemAggregate

    def __init__(self, node: SemAggregate, inputs: tuple[PhysicalOp, ...], index: int, options: RunOptions):
        super().__init__(node, inputs, index, options)
        mt = node.effective_max_tokens
        self.builders = tuple(RequestBuilder(shared_text(node, level), node.spec, mt, 0.0, options.prompt_layout)
                              for level in (0, 1))

    def window(self, engine: Any, *, start: bool) -> tuple[int, str]:
        """The context window and where it comes from; ``start``: the engine may be started to learn it."""
        if self.node.context_window is not None:
            return self.node.context_window, "context_window="
        window = getattr(engine, "context_window", None) if start else known_window(engine)
        if isinstance(window, int) and window > 0:
            return window, "the engine's"
        return DEFAULT_CONTEXT_WINDOW, "default"

    def packers(self, engine: Any, window: int) -> tuple[Packer, Packer]:
        """The packers of the first level and of the combining levels (the first checked to have room)."""
        first, combine = (Packer(b, engine, window) for b in self.builders)
        self.check_room(first, 1, window)
        return first, combine

    def check_room(self, packer: Packer, level: int, window: int) -> None:
        """A PlanError if a level's request leaves no room for its items (before any engine call:
        the combining levels are checked as soon as the first level's packing shows they are needed)."""
        mt = self.node.effective_max_tokens
        need = 2 * (mt + packer.sep) if level > 1 else 1
        if packer.room >= need:
            return
        what = f"two partial answers of max_tokens={mt}" if level > 1 else "any row"
        raise PlanError(
            f"semantic.aggregate: a context window of {window} tokens leaves {packer.room} prompt tokens for the "
            f"items of a level-{level} request (after max_tokens={mt} and the {packer.base}-token instruction), "
            f"too few for {what}; lower max_tokens or use a larger context_window"
        )

    # ------------------------------------------------------------------ groups

    def groups(self, batch: Batch) -> list[Group]:
        """The groups of the gathered input, in order of first appearance, rows in packing order."""
        node = self.node
        frame = batch.frame
        n = frame.height
        ids = batch.ids
        rank = _id_rank(ids)
        texts, _ = render_texts(node.template, frame)
        work = pl.DataFrame([pl.Series("__sf_pos", range(n), dtype=pl.UInt32), rank.alias("__sf_rank")])
        keys = [*node.by, *[c for c in node.order_by if c not in node.by]]
        if keys:
            work = work.hstack(frame.select(keys))
        by_rank = work.sort("__sf_rank", maintain_order=True)
        order = work.sort([*node.order_by, "__sf_rank"], nulls_last=True, maintain_order=True)["__sf_pos"]
        ranks = rank.to_list()
        place = [0] * n
        for k, pos in enumerate(order.to_list()):
            place[pos] = k
        if node.by:
            agg = by_rank.group_by(list(node.by), maintain_order=True).agg(pl.col("__sf_pos"))
            keyed = zip(agg.select(node.by).rows(), agg["__sf_pos"].to_list())
        else:
            keyed = iter([((), by_rank["__sf_pos"].to_list())])  # one group, even with no rows
        out = []
        for keys, rows in keyed:
            ordered = sorted(rows, key=place.__getitem__)
            items = [Item(texts[r], [r]) for r in ordered if texts[r] is not None]
            out.append(Group(tuple(keys), sorted(rows, key=ranks.__getitem__), items))
        return out

    # ------------------------------------------------------------------ one level

    def level_requests(self, groups: list[Group], packer: Packer, level: int,
                       ids: list[Any]) -> tuple[list[Any], list[str], list[Asked]]:
        """Pack every open group's items: the level's requests, their texts, and what each covers.

        Items longer than allowed are truncated first: a row to a request on its own, a partial
        answer to half a request (so that two always fit, and each level halves the items).
        """
        cap = packer.room if level == 0 else (packer.room - packer.sep) // 2
        requests, texts, asked = [], [], []
        for g in groups:
            counts = []
            for item in g.items:
                cut, n, note = packer.truncate(item.text, cap)
                counts.append(n)
                if note is not None:
                    who = f"row {ids[item.rows[0]]}" if level == 0 else "a partial answer"
                    item.text, item.note = cut, f"{who} {note}"
            runs = packer.pack([it.text for it in g.items], counts)
            for k, (i, j) in enumerate(runs):
                chunk = g.items[i:j]
                text = SEPARATOR.join(it.text for it in chunk)
                requests.append(packer.builder.build(text))
                texts.append(text)
                asked.append(Asked(g, [r for it in chunk for r in it.rows], level, k + 1, len(runs),
                                   [it.note for it in chunk if it.note]))
            g.levels = level + 1
            g.final_now = len(runs) == 1
        return requests, texts, asked

    # ------------------------------------------------------------------ execution

    def execute(self, ctx: RunContext) -> Iterator[Batch]:
        run = self.open_step(ctx)
        batch = gather(self.inputs[0], ctx)
        start = time.perf_counter()
        engine = ctx.resolver.engine_of(run.info)
        window, _ = self.window(engine, start=True)
        first, combine = self.packers(engine, window)
        groups = self.groups(batch)
        ids = batch.ids.to_list()
        asked: list[tuple[list[Asked], list[Outcome]]] = []
        try:
            open_groups = [g for g in groups if g.items]
            level = 0
            while open_groups:
                if level >= MAX_LEVELS:  # pragma: no cover - each level at least halves the items
                    raise PlanError(f"semantic.aggregate: the reduce did not end after {MAX_LEVELS} levels")
                requests, texts, covers = self.level_requests(open_groups, first if level == 0 else combine,
                                                              level, ids)
                if level == 0 and not all(g.final_now for g in open_groups):
                    self.check_room(combine, 2, window)
                outcomes = self.resolve(ctx, run, requests, texts)
                asked.append((covers, outcomes))
                open_groups = self.advance(open_groups, covers, outcomes)
                level += 1
        finally:  # lineage of what was asked, also when a budget stopped the run between levels
            self.record(ctx, run, asked, ids, batch.ids.dtype)
        for g in groups:
            if not g.items and g.answer is None:
                g.answer = Outcome(None, "skipped", error="no row of the group has input text")
        frame, out_ids = self.output(groups, batch)
        run.metrics.rows_in += batch.height
        run.metrics.rows_out += frame.height
        run.metrics.seconds += time.perf_counter() - start
        if ctx.progress is not None:
            ctx.progress.rows(batch.height, step=self.index)
        self.close_step(ctx, run)
        yield Batch(frame, out_ids)

    def resolve(self, ctx: RunContext, run: StepRun, requests: list[Any], texts: list[str]) -> list[Outcome]:
        """One resolver round (one engine batch for whatever the memo and the cache do not have)."""
        outcomes = ctx.resolver.resolve(run.info, requests, texts, None)
        done = [o if o is not None else Outcome(None, "skipped", error="no request") for o in outcomes]
        run.metrics.add_all(done)
        return done

    def advance(self, groups: list[Group], covers: list[Asked], outcomes: list[Outcome]) -> list[Group]:
        """Partial answers become the next level's items; a group answered in one request is done."""
        parts: dict[int, list[tuple[Asked, Outcome]]] = {}
        for a, o in zip(covers, outcomes):
            parts.setdefault(id(a.group), []).append((a, o))
        still = []
        for g in groups:
            answers = parts[id(g)]
            if g.final_now:
                (a, o), = answers
                g.answer = o
                continue
            g.items = [Item(answer_text(o.value), a.rows) for a, o in answers if o.value is not None]
            g.failed += sum(o.value is None for _, o in answers)
            if not g.items:
                g.answer = Outcome(None, "skipped", error=f"every partial answer at reduce level {g.levels} failed")
            else:
                still.append(g)
        return still

    def record(self, ctx: RunContext, run: StepRun, asked: list[tuple[list[Asked], list[Outcome]]],
               ids: list[Any], dtype: pl.DataType) -> None:
        """One lineage record per request, written once each group's number of levels is known."""
        for covers, outcomes in asked:
            provenance = pl.Series("__sf_row", [[ids[r] for r in a.rows] for a in covers], dtype=pl.List(dtype))
            done = []
            for a, o in zip(covers, outcomes):
                g = a.group
                final = a.of == 1 and a.level + 1 == g.levels and g.answer is not None
                total = f" of {g.levels}" if g.answer is not None else " (the reduce stopped before its end)"
                note = f"reduce level {a.level + 1}{total} ({'final' if final else f'partial {a.k} of {a.of}'})"
                if final and g.failed:
                    note += f"; {g.failed} partial answer(s) failed: their rows are not in this answer"
                note = "; ".join([note, *a.notes, *([o.note] if o.note else [])])
                done.append(replace(o, note=note))
            ctx.recorder.record(self.index, self.node.operator, self.node.output_name, run.model, provenance, done)

    def output(self, groups: list[Group], batch: Batch) -> tuple[pl.DataFrame, pl.Series]:
        """One row per group: the keys, then the answer; provenance: every row of the group."""
        node = self.node
        types = dict(node.schema)
        columns: dict[str, Any] = {k: pl.Series(k, [g.keys[i] for g in groups], dtype=types[k])
                                   for i, k in enumerate(node.by)}
        values = [g.answer.value if g.answer is not None else None for g in groups]
        columns[node.name] = pl.Series(node.name, values, dtype=node.output_dtype, strict=False)
        ids = batch.ids.to_list()
        dtype = batch.ids.dtype
        out_ids = pl.Series("__sf_row", [[ids[r] for r in g.rows] for g in groups],
                            dtype=pl.List(dtype if dtype != pl.Object else pl.Object))
        return pl.DataFrame(columns), out_ids

    # ------------------------------------------------------------------ estimation and display

    def simulate(self, groups: list[Group], first: Packer, combine: Packer,
                 partial_tokens: Sequence[int]) -> list[tuple[list[int], list[float]]]:
        """For each partial-answer length in ``partial_tokens``: the requests per level (distinct
        ones at level 1 when the step dedupes) and each request's prompt tokens.

        Level 1 is packed exactly as the run packs it; later levels by counts, every partial answer
        that many tokens long (partial answers are unknown before the run)."""
        level1: list[float] = []
        sizes: list[int] = []  # first-level requests of each group that needs more levels
        keys: set[str] = set()
        for g in groups:
            if not g.items:
                continue
            cut = [first.truncate(it.text, first.room) for it in g.items]
            texts = [c[0] for c in cut]
            runs = first.pack(texts, [c[1] for c in cut])
            for i, j in runs:
                req = first.builder.build(SEPARATOR.join(texts[i:j]))
                if not (self.dedupe and req.key in keys):
                    keys.add(req.key)
                    level1.append(request_prompt_tokens(req, first.engine))
            if len(runs) > 1:
                sizes.append(len(runs))
        if sizes:
            self.check_room(combine, 2, combine.budget + combine.builder.max_tokens)
        cap = (combine.room - combine.sep) // 2
        out = []
        for partial in partial_tokens:
            part = min(partial, cap)
            per_level, tokens, open_sizes = [len(level1)], list(level1), sizes
            while open_sizes and len(per_level) < MAX_LEVELS:
                n_requests, nxt = 0, []
                for size in open_sizes:
                    runs = combine.pack([""] * size, [part] * size, verify=False)
                    n_requests += len(runs)
                    tokens.extend(combine.base + part * (j - i) + combine.sep * (j - i - 1) for i, j in runs)
                    if len(runs) > 1:
                        nxt.append(len(runs))
                per_level.append(n_requests)
                open_sizes = nxt
            out.append((per_level, tokens))
        return out

    def estimate(self, est: EstimateContext) -> EstState:
        node = self.node
        state = self.inputs[0].estimate(est)
        mt = node.effective_max_tokens
        out = output_tokens(node.spec, mt, est.count)
        read = set(node.template.columns) | set(node.by) | set(node.order_by)
        rows_low, rows_high = round(state.rows_low), round(state.rows_high)
        est.typical_tokens[node.name] = out.typical
        if state.batch is None or read & state.unknown:
            # Rows written by an earlier step: at least one request, at most one per row plus combining.
            est.steps.append(StepEstimate(
                step=self.index, operator=node.operator, column=node.name, rows_low=rows_low, rows_high=rows_high,
                skipped=0, calls_low=min(1, rows_high), calls_high=max(1, 2 * rows_high), rows_exact=False,
                prompt_tokens_per_call=float(max(1, (node.context_window or DEFAULT_CONTEXT_WINDOW) - mt)),
                output_tokens_per_call=(out.low, out.typical, out.high)))
            n = 1 if not node.by else max(1, rows_high)
            return EstState(None, 0 if node.by else 1, n, False, frozenset({node.name, *node.by}))
        window, _ = self.window(est.engine, start=False)
        first, combine = self.packers(est.engine, window)
        groups = self.groups(state.batch)
        skipped = sum(len(g.rows) - len(g.items) for g in groups)
        (levels_high, tokens_high), (levels_low, _) = self.simulate(groups, first, combine,
                                                                     (mt, max(1, round(out.low))))
        # Exact: the rows are known and each group fits one request (that answer is the final one).
        exact = state.exact and rows_low == rows_high and len(levels_high) == 1 and not est.under_head
        est.steps.append(StepEstimate(
            step=self.index, operator=node.operator, column=node.name, rows_low=rows_low, rows_high=rows_high,
            skipped=skipped, calls_low=sum(levels_low), calls_high=sum(levels_high), rows_exact=exact,
            prompt_tokens_per_call=sum(tokens_high) / len(tokens_high) if tokens_high else 0.0,
            output_tokens_per_call=(out.low, out.typical, out.high),
        ))
        for g in groups:
            g.answer = None
        frame, ids = self.output(groups, state.batch)
        keys_known = state.exact and rows_low == rows_high
        return EstState(Batch(frame, ids), frame.height, frame.height, keys_known, frozenset({node.name}))

    def describe(self) -> str:
        node = self.node
        mt = node.effective_max_tokens
        window, source = self.window(node.engine, start=False)
        if source == "default":
            packing = (f"packed to the engine's context window - max_tokens per request "
                       f"({window - mt} tokens if it says none)")
        else:
            packing = f"packed to {window - mt} tokens per request"
        levels = self._levels_in_memory()
        if levels is not None:
            packing += f", up to {levels} level{'s' if levels != 1 else ''}"
        flags = [f"by {', '.join(node.by)}" if node.by else "one group", packing, f"max_tokens={mt}"]
        flags += self.planning_flags()
        if node.engine is not None:
            flags.append(f"engine {engine_label(node.engine)}")
        return (f"SEMANTIC AGGREGATE -> {node.name} (step {self.index}) "
                f"[{node.spec.describe()}; {', '.join(flags)}]")

    def _levels_in_memory(self) -> int | None:
        """The most reduce levels a group needs (partials at max_tokens), where that reads no file:
        the input is a polars query over in-memory data. Tokens as the step's own engine counts
        them, else ~4 characters a token."""
        below = self.inputs[0]
        if not isinstance(below, PolarsQuery) or not below.in_memory:
            return None
        engine = self.node.engine if not isinstance(self.node.engine, str) else None
        est = EstimateContext(engine=engine, count=token_counter(engine), options=self.options)
        try:
            state = below.estimate(est)
            if state.batch is None or state.rows_high > DESCRIBE_ROWS:
                return None
            window, _ = self.window(engine, start=False)
            first, combine = self.packers(engine, window)
            ((levels, _),) = self.simulate(self.groups(state.batch), first, combine, (self.node.effective_max_tokens,))
        except PlanError:
            return None
        return len(levels)


def _id_rank(ids: pl.Series) -> pl.Series:
    """Each row's place in input-row order: its scan row; for a join's ``{left, right}`` pairs, the
    pairs in (left, right) order -- whatever order the rows arrived in (a polars join does not keep
    one); where provenance cannot be ordered (lost, or lists), the arrival order."""
    n = len(ids)
    if ids.dtype == pl.UInt32 and ids.null_count() == 0:
        return ids
    if isinstance(ids.dtype, pl.Struct) and ids.null_count() == 0:
        try:
            order = pl.DataFrame({"id": ids}).with_row_index("pos").sort("id", maintain_order=True)["pos"]
        except pl.exceptions.PolarsError:  # pragma: no cover - a provenance polars cannot sort
            return pl.Series(range(n), dtype=pl.UInt32)
        rank = [0] * n
        for k, pos in enumerate(order.to_list()):
            rank[pos] = k
        return pl.Series(rank, dtype=pl.UInt32)
    return pl.Series(range(n), dtype=pl.UInt32)
