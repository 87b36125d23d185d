"""SQL functions in DuckDB (sf.duckdb.register): results, one run per query, errors, budgets."""

from __future__ import annotations

import duckdb
import polars as pl
import pytest

import semframe as sf


def yes_if(word: str) -> sf.DeterministicEngine:
    return sf.DeterministicEngine(responder=lambda r: "YES" if word in r.prompt_text else "NO")


@pytest.fixture
def con():
    con = duckdb.connect()
    con.execute("""CREATE TABLE titles AS
        SELECT i AS id,
               CASE WHEN i % 3 = 0 THEN 'Battle of ' || (i % 40)::VARCHAR
                    WHEN i % 3 = 1 THEN 'Banana bread ' || (i % 7)::VARCHAR END AS title,
               i % 4 AS region
        FROM range(6000) r(i)""")
    con.execute("CREATE TABLE regions AS SELECT * FROM (VALUES (0, 'north'), (1, 'south'), (2, 'east'), (3, 'west')) "
                "t(region, name)")
    yield con
    con.close()


def test_a_query_that_joins_and_groups_around_the_semantic_calls(con):
    fns = sf.duckdb.register(con, engine=yes_if("Battle"))
    run = fns.run("""
        SELECT g.name,
               sem_classify(t.title, ['YES', 'NO'], 'Is it about a war?') AS war,
               count(*) AS n,
               count(*) FILTER (WHERE sem_filter(t.title, 'Is {text} about a war?')) AS wars
        FROM titles t JOIN regions g USING (region)
        WHERE t.id < 5000
        GROUP BY ALL ORDER BY ALL""")
    df = run.df
    assert df.columns == ["name", "war", "n", "wars"]
    assert df["n"].sum() == 5000
    assert df.filter(pl.col("war") == "YES")["n"].sum() == df["wars"].sum() == 1667
    assert df.filter(pl.col("war").is_null())["n"].sum() == 1666  # NULL titles: no call, NULL
    # One run for the whole query: DuckDB's chunks of 2048 rows share dedup, lineage and metrics.
    m = run.metrics.sort("step")
    assert m["column"].to_list() == ["sem_classify", "sem_filter"]
    assert m["rows_in"].to_list() == [5000, 5000]
    assert m["engine_requests"].to_list() == [47, 47]  # 40 battles + 7 banana breads, each asked once
    assert m["skipped"].to_list() == [1666, 1666]
    assert run.complete and run.lineage.height == 10000
    assert set(run.lineage["source"]) == {"engine", "dedup", "skipped"}
    assert sf.last_run() is run


def test_a_rerun_is_answered_by_the_exact_cache(con):
    fns = sf.duckdb.register(con, engine="deterministic")
    query = "SELECT sem_map(title, 'Summarize {text} in three words.') AS s FROM titles"
    first = fns.run(query)
    again = fns.run(query)
    assert again.df.equals(first.df)
    assert again.metrics["engine_requests"][0] == 0 and again.metrics["exact_cache_hits"][0] == 47


def test_extract_returns_a_struct_typed_by_the_schema(con):
    fns = sf.duckdb.register(con, engine="deterministic")
    run = fns.run("""SELECT title, sem_extract(title, '{"place": "str", "year": "int", "tags": ["str"]}') AS facts
                     FROM titles WHERE id < 3 ORDER BY id""")
    assert run.df.schema["facts"] == pl.Struct({"place": pl.String, "year": pl.Int64, "tags": pl.List(pl.String)})
    assert run.df["facts"][2] is None  # a NULL title
    same = fns.run("""SELECT (sem_extract(title, '{"place": "VARCHAR", "year": "BIGINT", "tags": ["VARCHAR"]}')).year
                      AS y FROM titles WHERE id < 2 ORDER BY id""")
    assert same.df["y"].to_list() == run.df["facts"].struct.field("year").head(2).to_list()


def test_map_filter_options_and_any_text_type(con):
    fns = sf.duckdb.register(con, engine="deterministic", cache=False)
    run = fns.run("SELECT sem_map(id, 'Say {text}', max_tokens := 20) AS m, sem_map(id, 'Be brief.') AS b "
                  "FROM titles WHERE id < 2 ORDER BY id")
    assert run.df["m"].to_list() == ["echo: Say 0", "echo: Say 1"]
    assert run.df["b"].str.contains("0|1").all()
    assert run.prompts["prompt"].str.contains("Be brief.").any()


def test_calls_outside_run_share_the_open_run_until_finish(con):
    fns = sf.duckdb.register(con, engine="deterministic", cache=False)
    con.sql("SELECT sem_classify(title, ['A', 'B']) FROM titles").fetchall()
    con.sql("SELECT sem_classify(title, ['A', 'B']) FROM titles WHERE id < 100").fetchall()
    result = fns.finish()
    assert result.metrics["rows_in"][0] == 6100
    assert result.metrics["engine_requests"][0] == 47  # the second query was answered by the run's dedup
    assert fns.finish() is None


def test_a_scope_makes_one_run_of_several_statements(con, tmp_path):
    fns = sf.duckdb.register(con, engine="deterministic", cache=False)
    with fns.scope() as scope:
        con.execute("CREATE TABLE labelled AS SELECT id, sem_classify(title, ['A', 'B']) AS c FROM titles")
        con.execute(f"COPY (SELECT sem_classify(title, ['A', 'B']) AS c FROM titles) TO '{tmp_path / 'c.parquet'}'")
    assert scope.result.metrics["rows_in"][0] == 12000
    assert scope.result.metrics["engine_requests"][0] == 47
    assert pl.read_parquet(tmp_path / "c.parquet").height == 6000


@pytest.mark.parametrize("query, message", [
    ("SELECT sem_classify(title, 'YES,NO') FROM titles", r"sem_classify: labels must be a list .*write \['YES', 'NO'\]"),
    ("SELECT sem_classify(title, ['A']) FROM titles", "sem_classify: a classification needs at least two labels"),
    ("SELECT sem_classify(title, [1, 2]) FROM titles", "sem_classify: label 1 is a int"),
    ("SELECT sem_map(title, 'Summarize {title}') FROM titles", r"sem_map: the template may reference only \{text\}"),
    ("SELECT sem_map(title, 'Summarize {text') FROM titles", "sem_map: unclosed"),
    ("SELECT sem_filter(title, NULL) FROM titles", "sem_filter: the question is NULL"),
    ("""SELECT sem_extract(title, '{"when": "date"}') FROM titles""", "sem_extract: field 'when' has the unknown type"),
    ("SELECT sem_extract(title, 'year: int') FROM titles", "sem_extract: the schema is not valid JSON"),
])
def test_sql_mistakes_raise_a_plan_error_naming_the_function(con, query, message):
    fns = sf.duckdb.register(con, engine="deterministic")
    with pytest.raises(sf.PlanError, match=message):
        fns.run(query)
    with pytest.raises(duckdb.Error, match="PlanError: " + message.split(":")[0]):  # as DuckDB shows it
        con.sql(query).fetchall()
    fns.finish()


def test_a_wrong_call_shape_is_duckdbs_binder_error(con):
    sf.duckdb.register(con, engine="deterministic")
    with pytest.raises(duckdb.BinderException, match=r"sem_classify\(text, labels, instruction := NULL"):
        con.sql("SELECT sem_classify(title) FROM titles").fetchall()


def test_a_budget_stops_the_query_with_the_partial_run(con):
    fns = sf.duckdb.register(con, engine="deterministic", cache=False, batch_size=10, max_tokens=3000)
    with pytest.raises(sf.BudgetExceeded) as info:
        fns.run("SELECT sem_map(id, 'Say {text}', max_tokens := 20) FROM titles")
    partial = info.value.result
    assert not partial.complete and "max_tokens=3,000" in partial.error
    assert 0 < partial.metrics["engine_requests"][0] < 6000
    assert partial.lineage.height == partial.metrics["rows_in"][0]
    assert sf.last_run() is partial


def test_register_checks_its_arguments_and_makes_no_engine(con):
    with pytest.raises(sf.PlanError, match="unknown engine 'nope'"):
        sf.duckdb.register(con, engine="nope")
    with pytest.raises(ValueError, match="batch_size"):
        sf.duckdb.register(con, batch_size=0)
    made = []
    sf.configure(engines={"lazy": lambda: made.append(1) or sf.DeterministicEngine()})
    fns = sf.duckdb.register(con, engine="lazy")
    assert made == []
    assert fns.run("SELECT 1 AS x").df["x"].to_list() == [1] and made == []  # no semantic call: no engine
    fns.run("SELECT sem_map('hi', 'Say {text}') AS m")
    assert made == [1]
