"""The ``semantic`` accessor on pandas DataFrames (alias ``.sf``): the same four verbs, eager.

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
from semframe.frontends.lazy import check_verb_options
from semframe.frontends.namespaces import register
from semframe.frontends.verbs import SemanticVerbs
from semframe.plan.nodes import Node, Scan, Source
from semframe.plan.semantic import SemanticStep


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

    def _labels(self) -> dict[str, Any]:
        """Each column's name as a template names it (a string) -> its pandas label.

        A column labelled ``0`` (or any other non-string) is ``{0}`` in a template and is listed
        as ``'0'`` in errors; where a string-named column has that name already, the string wins.
        """
        columns = list(self._pdf.columns)
        strings = {c for c in columns if isinstance(c, str)}
        labels: dict[str, Any] = {}
        for c in columns:
            key = c if isinstance(c, str) else str(c)
            if key in labels or (not isinstance(c, str) and key in strings):
                continue
            labels[key] = c
        return labels

    def _plan(self) -> Node:
        # The schema of every column (for template checks), without converting data.
        names = list(self._labels())
        return Scan(Source.from_data(pl.DataFrame(schema={c: pl.String for c in names}), "pandas DataFrame"))

    def _finish(self, node: Node, run_options: dict[str, Any]) -> pd.DataFrame:
        check_verb_options(node.operator, run_options, eager=True)  # type: ignore[attr-defined]
        if not isinstance(node, SemanticStep):
            return self._finish_whole(node, run_options)
        pdf = self._pdf
        used = list(node.template.columns)
        labels = self._labels()
        try:
            part = pdf[[labels[c] for c in used]]
            part.columns = used
            data = pl.from_pandas(part.reset_index(drop=True))
        except Exception as exc:  # pyarrow/polars conversion errors vary by dtype
            raise PlanError(f"semantic.{node.operator}: cannot read column(s) {used} from pandas: {exc}") from exc
        node = node.with_children((Scan(Source.from_data(data, "pandas DataFrame")),))
        result = run_plan(node, **run_options)
        positions = result.row_ids.to_numpy()
        out = pdf.iloc[positions].copy()
        if node.name is not None:
            # An object column: labels and text as str, extract results as dicts, no answer as None.
            out[node.name] = pd.Series(result.df[node.name].to_list(), index=out.index, dtype="object")
        extra = getattr(node, "probabilities_column", None)  # classify(probabilities=True): dicts
        if extra is not None:
            out[extra] = pd.Series(result.df[extra].to_list(), index=out.index, dtype="object")
        return out


    def _finish_whole(self, node: Node, run_options: dict[str, Any]) -> pd.DataFrame:
        """Any other operator (join, aggregate, top-k, ...), over the frame in polars.

        Where the operator keeps input rows one by one (adding columns, dropping or reordering
        rows: a top-k, a cluster label), only the columns it reads go to polars, and the result is
        the original pandas rows (index, dtypes) with the operator's new columns -- integers as
        pandas' nullable integer dtypes, text as objects; otherwise (a join's pairs, one row per
        group) the whole frame goes, and the result is a new pandas frame with a fresh index.
        """
        labels = self._labels()
        pdf = self._pdf
        keeps_rows = node.rows in ("aligned", "subset", "permutation", "prefix")
        names = list(labels)
        if keeps_rows:
            needed = node.columns_needed(frozenset())[0]
            if needed:  # every operator reads at least its text column
                names = [c for c in names if c in needed]
        try:
            part = pdf[[labels[c] for c in names]]
            part.columns = names
            data = pl.from_pandas(part.reset_index(drop=True))
        except Exception as exc:  # pyarrow/polars conversion errors vary by dtype
            raise PlanError(f"semantic.{node.operator}: cannot read column(s) {names} from pandas: {exc}") from exc  # type: ignore[attr-defined]
        scan = Scan(Source.from_data(data, "pandas DataFrame"))
        node = node.with_children((scan, *node.children[1:]))
        result = run_plan(node, **run_options)
        if keeps_rows and result.row_ids.dtype == pl.UInt32:
            out = pdf.iloc[result.row_ids.to_numpy()].copy()
            for name in result.df.columns:
                if name not in labels:
                    out[name] = _pandas_column(result.df[name], out.index)
            return out
        return result.df.to_pandas()


def _pandas_column(series: pl.Series, index: pd.Index) -> pd.Series:
    """A polars column as a pandas one: integers as nullable integer dtypes (``UInt32``,
    ``Int64`` ...), floats and booleans as themselves, everything else (text, lists, structs) as
    objects (None for null)."""
    dtype = series.dtype
    if dtype.is_integer():
        return pd.Series(pd.array(series.to_list(), dtype=str(dtype)), index=index)  # "UInt32", "Int64" ...
    if dtype.is_float() or (dtype == pl.Boolean and series.null_count() == 0):
        return pd.Series(series.to_numpy(), index=index)
    return pd.Series(series.to_list(), index=index, dtype="object")


register([(pd.DataFrame, pd.api.extensions.register_dataframe_accessor, PandasSemanticAccessor)])
