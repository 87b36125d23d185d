"""What a run cost, two ways, and what its caches saved.

1. What the run was billed: for a local engine (and any engine without per-token prices) its
   wall time on the run times the machine's hourly price
   (:func:`semframe.accounting.prices.machine_price`); for an engine billed by the token (an API,
   ``sf.OpenAIEngine(..., prices=...)``: ``engine.pricing``), its prompt, cached-prompt and output
   tokens times its prices. A run whose steps use both kinds adds the two.
2. The same tokens as API calls: prompt, cached-prompt and output tokens priced with each entry
   of :data:`semframe.accounting.prices.TOKEN_PRICES`.

Answers from the in-run dedup memo, the exact cache or the semantic cache cost nothing. What
they saved is estimated per step from what that step's engine requests cost on average (or,
for a step answered entirely from cache, from its prompts and answers counted with the
tokenizer).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from semframe.accounting.estimate import text_table
from semframe.accounting.prices import TOKEN_PRICES, MachinePrice, TokenPrice, format_usd
from semframe.accounting.throughput import DEFAULT_THROUGHPUT
from semframe.accounting.tokens import TokenCounter, heuristic_count_tokens

#: Lineage sources that cost nothing (answers reused from somewhere).
FREE_SOURCES = ("dedup", "exact_cache", "semantic_cache")
_SAVING_SAMPLE = 64


@dataclass(frozen=True)
class CostReport:
    """The cost of one run and the saving from reused answers.

    Attributes
    ----------
    machine
        The machine price the local cost uses.
    engine_seconds
        The engine's wall time on this run.
    engine_requests, prompt_tokens, cached_prompt_tokens, output_tokens
        What the engine was asked and produced (reused answers count zero).
    saved_requests
        Reused answers by kind: ``{"dedup": n, "exact_cache": n, "semantic_cache": n}``.
    saved_prompt_tokens, saved_cached_prompt_tokens, saved_output_tokens, saved_engine_seconds
        Estimates of what the reused answers would have cost had the engine been asked
        (``saved_engine_seconds``: of the steps priced by the machine-hour).
    token_usd, saved_token_usd
        What the steps answered by engines billed by the token cost (their tokens x their
        engine's prices), and what their reused answers saved (estimate); 0 for a local run.
    local_engine_seconds
        The engine seconds priced by the machine-hour (None: all of ``engine_seconds``).
    pricing
        The per-token prices that applied (one per engine billed by the token).

    Examples
    --------
    >>> import polars as pl, semframe as sf
    >>> df = pl.DataFrame({"t": ["a", "b", "a"]})
    >>> _ = df.semantic.classify("t", ["YES", "NO"], engine=sf.DeterministicEngine(), cache=False)
    >>> report = sf.last_run().cost
    >>> report.engine_requests, report.saved_requests["dedup"]
    (2, 1)
    >>> report.local_usd >= 0
    True
    """

    machine: MachinePrice
    engine_seconds: float
    engine_requests: int
    prompt_tokens: int
    cached_prompt_tokens: int
    output_tokens: int
    saved_requests: dict[str, int] = field(default_factory=dict)
    saved_prompt_tokens: float = 0.0
    saved_cached_prompt_tokens: float = 0.0
    saved_output_tokens: float = 0.0
    saved_engine_seconds: float = 0.0
    token_usd: float = 0.0
    saved_token_usd: float = 0.0
    local_engine_seconds: float | None = None
    pricing: tuple[TokenPrice, ...] = ()

    @property
    def local_usd(self) -> float:
        """Engine seconds (of the steps priced by the machine-hour) x the machine's hourly price."""
        seconds = self.engine_seconds if self.local_engine_seconds is None else self.local_engine_seconds
        return self.machine.cost(seconds)

    @property
    def total_usd(self) -> float:
        """What the run cost: the local cost plus the per-token cost of engines billed by the token."""
        return self.local_usd + self.token_usd

    @property
    def saved_local_usd(self) -> float:
        """What the reused answers would have cost on this machine (estimate)."""
        return self.machine.cost(self.saved_engine_seconds)

    def api(self) -> pl.DataFrame:
        """One row per registered API price: what these tokens would cost there, and the saving."""
        rows = []
        for price in TOKEN_PRICES.values():
            rows.append({
                "model": price.model,
                "input_usd_per_m": price.input,
                "cached_input_usd_per_m": price.cached_input,
                "output_usd_per_m": price.output,
                "cost_usd": price.cost(prompt_tokens=self.prompt_tokens, output_tokens=self.output_tokens,
                                       cached_prompt_tokens=self.cached_prompt_tokens),
                "saved_usd": price.cost(prompt_tokens=self.saved_prompt_tokens,
                                        output_tokens=self.saved_output_tokens,
                                        cached_prompt_tokens=self.saved_cached_prompt_tokens),
                "as_of": price.as_of,
                "source": price.source,
            })
        schema = {"model": pl.String, "input_usd_per_m": pl.Float64, "cached_input_usd_per_m": pl.Float64,
                  "output_usd_per_m": pl.Float64, "cost_usd": pl.Float64, "saved_usd": pl.Float64,
                  "as_of": pl.String, "source": pl.String}
        return pl.DataFrame(rows, schema=schema)

    def __str__(self) -> str:
        m = self.machine
        kinds = ", ".join(f"{k} {v:,}" for k, v in self.saved_requests.items() if v) or "none"
        saved = sum(self.saved_requests.values())
        local_s = self.engine_seconds if self.local_engine_seconds is None else self.local_engine_seconds
        lines = [
            f"COST (local: {format_usd(self.local_usd)} = {local_s:.4g} engine s x "
            f"${m.hourly_usd:g}/h, {m.name}, as listed {m.as_of or 'by you'})",
            text_table(
                ("", "requests", "prompt tokens", "prefix-cached", "output tokens", "engine s", "local cost"),
                [("engine", f"{self.engine_requests:,}", f"{self.prompt_tokens:,}", f"{self.cached_prompt_tokens:,}",
                  f"{self.output_tokens:,}", f"{self.engine_seconds:.4g}", format_usd(self.local_usd)),
                 ("reused (free, est.)", f"{saved:,}", f"~{self.saved_prompt_tokens:,.0f}",
                  f"~{self.saved_cached_prompt_tokens:,.0f}", f"~{self.saved_output_tokens:,.0f}",
                  f"~{self.saved_engine_seconds:.4g}", f"~{format_usd(self.saved_local_usd)} saved")],
            ),
            f"reused answers by kind: {kinds}",
        ]
        if self.pricing:
            names = ", ".join(f"{p.model} (${p.input:g}/${p.cached_input:g}/${p.output:g} per 1M input/cached/output)"
                              for p in self.pricing)
            lines.insert(1, f"BILLED BY TOKEN: {format_usd(self.token_usd)} at {names}; reused answers saved "
                            f"~{format_usd(self.saved_token_usd)}; total {format_usd(self.total_usd)}")
        lines.append("the same tokens as API calls (USD per 1M tokens):")
        rows = [(r["model"], f"{r['input_usd_per_m']:g}", f"{r['cached_input_usd_per_m']:g}",
                 f"{r['output_usd_per_m']:g}", format_usd(r["cost_usd"]), format_usd(r["saved_usd"]), r["as_of"])
                for r in self.api().iter_rows(named=True)]
        if rows:
            table = text_table(("model", "input", "cached", "output", "cost", "saved", "as of"), rows)
            lines.extend("  " + line for line in table.splitlines())
        else:
            lines.append("  no API prices registered (sf.register_price)")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        lines = str(self).splitlines()
        head = html.escape(lines[0])
        table = pl.DataFrame({
            "": ["engine", "reused (free, est.)"],
            "requests": [self.engine_requests, sum(self.saved_requests.values())],
            "prompt_tokens": [float(self.prompt_tokens), self.saved_prompt_tokens],
            "output_tokens": [float(self.output_tokens), self.saved_output_tokens],
            "engine_seconds": [self.engine_seconds, self.saved_engine_seconds],
            "local_usd": [self.local_usd, self.saved_local_usd],
        })
        kinds = html.escape(next(line for line in lines if line.startswith("reused answers by kind")))
        return (f"<div><p><b>{head}</b></p>{table._repr_html_()}<p>{kinds}</p>"
                f"<p>the same tokens as API calls:</p>{self.api().drop('source')._repr_html_()}</div>")


def cost_report(step_metrics: Sequence[Any], machine: MachinePrice, *, lineage: pl.DataFrame | None = None,
                prompts: pl.DataFrame | None = None, count: TokenCounter = heuristic_count_tokens) -> CostReport:
    """Build the :class:`CostReport` of a run from its per-step metrics (and lineage, if recorded)."""
    saved = {k: 0 for k in FREE_SOURCES}
    sp = scp = so = ss = 0.0
    token_usd = saved_token_usd = local_seconds = 0.0
    pricing: list[TokenPrice] = []
    for m in step_metrics:
        price = getattr(m, "pricing", None)
        if price is None:
            local_seconds += m.engine_seconds
        else:
            token_usd += price.cost(prompt_tokens=m.prompt_tokens, output_tokens=m.output_tokens,
                                    cached_prompt_tokens=m.cached_prompt_tokens)
            if price not in pricing:
                pricing.append(price)
        hits = m.dedup_hits + m.exact_cache_hits + m.semantic_cache_hits
        saved["dedup"] += m.dedup_hits
        saved["exact_cache"] += m.exact_cache_hits
        saved["semantic_cache"] += m.semantic_cache_hits
        if not hits:
            continue
        if m.engine_requests:
            n = m.engine_requests
            p, c, o, s = m.prompt_tokens / n, m.cached_prompt_tokens / n, m.output_tokens / n, m.engine_seconds / n
        else:
            p, o = _sampled_tokens(m.step, lineage, prompts, count)
            c = 0.0
            s = DEFAULT_THROUGHPUT[machine.kind].seconds(p, o)
        sp, scp, so = sp + hits * p, scp + hits * c, so + hits * o
        if price is None:
            ss += hits * s
        else:
            saved_token_usd += price.cost(prompt_tokens=hits * p, output_tokens=hits * o, cached_prompt_tokens=hits * c)
    return CostReport(
        machine=machine,
        engine_seconds=sum(m.engine_seconds for m in step_metrics),
        engine_requests=sum(m.engine_requests for m in step_metrics),
        prompt_tokens=sum(m.prompt_tokens for m in step_metrics),
        cached_prompt_tokens=sum(m.cached_prompt_tokens for m in step_metrics),
        output_tokens=sum(m.output_tokens for m in step_metrics),
        saved_requests=saved,
        saved_prompt_tokens=sp,
        saved_cached_prompt_tokens=scp,
        saved_output_tokens=so,
        saved_engine_seconds=ss,
        token_usd=token_usd,
        saved_token_usd=saved_token_usd,
        local_engine_seconds=local_seconds if pricing else None,
        pricing=tuple(pricing),
    )


def _sampled_tokens(step: int, lineage: pl.DataFrame | None, prompts: pl.DataFrame | None,
                    count: TokenCounter) -> tuple[float, float]:
    """Mean prompt and output tokens of a step's reused answers, from a sample of their texts."""
    if lineage is None or prompts is None or lineage.is_empty():
        return 0.0, 0.0
    sample = (
        lineage.filter((pl.col("step") == step) & pl.col("source").is_in(FREE_SOURCES))
        .unique("request_key", keep="first", maintain_order=True)
        .head(_SAVING_SAMPLE)
        .join(prompts, on="request_key", how="left")
    )
    if sample.is_empty():
        return 0.0, 0.0
    p = [count(t) for t in sample["prompt"].fill_null("").to_list()]
    o = [count(t) for t in sample["raw_output"].fill_null("").to_list()]
    return sum(p) / len(p), sum(o) / len(o)
