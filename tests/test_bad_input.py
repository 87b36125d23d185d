"""Bad input: clear errors before any engine call, or a null with a recorded reason."""

import polars as pl
import pytest

import semframe as sf


@pytest.fixture
def df():
    return pl.DataFrame({"title": ["a", "b"], "year": [1, 2]})


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda d: d.lazy().semantic.classify("titel", ["A", "B"]),
         r"semantic.classify: 'titel' is neither a column nor a template.*columns are 'title', 'year'"),
        (lambda d: d.lazy().semantic.filter("Is {titel} old?"),
         r"semantic.filter: column 'titel' not found .*columns are 'title', 'year'"),
        (lambda d: d.lazy().semantic.classify("title", []), r"label set is empty"),
        (lambda d: d.lazy().semantic.classify("title", ["A", "A"]), r"duplicate labels"),
        (lambda d: d.lazy().semantic.classify("title", "YES"), r"labels must be a list"),
        (lambda d: d.lazy().semantic.extract("title", {"x": dict}), r"semantic.extract field 'x': unsupported type"),
        (lambda d: d.lazy().semantic.extract("title", {}), r"no fields"),
        (lambda d: d.lazy().semantic.map("Summarize {title}", name="year"),
         r"semantic.map: output column 'year' already exists; pass name="),
        (lambda d: d.lazy().semantic.classify("title", ["A", "B"]).semantic.classify("title", ["A", "B"]),
         r"output column 'classify' already exists"),
        (lambda d: d.lazy().semantic.map("Summarize {title}", name="__sf_x"), r"reserved prefix"),
        (lambda d: d.lazy().semantic.map("Summarize {title}", max_tokens=0), r"max_tokens must be a positive"),
        (lambda d: d.lazy().semantic.classify("title", ["A", "B"], semantic_cache=3), r"semantic_cache must be"),
        (lambda d: d.lazy().semantic.map("no column here"), r"neither a column nor a template"),
        (lambda d: d.lazy().semantic.map("Summarize {title}").filter(pl.col("nope") > 1), r"filter: .*nope"),
        (lambda d: d.lazy().semantic.map("Summarize {title}").head(-1), r"head: n must be"),
    ],
)
def test_plan_errors_name_operator_and_fix_before_any_engine_call(df, build, message):
    engine = sf.DeterministicEngine()
    sf.configure(engine=engine)
    with pytest.raises(sf.PlanError, match=message):
        build(df)
    assert engine.requests_seen == 0


def test_eager_errors_too(df):
    engine = sf.DeterministicEngine()
    with pytest.raises(sf.PlanError, match="column 'nope' not found"):
        df.semantic.map("Summarize {nope}", engine=engine)
    assert engine.requests_seen == 0


def test_null_and_blank_inputs_get_null_without_engine_calls():
    engine = sf.DeterministicEngine()
    df = pl.DataFrame({"t": ["real", None, "", "  \n\t", "real"]})
    out = df.semantic.classify("t", ["A", "B"], engine=engine)
    assert out["classify"].is_null().to_list() == [False, True, True, True, False]
    assert engine.requests_seen == 1
    reasons = sf.last_run().lineage.sort("row_id")["error"].to_list()
    assert reasons == [None, "null input in column 't'", "empty input text", "empty input text", None]
    assert sf.last_run().lineage.sort("row_id")["source"].to_list() == ["engine", "skipped", "skipped", "skipped", "dedup"]


def test_any_null_column_in_a_template_skips_the_row_but_blank_needs_all_blank():
    engine = sf.DeterministicEngine()
    df = pl.DataFrame({"a": ["x", None, "", "y"], "b": ["", "q", "", None]})
    out = df.semantic.map("{a} / {b}", engine=engine)
    assert out["map"].is_null().to_list() == [False, True, True, True]
    assert sf.last_run().lineage.sort("row_id")["error"].to_list() == [
        None, "null input in column 'a'", "empty input text", "null input in column 'b'"]


def test_non_string_columns_are_cast_to_text():
    engine = sf.DeterministicEngine()
    df = pl.DataFrame({"n": [1, 2], "f": [1.5, None], "ok": [True, False], "tags": [["x", "y"], []],
                       "s": [{"k": 1}, {"k": 2}]})
    df.semantic.map("{n}|{ok}|{tags}|{s}", engine=engine, name="m")
    texts = [r.messages[-1].content for r in engine.batches[0]]
    assert texts == ['1|true|["x","y"]|{"k":1}', '2|false|[]|{"k":2}']
    # a null nested value is a null input, not the text "null"
    pl.DataFrame({"tags": [["x"], None]}).semantic.map("{tags}", engine=engine)
    assert sf.last_run().lineage.sort("row_id")["error"].to_list() == [None, "null input in column 'tags'"]


def test_answers_that_do_not_fit_become_nulls_with_reasons_and_keep_other_rows():
    answers = {"a": "YES", "b": "perhaps", "c": '{"broken', "d": "NO"}
    engine = sf.DeterministicEngine(responder=lambda r: answers[r.messages[-1].content[-1]])
    engine.constrained_decoding = False
    df = pl.DataFrame({"t": ["row a", "row b", "row c", "row d"]})
    out = df.semantic.classify("t", ["YES", "NO"], engine=engine)
    assert out["classify"].to_list() == ["YES", None, None, "NO"]
    errors = sf.last_run().lineage.sort("row_id")["error"].to_list()
    assert errors[0] is None and errors[3] is None
    assert "not one of" in errors[1] and "not one of" in errors[2]
    raw = sf.last_run().lineage.sort("row_id")["raw_output"].to_list()
    assert raw[1] == "perhaps"


def test_bad_json_becomes_null_with_reason():
    engine = sf.DeterministicEngine(responder=lambda r: '{"year": "soon"}' if "x" in r.messages[-1].content else '{"year": 5}')
    df = pl.DataFrame({"t": ["x", "y"]})
    out = df.semantic.extract("t", {"year": int}, name="f", engine=engine)
    assert out["f"].to_list() == [None, {"year": 5}]
    assert "should be int" in sf.last_run().lineage.sort("row_id")["error"][0]


def test_semantic_filter_drops_rows_without_an_answer():
    engine = sf.DeterministicEngine(responder=lambda r: "YES" if "keep" in r.messages[-1].content else "garbage")
    df = pl.DataFrame({"t": ["keep 1", "drop", None, "keep 2"]})
    assert df.semantic.filter("{t}", engine=engine)["t"].to_list() == ["keep 1", "keep 2"]


def test_no_semantic_steps_needs_no_engine(df):
    out = sf.SemLazyFrame.from_data(df).filter(pl.col("year") > 1).collect()
    assert out["title"].to_list() == ["b"]


def test_reserved_column_names_in_input_are_rejected():
    with pytest.raises(sf.PlanError, match="reserved prefix"):
        pl.DataFrame({"__sf_row_id": [1]}).lazy().semantic.map("{__sf_row_id}")
