"""What each operator of a run actually did: ``RunResult.profile()``, semframe's EXPLAIN ANALYZE.

While a plan runs, :func:`instrument` counts, for every physical operator, the rows and batches
it yields and the time spent inside it (its ``execute`` generator is wrapped on the instance; an
operator that stops pulling early still closes its inputs). After the run, :class:`Profile`
walks the same operator tree and puts beside each operator its rows in and out, its own seconds
(the time inside it less the time inside its inputs) and, for a semantic step, what its
``StepMetrics`` say: engine calls, answers reused (in-run dedup, exact cache, semantic cache),
rows skipped, tokens, engine seconds and cost. It prints as a text table in a terminal and draws
as a tree with two bar charts (where the time went, where the money went) in Jupyter.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import polars as pl

from semframe.accounting.prices import MachinePrice, format_usd
from semframe.execution.display import (
    DrawNode,
    bars_html,
    bars_text,
    from_physical,
    table_text,
    tree_html,
    tree_labels,
)


@dataclass
class OpStats:
    """What one operator yielded during a run; ``seconds`` includes the time inside its inputs."""

    rows_out: int = 0
    batches: int = 0
    seconds: float = 0.0


def instrument(root: Any) -> dict[int, OpStats]:
    """Count rows, batches and time of every operator under ``root`` (by ``id(op)``) while it runs.

    Wraps each operator's ``execute`` on the instance (calling it again resets the counts).
    """
    stats: dict[int, OpStats] = {}
    for op in root.walk():
        s = stats[id(op)] = OpStats()
        original = op.__dict__.get("_sf_original_execute")
        if original is None:
            original = op.execute
            op._sf_original_execute = original
        op.execute = _counted(original, s)
    return stats


def _counted(execute: Any, s: OpStats) -> Any:
    def run(ctx: Any) -> Iterator[Any]:
        clock = time.perf_counter
        gen = execute(ctx)
        try:
            while True:
                t0 = clock()
                try:
                    batch = next(gen)
                except StopIteration:
                    s.seconds += clock() - t0
                    return
                s.seconds += clock() - t0
                s.rows_out += batch.height
                s.batches += 1
                yield batch
        finally:
            gen.close()  # a consumer that stops early (a head) closes the inputs too

    return run


_COLUMNS = {
    "operator": pl.String, "step": pl.Int32, "depth": pl.Int32, "rows_in": pl.Int64, "rows_out": pl.Int64,
    "batches": pl.Int64, "engine_requests": pl.Int64, "dedup_hits": pl.Int64, "exact_cache_hits": pl.Int64,
    "semantic_cache_hits": pl.Int64, "skipped": pl.Int64, "errors": pl.Int64, "prompt_tokens": pl.Int64,
    "output_tokens": pl.Int64, "seconds": pl.Float64, "engine_seconds": pl.Float64, "cost_usd": pl.Float64,
}


class Profile:
    """The operator tree of a run with what each operator did (see the module docstring).

    Examples
    --------
    >>> import polars as pl, semframe as sf
    >>> df = pl.DataFrame({"t": ["a", "b", "a"]})
    >>> run = df.lazy().semantic.classify("t", ["YES", "NO"], name="c").run(sf.DeterministicEngine(), cache=False)
    >>> p = run.profile()
    >>> p.to_frame().select("operator", "rows_in", "rows_out", "engine_requests", "dedup_hits").rows()
    [('SEMANTIC CLASSIFY → c', 3, 3, 2, 1), ('POLARS QUERY', None, 3, None, None)]
    >>> print(str(p).splitlines()[0])  # doctest: +ELLIPSIS
    PROFILE (the optimized plan as it ran: 3 rows out in ... s)
    """

    def __init__(self, root: Any, stats: dict[int, OpStats], step_metrics: list[Any], machine: MachinePrice,
                 seconds: float, rows_out: int, *, complete: bool = True, optimized: bool = True,
                 error: str | None = None):
        self.machine = machine
        self.seconds = seconds
        self.complete = complete
        self.error = error
        self.rows = rows_out
        self.optimized = optimized
        self._metrics = {m.step: m for m in step_metrics}
        self._stats = stats
        if root is not None:
            self.tree = from_physical(root)
        else:  # a result made without its operators: the semantic steps, last on top
            self.tree = None
            for m in sorted(step_metrics, key=lambda m: m.step):
                name = f" → {m.column}" if m.column else ""
                node = DrawNode(f"SEMANTIC {m.operator.upper()}{name}", "semantic", f"step {m.step}")
                node.op = m
                if self.tree is not None:
                    node.children.append(self.tree)
                self.tree = node
        self.entries = self._entries()
        for node, _ in (self.tree.walk() if self.tree is not None else ()):
            node.figures = self._figures(self.entries[id(node)])

    # ------------------------------------------------------------------ figures

    def _entries(self) -> dict[int, dict[str, Any]]:
        entries: dict[int, dict[str, Any]] = {}
        if self.tree is None:
            return entries
        for node, depth in self.tree.walk():
            op = node.op
            # A StepMetrics where the run recorded no operators, else a physical operator.
            step = op.step if hasattr(op, "rows_in") else getattr(op, "index", None)
            st = self._stats.get(id(op))
            own = st.seconds if st is not None else None
            if own is not None:  # the time inside it less the time inside its inputs
                for child in node.children:
                    cs = self._stats.get(id(child.op))
                    own -= cs.seconds if cs is not None else 0.0
            e: dict[str, Any] = {k: None for k in _COLUMNS}
            e.update(operator=node.title, step=step, depth=depth, seconds=None if own is None else max(0.0, own),
                     rows_out=st.rows_out if st is not None else None, batches=st.batches if st is not None else None)
            if node.children and all(self._stats.get(id(c.op)) is not None for c in node.children):
                e["rows_in"] = sum(self._stats[id(c.op)].rows_out for c in node.children)
            m = self._metrics.get(step) if step is not None else None
            if m is not None:
                e.update(rows_in=m.rows_in, engine_requests=m.engine_requests, dedup_hits=m.dedup_hits,
                         exact_cache_hits=m.exact_cache_hits, semantic_cache_hits=m.semantic_cache_hits,
                         skipped=m.skipped, errors=m.errors, prompt_tokens=m.prompt_tokens,
                         output_tokens=m.output_tokens, engine_seconds=m.engine_seconds,
                         cost_usd=self.machine.cost(m.engine_seconds))
                if e["rows_out"] is None:
                    e["rows_out"] = m.rows_out
                if e["seconds"] is None:
                    e["seconds"] = m.seconds
            entries[id(node)] = e
        return entries

    @staticmethod
    def _figures(e: dict[str, Any]) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if e["rows_in"] is not None:
            out.append(("rows in", f"{e['rows_in']:,}"))
        if e["rows_out"] is not None:
            out.append(("rows out", f"{e['rows_out']:,}"))
        if e["engine_requests"] is not None:
            out.append(("engine calls", f"{e['engine_requests']:,}"))
            reused = [(e["dedup_hits"], "dedup"), (e["exact_cache_hits"], "cache"),
                      (e["semantic_cache_hits"], "similar")]
            out.append(("reused", ", ".join(f"{n:,} {k}" for n, k in reused if n) or "0"))
            if e["skipped"]:
                out.append(("skipped", f"{e['skipped']:,}"))
            if e["errors"]:
                out.append(("null answers", f"{e['errors']:,}"))
            out.append(("tokens", f"{e['prompt_tokens']:,} + {e['output_tokens']:,}"))
        if e["seconds"] is not None:
            out.append(("seconds", f"{e['seconds']:.3f}"))
        if e["cost_usd"] is not None:
            out.append(("cost", format_usd(e["cost_usd"])))
        return out

    def to_frame(self) -> pl.DataFrame:
        """One row per operator, root first (``depth`` 0); ``seconds`` is the operator's own time."""
        rows = [self.entries[id(node)] for node, _ in self.tree.walk()] if self.tree is not None else []
        return pl.DataFrame(rows, schema=_COLUMNS)

    # ------------------------------------------------------------------ display

    @property
    def header(self) -> str:
        which = "the optimized plan" if self.optimized else "the plan as built (not optimized)"
        state = "" if self.complete else (f", stopped early: {self.error}" if self.error else ", stopped early")
        return f"PROFILE ({which} as it ran: {self.rows:,} rows out in {self.seconds:.3f} s{state})"

    def _time_items(self) -> list[tuple[str, float, str]]:
        if self.tree is None:
            return []
        pairs = [(node, self.entries[id(node)]["seconds"] or 0.0) for node, _ in self.tree.walk()]
        total = sum(v for _, v in pairs) or 1.0
        return [(_short(node), v, f"{v:.3f} s ({100 * v / total:.0f}%)") for node, v in pairs]

    def _money_items(self) -> list[tuple[str, float, str]]:
        if self.tree is None:
            return []
        pairs = [(node, self.entries[id(node)]["cost_usd"]) for node, _ in self.tree.walk()]
        pairs = [(n, c) for n, c in pairs if c is not None]
        total = sum(c for _, c in pairs)
        return [(_short(n), c, f"{format_usd(c)}" + (f" ({100 * c / total:.0f}%)" if total > 0 else ""))
                for n, c in pairs]

    def __str__(self) -> str:
        lines = [self.header]
        if self.tree is None:
            return "\n".join([*lines, "  no operators"])
        header = ("operator", "rows in", "rows out", "calls", "dedup", "cache hits", "tokens", "seconds", "cost")
        rows = []
        for label, node in tree_labels(self.tree):
            if node is None:
                rows.append((label, *[""] * (len(header) - 1)))
                continue
            e = self.entries[id(node)]
            cache = None if e["exact_cache_hits"] is None else e["exact_cache_hits"] + e["semantic_cache_hits"]
            tokens = None if e["prompt_tokens"] is None else e["prompt_tokens"] + e["output_tokens"]
            rows.append((label, _n(e["rows_in"]), _n(e["rows_out"]), _n(e["engine_requests"]), _n(e["dedup_hits"]),
                         _n(cache), _n(tokens), "-" if e["seconds"] is None else f"{e['seconds']:.3f}",
                         "-" if e["cost_usd"] is None else format_usd(e["cost_usd"])))
        lines.append(table_text(header, rows))
        lines.append(bars_text("where the time went (own seconds per operator):", self._time_items()))
        money = self._money_items()
        if money and any(c > 0 for _, c, _ in money):
            lines.append(bars_text(f"where the money went (engine seconds at ${self.machine.hourly_usd:g}/h, "
                                   f"{self.machine.name}):", money))
        elif money:
            lines.append("where the money went: nowhere, no engine time (every answer was reused or skipped)")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        charts = bars_html("where the time went (own seconds)", self._time_items())
        money = self._money_items()
        if money and any(c > 0 for _, c, _ in money):
            charts += bars_html(f"where the money went ({self.machine.name} at ${self.machine.hourly_usd:g}/h)",
                                money, colour="#8e6fd1")
        elif money:
            charts += ("<div style='display:inline-block;vertical-align:top;margin:6px 0 0 0'><b>where the money "
                       "went</b><div>nowhere: no engine time (every answer was reused or skipped)</div></div>")
        if self.tree is None:
            return f"<div><b>{html.escape(self.header)}</b><div>no operators</div></div>"
        return tree_html(self.tree, self.header, subtitle="root on top; each operator's inputs below it",
                         footer=f"<div>{charts}</div>")


def _short(node: DrawNode, width: int = 44) -> str:
    text = (f"{node.tag} " if node.tag else "") + node.title
    return text if len(text) <= width else text[: width - 1] + "…"


def _n(v: int | None) -> str:
    return "-" if v is None else f"{v:,}"
