"""Hostile inputs: the only allowed outcomes are a semframe error raised before any engine call, or
a run that completes -- with nulls and recorded reasons where an answer could not be had.

Random column values (text, numbers with NaN and infinities, bytes, lists, structs, dates,
nulls), random templates, label sets and extract schemas, pandas object columns, and an engine
that answers junk (wrong types, huge numbers, extra keys, broken JSON, labels with spaces).
Anything else escaping a run -- a polars error, a TypeError, a KeyError -- is a bug.
"""

from __future__ import annotations

import datetime as dt
import json
import string

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import semframe as sf

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                    derandomize=True)

texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)
scalars = st.one_of(
    st.none(), texts, st.integers(min_value=-(2**62), max_value=2**62),
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
)
junk_answers = st.one_of(
    texts,
    st.sampled_from(['{"n": 100000000000000000000}', '{"n": 3.0}', '{"n": "3"}', '{"n": 1, "extra": 2}',
                     '{"n": null}', "[1, 2]", "{", '{"n": 1e309}', "YES ", " yes", "NO\n", "MAYBE", "",
                     '{"a": {"b": [1, 2, "x"]}}', '{"a": {"b": []}, "c": [{"d": true}]}']),
    st.dictionaries(st.sampled_from(["n", "a", "b", "x", "name"]), scalars, max_size=4).map(
        lambda d: json.dumps(d, allow_nan=True)),
)


def column(kind: str, n: int):
    """A strategy for one column of ``n`` values of a kind (mixed nulls)."""
    base = {
        "str": texts,
        "int": st.integers(min_value=-(2**62), max_value=2**62),
        "float": st.floats(allow_nan=True, allow_infinity=True),
        "bool": st.booleans(),
        "bytes": st.binary(max_size=6),
        "date": st.dates(min_value=dt.date(1, 1, 1), max_value=dt.date(9999, 12, 31)),
        "list": st.lists(st.integers(-5, 5), max_size=3),
        "struct": st.fixed_dictionaries({"a": st.integers(-5, 5), "b": texts}),
    }[kind]
    return st.lists(st.one_of(st.none(), base), min_size=n, max_size=n)


@st.composite
def frames(draw):
    n = draw(st.integers(1, 8))
    kinds = draw(st.lists(st.sampled_from(["str", "int", "float", "bool", "bytes", "date", "list", "struct"]),
                          min_size=1, max_size=3))
    data = {f"c{i}": draw(column(k, n)) for i, k in enumerate(kinds)}
    try:
        return pl.DataFrame(data, strict=False)
    except Exception:  # polars cannot hold this mix: not semframe's input
        return pl.DataFrame({"c0": draw(column("str", n))})


@st.composite
def templates(draw, columns):
    pieces = draw(st.lists(st.one_of(
        st.sampled_from([f"{{{c}}}" for c in columns] + ["{missing}", "{", "}", "{{", "}}", "{}"]),
        st.text(alphabet=string.ascii_letters + " ?:.", max_size=8)), min_size=1, max_size=4))
    return "".join(pieces)


def responder(answers):
    return lambda request: answers[int(request.key[:8], 16) % len(answers)]


def check(build, engine):
    """Either a SemframeError before any engine call, or a completed run with reasons for nulls."""
    try:
        plan = build()
    except sf.SemframeError:
        assert engine.requests_seen == 0
        return
    try:
        run = plan.run(engine, cache=False, batch_size=3)
    except sf.SemframeError:
        assert engine.requests_seen == 0, "a semframe error after engine calls must be a run's own stop"
        return
    assert run.complete
    lineage = run.lineage
    nulls = lineage.filter(pl.col("value").is_null())
    assert nulls["error"].null_count() == 0 or (nulls["operator"] == "map").all(), nulls  # a null says why


@SETTINGS
@given(df=frames(), data=st.data())
def test_classify_random_values_templates_and_labels(df, data):
    template = data.draw(templates(df.columns))
    labels = data.draw(st.lists(st.text(alphabet=string.ascii_letters + " ", max_size=6), max_size=4))
    engine = sf.DeterministicEngine(responder=responder(data.draw(st.lists(junk_answers, min_size=1, max_size=4))))
    check(lambda: df.lazy().semantic.classify(template, labels, name="out"), engine)


schema_types = st.recursive(
    st.sampled_from([str, int, float, bool, list[str], list[int], "opt_int"]).map(
        lambda t: (int | None) if t == "opt_int" else t),
    lambda inner: st.dictionaries(st.sampled_from(["a", "b", "n", "x"]), inner, min_size=1, max_size=3),
    max_leaves=5,
)


@SETTINGS
@given(df=frames(), data=st.data())
def test_extract_random_schemas_against_a_junk_engine(df, data):
    schema = data.draw(st.dictionaries(st.sampled_from(["n", "a", "name"]), schema_types, min_size=1, max_size=3))
    engine = sf.DeterministicEngine(responder=responder(data.draw(st.lists(junk_answers, min_size=1, max_size=4))))
    column = data.draw(st.sampled_from(df.columns))
    check(lambda: df.lazy().semantic.extract(column, schema, name="out"), engine)


@SETTINGS
@given(df=frames(), data=st.data())
def test_filter_and_map_random(df, data):
    template = data.draw(templates(df.columns))
    engine = sf.DeterministicEngine(responder=responder(data.draw(st.lists(junk_answers, min_size=1, max_size=4))))
    check(lambda: df.lazy().semantic.filter(template).semantic.map(template, name="m", max_tokens=4), engine)


@SETTINGS
@given(values=st.lists(st.one_of(scalars, st.binary(max_size=4), st.lists(st.integers(0, 3), max_size=2)),
                       min_size=1, max_size=6))
def test_pandas_object_columns(values):
    pd = pytest.importorskip("pandas")
    pdf = pd.DataFrame({"v": pd.Series(values, dtype="object")})
    engine = sf.DeterministicEngine()
    try:
        out = pdf.semantic.classify("v", ["A", "B"], engine=engine, cache=False)
    except sf.SemframeError:
        assert engine.requests_seen == 0
        return
    assert list(out.index) == list(pdf.index) and len(out) == len(pdf)
