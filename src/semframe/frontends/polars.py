"""The ``semantic`` namespaces on polars DataFrame (eager) and LazyFrame (lazy).

Registered through polars' official hooks when semframe is imported.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from semframe.frontends.lazy import LazyVerbs, SemLazyFrame
from semframe.frontends.verbs import SemanticVerbs
from semframe.plan.nodes import Node, Scan, Source


@pl.api.register_lazyframe_namespace("semantic")
class LazySemanticNamespace(LazyVerbs):
    """``pl.LazyFrame.semantic``: each verb returns a :class:`SemLazyFrame` (nothing runs yet)."""

    def __init__(self, lf: pl.LazyFrame):
        self._lf = lf

    def _plan(self) -> Node:
        return Scan(Source.from_data(self._lf))


@pl.api.register_dataframe_namespace("semantic")
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
        return SemLazyFrame(node).collect(**run_options)
