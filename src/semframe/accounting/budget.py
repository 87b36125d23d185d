"""Budget guards: stop a run before an engine batch would take it past ``max_tokens`` or ``max_cost``.

The guard sees every batch of requests just before it goes to the engine (answers from caches
never reach it: they are free). It predicts the batch's tokens with the prompts counted by the
engine's tokenizer and every answer at its full ``max_tokens``, so a token budget is never
exceeded; it predicts the batch's time from the speed the engine has shown so far in the run
(or the default rates before the first batch), so a cost budget is kept as well as that
prediction allows. For an engine billed by the token (``engine.pricing``, e.g.
``sf.OpenAIEngine(..., prices=...)``) the cost is its tokens at its prices, predicted for a
batch at the most it can bill (the prompts, counted as the engine counts them, none of them
discounted as cached, and every answer at ``max_tokens``; a re-ask included where the engine may
make one, :meth:`~semframe.engines.base.Engine.token_bound`). The whole batch is checked before
any of it is sent, so the limit holds however many of its requests are in flight at once --
and however many batches: a batch sent while an earlier one is still being answered (the
executor pipelines batches to a remote engine) is checked against what is spent *plus* the
worst case of every batch still in flight, which each reserves until its answers are counted.
When a batch would go over, it raises :class:`semframe.BudgetExceeded`;
the executor then returns everything already answered with the error (``err.result``), and
every answer already given is in the persistent cache for the next run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from semframe.accounting.prices import MachinePrice
from semframe.accounting.throughput import Throughput
from semframe.accounting.tokens import request_prompt_tokens
from semframe.engines.base import Completion, Engine, Request
from semframe.errors import BudgetExceeded


@dataclass
class Budget:
    """Limits for one run, and what has been spent against them.

    Parameters
    ----------
    max_tokens
        The most prompt + output tokens the engine may process in the run (None: no limit).
    max_cost
        The most USD the run may cost: engine seconds x the machine's hourly price, plus the
        tokens of engines billed by the token x their prices.
    machine
        The machine price the cost is computed with.
    throughput
        Rates used to predict the first batch's time (later batches use the observed speed).
    engine
        The run's engine: counts prompt tokens (its tokenizer; None uses the
        ~4-characters-per-token heuristic) and, where it has per-token prices, prices them. A
        step with an engine of its own is counted and priced by that engine.

    Examples
    --------
    >>> import polars as pl, semframe as sf
    >>> plan = pl.DataFrame({"t": [f"text {i}" for i in range(100)]}).lazy().semantic.classify("t", ["YES", "NO"])
    >>> try:
    ...     plan.collect(engine=sf.DeterministicEngine(), batch_size=10, max_tokens=300, cache=False)
    ... except sf.BudgetExceeded as err:
    ...     print(err.result.df.height, err.spent_tokens <= 300)
    10 True
    """

    max_tokens: int | None = None
    max_cost: float | None = None
    machine: MachinePrice | None = None
    throughput: Throughput | None = None
    engine: Any = None
    spent_tokens: int = 0
    spent_seconds: float = 0.0
    spent_requests: int = 0
    #: USD spent on engines billed by the token (their seconds are not in ``spent_seconds``).
    spent_token_usd: float = 0.0
    #: Worst cases (tokens, token USD, engine seconds) of the batches sent and not yet counted,
    #: by batch (the key the resolver hands back when it counts the batch).
    reserved: dict[Any, tuple[int, float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 0):
            raise ValueError(f"max_tokens must be a non-negative integer, got {self.max_tokens!r}")
        if self.max_cost is not None and (not isinstance(self.max_cost, (int, float)) or isinstance(self.max_cost, bool)
                                          or not math.isfinite(self.max_cost) or self.max_cost < 0):
            raise ValueError(f"max_cost must be a non-negative number of USD, got {self.max_cost!r}")
        if self.max_cost is not None and (self.machine is None or self.throughput is None):
            raise ValueError("a cost budget needs the machine price and a throughput")

    @property
    def spent_usd(self) -> float:
        local = self.machine.cost(self.spent_seconds) if self.machine is not None else 0.0
        return local + self.spent_token_usd

    def check(self, requests: Sequence[Request], where: str = "", engine: Any = None, *,
              reserve: Any = None) -> None:
        """Raise :class:`BudgetExceeded` if sending ``requests`` (to ``engine``, default the
        run's) could take the run past a limit, counting the batches still in flight at their
        worst case. ``reserve`` (a key for the batch): it is sent, so hold its worst case under that
        key until :meth:`spend` counts it."""
        engine = self.engine if engine is None else engine
        held = list(self.reserved.values())
        held_tokens = sum(r[0] for r in held)
        held_usd = sum(r[1] for r in held)
        held_seconds = sum(r[2] for r in held)
        prompt = output = 0
        for r in requests:
            p = request_prompt_tokens(r, engine)
            if isinstance(engine, Engine):
                p, o = engine.token_bound(r, p)
            else:
                o = r.max_tokens
            prompt += p
            output += o
        if self.max_tokens is not None and self.spent_tokens + held_tokens + prompt + output > self.max_tokens:
            raise BudgetExceeded(
                f"stopped before {where or 'an engine batch'}: its {len(requests):,} requests could use up to "
                f"{prompt + output:,} tokens ({prompt:,} prompt + {output:,} output at max_tokens), taking the "
                f"run past max_tokens={self.max_tokens:,} (spent {self.spent_tokens:,}"
                f"{f', up to {held_tokens:,} more in flight' if held_tokens else ''}). Everything answered "
                "so far is in err.result (and in the exact cache, when it is on); rerun with a larger max_tokens to go on.",
                spent_tokens=self.spent_tokens, spent_usd=self.spent_usd,
            )
        pricing = engine.pricing if isinstance(engine, Engine) else None
        cost = seconds = 0.0
        if self.max_cost is not None and pricing is not None:
            cost = pricing.cost(prompt_tokens=prompt, output_tokens=output)
            if self.spent_usd + held_usd + self._machine_cost(held_seconds) + cost > self.max_cost:
                raise BudgetExceeded(
                    f"stopped before {where or 'an engine batch'}: its {len(requests):,} requests could cost up to "
                    f"${cost:.6f} ({prompt:,} prompt + {output:,} output tokens at {pricing.model}'s prices: "
                    f"${pricing.input:g}/${pricing.output:g} per 1M), bringing the cost to ~${self.spent_usd + cost:.6f} "
                    f"> max_cost=${self.max_cost:g} (spent ${self.spent_usd:.6f}). Everything answered so far is in "
                    "err.result (and in the exact cache, when it is on); rerun with a larger max_cost to go on.",
                    spent_tokens=self.spent_tokens, spent_usd=self.spent_usd,
                )
        elif self.max_cost is not None:
            seconds = self._predict_seconds(len(requests), prompt, output)
            predicted = (self.machine.cost(self.spent_seconds + held_seconds + seconds)  # type: ignore[union-attr]
                         + self.spent_token_usd + held_usd)
            if predicted > self.max_cost:
                raise BudgetExceeded(
                    f"stopped before {where or 'an engine batch'}: its {len(requests):,} requests would take "
                    f"~{seconds:.3g} engine s, bringing the local cost to ~${predicted:.6f} > max_cost="
                    f"${self.max_cost:g} (spent ${self.spent_usd:.6f} at ${self.machine.hourly_usd:g}/h, "  # type: ignore[union-attr]
                    f"{self.machine.name}). Everything answered so far is in err.result (and in the "  # type: ignore[union-attr]
                    "exact cache, when it is on); rerun with a larger max_cost to go on.",
                    spent_tokens=self.spent_tokens, spent_usd=self.spent_usd,
                )

        if reserve is not None:
            self.reserved[reserve] = (prompt + output, cost, seconds)

    def _machine_cost(self, seconds: float) -> float:
        return self.machine.cost(seconds) if (self.machine is not None and seconds) else 0.0

    def spend(self, completions: Sequence[Completion], engine: Any = None, *, reserved: Any = None) -> None:
        """Count what an engine batch (of ``engine``, default the run's) actually used, and free
        the reservation held under ``reserved``."""
        engine = self.engine if engine is None else engine
        self.reserved.pop(reserved, None)
        pricing = engine.pricing if isinstance(engine, Engine) else None
        for c in completions:
            self.spent_tokens += c.prompt_tokens + c.output_tokens
        if pricing is not None:
            self.spent_token_usd += sum(pricing.cost(prompt_tokens=c.prompt_tokens, output_tokens=c.output_tokens,
                                                     cached_prompt_tokens=c.cached_prompt_tokens) for c in completions)
            return
        self.spent_requests += len(completions)
        for c in completions:
            self.spent_seconds += c.charged_s

    # The answer resolver's observer interface: it calls these around every engine batch.

    def before_engine_batch(self, step: Any, requests: Sequence[Request]) -> None:
        number = step.metrics.engine_batches + self._in_flight(step) + 1
        self.check(requests, f"engine batch {number} of {step.where}", getattr(step, "engine", None),
                   reserve=(step.index, id(requests)))

    def after_engine_batch(self, step: Any, completions: Sequence[Completion],
                           requests: Sequence[Request] | None = None) -> None:
        self.spend(completions, getattr(step, "engine", None), reserved=(step.index, id(requests)))

    def _in_flight(self, step: Any) -> int:
        return sum(1 for key in self.reserved if isinstance(key, tuple) and key[0] == step.index)

    def _predict_seconds(self, n: int, prompt: int, output: int) -> float:
        if self.spent_requests:
            return n * self.spent_seconds / self.spent_requests
        return self.throughput.seconds(prompt, output)  # type: ignore[union-attr]
