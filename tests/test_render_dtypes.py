"""Every column type has one rendering rule, decided when the plan is built (issue: columns that
cannot be text crashed mid-run)."""

from __future__ import annotations

import datetime as dt
import decimal

import polars as pl
import pytest

import semframe as sf


def rendered(df: pl.DataFrame, column: str) -> tuple[list, list]:
    run = df.lazy().semantic.map("{" + column + "}", name="m").run(sf.DeterministicEngine(), cache=False)
    return run.df["m"].to_list(), run.lineage["error"].to_list()


@pytest.mark.parametrize("series, texts", [
    (pl.Series([dt.timedelta(seconds=90), dt.timedelta(0)]), ["PT1M30S", "PT0S"]),
    (pl.Series([decimal.Decimal("1.50"), decimal.Decimal("-2")]), ["1.50", "-2.00"]),
    (pl.Series(["a", "b"], dtype=pl.Categorical), ["a", "b"]),
    (pl.Series([dt.date(2020, 1, 2), dt.date(1999, 12, 31)]), ["2020-01-02", "1999-12-31"]),
    (pl.Series([dt.time(3, 4), dt.time(23, 59, 1)]), ["03:04:00", "23:59:01"]),
    (pl.Series([[1, 2], [3]]), ["[1,2]", "[3]"]),
    (pl.Series([{"a": 1}, {"a": 2}]), ['{"a":1}', '{"a":2}']),
    (pl.Series([True, False]), ["true", "false"]),
    (pl.Series([b"caf\xc3\xa9", b"ok"]), ["café", "ok"]),
])
def test_each_type_renders_to_its_text(series, texts):
    out, errors = rendered(pl.DataFrame({"v": series}), "v")
    assert out == [f"echo: {t}" for t in texts] and errors == [None, None]


def test_values_that_cannot_be_text_are_nulls_with_a_reason_and_the_run_goes_on():
    df = pl.DataFrame({"b": [b"ok"] * 1500 + [b"\xff\xfe"] + [b"fine"] * 10,
                       "f": [1.5] * 1500 + [float("nan")] + [2.0] * 10})
    out, errors = rendered(df, "b")
    assert out[1500] is None and errors[1500] == "column 'b' holds bytes that are not valid UTF-8 text"
    assert sum(v is None for v in out) == 1
    out, errors = rendered(df, "f")
    assert out[1500] is None and errors[1500] == "NaN in column 'f' (treated as missing)"


def test_nan_is_missing_in_polars_and_pandas_alike():
    pd = pytest.importorskip("pandas")
    engine = sf.DeterministicEngine()
    polars_out = pl.DataFrame({"x": [1.0, float("nan")]}).semantic.map("{x}", name="m", engine=engine, cache=False)
    pandas_out = pd.DataFrame({"x": [1.0, float("nan")]}).semantic.map("{x}", name="m", engine=engine, cache=False)
    assert polars_out["m"].to_list() == list(pandas_out["m"]) == ["echo: 1.0", None]


def test_python_objects_are_refused_when_the_plan_is_built():
    df = pl.DataFrame({"o": pl.Series([object(), object()], dtype=pl.Object)})
    with pytest.raises(sf.PlanError, match=r"column 'o' holds Python objects .*map_elements\(str"):
        df.lazy().semantic.classify("o", ["A", "B"])
