"""The physical operator interface: execute, estimate, describe.

A physical operator is what the planner makes of a logical node, with every choice made: how
prompts are laid out, whether repeats are collapsed, which caches are asked. Each operator

- ``execute(ctx)``: pulls batches (:class:`~semframe.execution.provenance.Batch`: a frame and
  its provenance) from its inputs and yields its own, streaming where it can;
- ``estimate(est)``: walks the same inputs on known data, without asking any engine, and says
  how many rows reach it and (for a semantic operator) how many engine calls and tokens it will
  need -- the run and the estimate are one interpreter, so they cannot disagree;
- ``describe()``: one line for ``explain()``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from semframe.accounting.estimate import StepEstimate
from semframe.execution.context import RunContext, RunOptions
from semframe.execution.provenance import Batch
from semframe.plan.nodes import Node


@dataclass
class EstState:
    """What is known at one point of the plan while estimating.

    ``batch`` holds the rows at this point (a superset of them when not ``exact``), or None when
    nothing is known; ``unknown`` names the columns whose values only the model knows (placeholders
    of the right type in ``batch``).
    """

    batch: Batch | None
    rows_low: float
    rows_high: float
    exact: bool = True
    unknown: frozenset[str] = frozenset()

    @staticmethod
    def of(batch: Batch) -> EstState:
        return EstState(batch, batch.height, batch.height)


@dataclass
class EstimateContext:
    """Shared by every operator during one estimate."""

    engine: Any
    count: Any
    options: RunOptions
    filter_selectivity: float = 0.5
    sample: int = 256
    steps: list[StepEstimate] = field(default_factory=list)
    #: Model-written column -> typical tokens of its values (their text feeds later prompts).
    typical_tokens: dict[str, float] = field(default_factory=dict)
    #: Shared prompt text -> prompts already asked by earlier steps (the run's memo spans steps).
    seen: dict[Any, pl.Series] = field(default_factory=dict)
    #: How many heads above the operator being estimated may stop the run before it is done.
    under_head: int = 0


class PhysicalOp(ABC):
    """Base of physical operators. ``inputs`` are the operators it pulls batches from."""

    def __init__(self, node: Node, inputs: tuple[PhysicalOp, ...] = ()):
        self.node = node
        self.inputs = inputs

    @abstractmethod
    def execute(self, ctx: RunContext) -> Iterator[Batch]:
        """Yield this operator's output batches."""

    @abstractmethod
    def estimate(self, est: EstimateContext) -> EstState:
        """What reaches this operator's output, estimated without asking an engine."""

    def describe(self) -> str:
        return self.node.describe()

    def detail_lines(self) -> list[str]:
        return self.node.detail_lines()

    def walk(self) -> Iterator[PhysicalOp]:
        yield self
        for child in self.inputs:
            yield from child.walk()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"
