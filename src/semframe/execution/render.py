"""Render a template over a batch: vectorized, values inserted literally, nulls and blanks skipped.

The run and the estimate both render through :func:`render_exprs`, so they agree on which rows
are skipped and on every prompt's text.
"""

from __future__ import annotations

import polars as pl

from semframe.plan.template import Template

_NESTED = (pl.List, pl.Array, pl.Struct)


def text_expr(column: str, dtype: pl.DataType) -> pl.Expr:
    """The column as text for a prompt (the rule is the same for every frontend).

    - strings pass through; numbers, booleans, decimals, categoricals, dates, datetimes and
      times are cast with polars' own formatting;
    - a float NaN is missing data: null, like a pandas NaN (the row is skipped, with a reason);
    - a duration is ISO 8601 (``PT1M30S``);
    - binary is decoded as UTF-8; a value that is not valid UTF-8 is null (with a reason);
    - lists, arrays and structs become compact JSON.

    Nulls stay null. Columns of Python objects are refused when the plan is built
    (:func:`semframe.plan.template.check_renderable`).
    """
    col = pl.col(column)
    if dtype == pl.String:
        return col
    if isinstance(dtype, _NESTED):
        wrapped = pl.struct(col.alias("v")).struct.json_encode()
        as_json = wrapped.str.strip_prefix('{"v":').str.strip_suffix("}")
        return pl.when(col.is_null()).then(pl.lit(None, dtype=pl.String)).otherwise(as_json)
    if dtype.is_float():
        return pl.when(col.is_nan()).then(pl.lit(None, dtype=pl.String)).otherwise(col.cast(pl.String))
    if isinstance(dtype, pl.Duration):
        return col.dt.to_string("iso")
    if dtype == pl.Binary:
        return col.map_batches(_decode_utf8, return_dtype=pl.String)
    return col.cast(pl.String)


def _decode_utf8(values: pl.Series) -> pl.Series:
    """Bytes as UTF-8 text; a value that is not valid UTF-8 becomes null (polars' cast would fail)."""
    def one(b: bytes | None) -> str | None:
        try:
            return None if b is None else b.decode("utf-8")
        except UnicodeDecodeError:
            return None

    return pl.Series(values.name, [one(b) for b in values.to_list()], dtype=pl.String)


def _unrendered_reason(column: str, dtype: pl.DataType) -> str:
    """Why a non-null value of ``column`` has no text."""
    if dtype.is_float():
        return f"NaN in column {column!r} (treated as missing)"
    if dtype == pl.Binary:
        return f"column {column!r} holds bytes that are not valid UTF-8 text"
    return f"the value in column {column!r} cannot be rendered as text"


def render_exprs(template: Template, schema: pl.Schema) -> tuple[pl.Expr, pl.Expr, pl.Expr]:
    """``(text, has_null, all_empty)``: polars expressions for the step's rendered template.

    ``text`` concatenates the template's literal pieces with each referenced column as text
    (values are inserted literally); a row is skipped when any referenced value is null
    (``has_null``) or all of them are empty or whitespace (``all_empty``). The run
    (:func:`render_texts`) and the estimate both render through here.
    """
    values = {c: text_expr(c, schema[c]) for c in template.columns}
    pieces = [pl.lit(part, dtype=pl.String) if k % 2 == 0 else values[part]
              for k, part in enumerate(template.parts) if k % 2 or part]
    text = pl.concat_str(pieces, ignore_nulls=False)
    has_null = pl.any_horizontal([v.is_null() for v in values.values()])
    all_empty = pl.all_horizontal([v.str.strip_chars().str.len_chars() == 0 for v in values.values()])
    return text, has_null, all_empty


def render_texts(template: Template, batch: pl.DataFrame) -> tuple[list[str | None], list[str | None]]:
    """Render the step's template for every row.

    Returns ``(texts, skip_reasons)``: a row whose referenced value is null, or whose
    referenced values are all empty or whitespace, gets text None and a reason.
    """
    text, has_null, all_empty = render_exprs(template, batch.schema)
    frame = batch.select(pl.when(has_null | all_empty).then(None).otherwise(text).alias("text"),
                         has_null.alias("has_null"))
    texts = frame.get_column("text")
    rendered = texts.to_list()
    reasons: list[str | None] = [None] * len(rendered)
    if not texts.null_count():
        return rendered, reasons
    nulls = frame.get_column("has_null")
    schema = batch.schema
    for i in texts.is_null().arg_true().to_list():
        if not nulls[i]:
            reasons[i] = "empty input text"
            continue
        for c in template.columns:
            if batch[c][i] is None:
                reasons[i] = f"null input in column {c!r}"
                break
        else:
            bad = next((c for c in template.columns
                        if batch.select(text_expr(c, schema[c]))[i, 0] is None), template.columns[0])
            reasons[i] = _unrendered_reason(bad, schema[bad])
    return rendered, reasons
