"""Render a template over a batch: vectorized, values inserted literally, nulls and blanks skipped.

The run and the estimate both render through :func:`render_exprs`, so they agree on which rows
are skipped and on every prompt's text.
"""

from __future__ import annotations

import polars as pl

from semframe.plan.template import Template

_NESTED = (pl.List, pl.Array, pl.Struct)


def text_expr(column: str, dtype: pl.DataType) -> pl.Expr:
    """The column as text for a prompt.

    Strings pass through; numbers, booleans, dates and other scalars are cast with polars'
    own formatting; lists, arrays and structs become compact JSON. Nulls stay null.
    """
    col = pl.col(column)
    if dtype == pl.String:
        return col
    if isinstance(dtype, _NESTED):
        wrapped = pl.struct(col.alias("v")).struct.json_encode()
        as_json = wrapped.str.strip_prefix('{"v":').str.strip_suffix("}")
        return pl.when(col.is_null()).then(pl.lit(None, dtype=pl.String)).otherwise(as_json)
    return col.cast(pl.String)


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
    null_cols = [c for c in template.columns if batch[c].null_count()]
    nulls = frame.get_column("has_null")
    for i in texts.is_null().arg_true().to_list():
        if nulls[i]:
            which = [c for c in null_cols if batch[c][i] is None]
            reasons[i] = f"null input in column {which[0]!r}" if which else "null input"
        else:
            reasons[i] = "empty input text"
    return rendered, reasons
