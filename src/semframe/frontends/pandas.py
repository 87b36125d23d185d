"""The ``semantic`` accessor on pandas DataFrames: the same four verbs, eager.

Only the columns a step reads are handed to polars; the result is the original pandas frame
(every column, dtype and index label as it was) with the new column, and for ``filter`` the
kept rows in their original order.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import polars as pl

from semframe.errors import PlanError
from semframe.physical.executor import run_plan
from semframe.frontends.verbs import SemanticVerbs
from semframe.plan.nodes import Node, Scan, Source
from semframe.plan.semantic import SemanticStep


@pd.api.extensions.register_dataframe_accessor("semantic")
class PandasSemanticAccessor(SemanticVerbs):
    """``pd.DataFrame.semantic``: ``classify``, ``filter``, ``extract``, ``map``, eager.

    Examples
    --------
    >>> import pandas as pd, semframe as sf
    >>> pdf = pd.DataFrame({"review": ["good", "bad"]}, index=["a", "b"])
    >>> out = pdf.semantic.classify("review", ["pos", "neg"], engine=sf.DeterministicEngine())
    >>> list(out.index)
    ['a', 'b']
    """

    def __init__(self, pdf: pd.DataFrame):
        self._pdf = pdf

    def _plan(self) -> Node:
        # The schema of every string-named column (for template checks), without converting data.
        names = [c for c in self._pdf.columns if isinstance(c, str)]
        return Scan(Source.from_data(pl.DataFrame(schema={c: pl.String for c in names}), "pandas DataFrame"))

    def _finish(self, node: Node, run_options: dict[str, Any]) -> pd.DataFrame:
        assert isinstance(node, SemanticStep)
        pdf = self._pdf
        used = list(node.template.columns)
        try:
            data = pl.from_pandas(pdf[used].reset_index(drop=True))
        except Exception as exc:  # pyarrow/polars conversion errors vary by dtype
            raise PlanError(f"semantic.{node.operator}: cannot read column(s) {used} from pandas: {exc}") from exc
        node = node.with_children((Scan(Source.from_data(data, "pandas DataFrame")),))
        result = run_plan(node, **run_options)
        positions = result.row_ids.to_numpy()
        out = pdf.iloc[positions].copy()
        if node.name is not None:
            # An object column: labels and text as str, extract results as dicts, no answer as None.
            out[node.name] = pd.Series(result.df[node.name].to_list(), index=out.index, dtype="object")
        return out
