"""Accounting: prices, costs, estimates before a run and budgets during it.

- :mod:`~semframe.accounting.prices`: machine hourly prices and per-token API prices (dated,
  sourced, editable: :func:`register_price`, :func:`register_machine_price`).
- :mod:`~semframe.accounting.tokens`: counting prompt tokens and answer sizes before a run.
- :mod:`~semframe.accounting.throughput`: how long tokens take.
- :mod:`~semframe.accounting.cost`: what a run cost and what reused answers saved.
- :mod:`~semframe.accounting.estimate`: the figures of a plan's estimate (calls, tokens, time, cost).
- :mod:`~semframe.accounting.budget`: stop a run before it exceeds ``max_tokens``/``max_cost``.
"""

from __future__ import annotations

from semframe.accounting.budget import Budget
from semframe.accounting.cost import CostReport
from semframe.accounting.estimate import PlanEstimate, StepEstimate
from semframe.accounting.prices import (
    MACHINE_PRICES,
    TOKEN_PRICES,
    MachinePrice,
    TokenPrice,
    machine_price,
    register_machine_price,
    register_price,
    unregister_price,
)
from semframe.accounting.throughput import DEFAULT_THROUGHPUT, Throughput

__all__ = [
    "DEFAULT_THROUGHPUT",
    "MACHINE_PRICES",
    "TOKEN_PRICES",
    "Budget",
    "CostReport",
    "MachinePrice",
    "PlanEstimate",
    "StepEstimate",
    "Throughput",
    "TokenPrice",
    "machine_price",
    "register_machine_price",
    "register_price",
    "unregister_price",
]
