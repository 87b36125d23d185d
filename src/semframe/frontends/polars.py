"""The ``semantic`` namespaces on polars DataFrame (eager) and LazyFrame (lazy).

Registered through polars' official hooks when semframe is imported, as ``.semantic`` and as
its alias ``.sf`` (see :mod:`semframe.frontends.namespaces` for what happens when another
library has registered a ``.semantic`` already).
"""

from __future__ import annotations

from typing import Any

import polars as pl

from semframe.frontends.lazy import LazyVerbs, SemLazyFrame, check_verb_options
from semframe.frontends.namespaces import register
from semframe.frontends.verbs import SemanticVerbs
from semframe.plan.nodes import Node, Scan, Source


class LazySemanticNamespace(LazyVerbs):
    """``pl.LazyFrame.semantic``: each verb returns a :class:`SemLazyFrame` (nothing runs yet)."""

    def __init__(self, lf: pl.LazyFrame):
        self._lf = lf

    def _plan(self) -> Node:
        return Scan(Source.from_data(self._lf))


class DataFrameSemanticNamespace(SemanticVerbs):
    """``pl.DataFrame.semantic``: each verb runs at once and returns a DataFrame.

    Run options (``engine=``, ``batch_size=``, ``cache=``, ``lineage=``) may be passed to any
    verb; ``sf.last_run()`` gives the run's lineage and metrics.
    """

    def __init__(self, df: pl.DataFrame):
        self._df = df

    def _plan(self) -> Node:
        return Scan(Source.from_data(self._df))

    def _finish(self, node: Node, run_options: dict[str, Any]) -> pl.DataFrame:
        check_verb_options(node.operator, run_options, eager=True)  # type: ignore[attr-defined]
        return SemLazyFrame(node).collect(**run_options)


register([(pl.LazyFrame, pl.api.register_lazyframe_namespace, LazySemanticNamespace),
          (pl.DataFrame, pl.api.register_dataframe_namespace, DataFrameSemanticNamespace)])
