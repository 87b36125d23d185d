"""Plans as files: plan.serialize() / sf.deserialize() round trips, refusals, safe loading."""

from __future__ import annotations

import json
import sys
import types
from typing import Literal, Optional

import polars as pl
import pytest
from pydantic import BaseModel, Field

import semframe as sf
from semframe.plan.serialize import FORMAT, VERSION

ENGINE = sf.DeterministicEngine()


def same_result(plan: sf.SemLazyFrame, again: sf.SemLazyFrame) -> None:
    assert again.explain() == plan.explain()
    assert again.collect(engine=ENGINE, cache=False).equals(plan.collect(engine=ENGINE, cache=False))


@pytest.fixture
def parquet(tmp_path, titles):
    path = tmp_path / "titles.parquet"
    titles.write_parquet(path)
    return path


def test_file_scan_relational_and_semantic_steps_round_trip(parquet):
    plan = (sf.scan_parquet(parquet)
            .filter(pl.col("year") > 1000)
            .semantic.classify("title", ["YES", "NO"], instruction="Is it about a war?", name="war", max_tokens=4)
            .semantic.extract("title", {"place": str, "year": Optional[int], "tags": list[str]}, name="facts")
            .semantic.map("Summarize {title}: {body}", name="gist", temperature=0.5, cache=False)
            .semantic.filter("Is {title} European?", semantic_cache=None)
            .with_columns(n=pl.col("title").str.len_chars(), upper=pl.col("title").str.to_uppercase())
            .select("title", "war", "facts", "gist", "n", "upper")
            .sort("n", descending=True)
            .rename({"gist": "summary"})
            .drop("upper")
            .head(4))
    text = plan.serialize()
    data = json.loads(text)
    assert data["format"] == FORMAT and data["version"] == VERSION and data["polars"] == pl.__version__
    same_result(plan, sf.deserialize(text))
    assert plan.serialize() == text  # stable


def test_polars_method_chains_and_plan_inputs_round_trip(titles):
    other = pl.DataFrame({"title": ["Fall of Rome"], "empire": ["Roman"]})
    plan = (titles.lazy().semantic.classify("title", ["A", "B"], name="c")
            .join(other.lazy(), on="title", how="left", maintain_order="left")
            .with_row_index("i")
            .group_by("c").agg(pl.len().alias("n"), pl.col("year").max(), pl.col("i").cast(pl.Int64).sum())
            .sort("c"))
    same_result(plan, sf.deserialize(plan.serialize()))
    unpivoted = titles.lazy().semantic.map("{title}", name="m").unpivot(index="year", on=["title", "m"])
    same_result(unpivoted, sf.deserialize(unpivoted.serialize()))


def test_scan_options_and_dtype_arguments_round_trip(tmp_path):
    path = tmp_path / "x.csv"
    pl.DataFrame({"a": [1, 2], "b": ["x;y", "z"]}).write_csv(path, separator=";")
    plan = (sf.scan_csv(path, separator=";", schema_overrides={"a": pl.Int32})
            .cast({"a": pl.Float64})
            .semantic.map("{b}", name="m"))
    data = json.loads(plan.serialize())
    source = data["plan"]["input"]["inputs"][0]["source"]
    assert source["kind"] == "csv" and source["options"]["separator"] == ";"
    again = sf.deserialize(data)
    assert again.collect(engine=ENGINE)["a"].dtype == pl.Float64
    same_result(plan, again)


def test_a_plain_polars_scan_is_recognised(parquet):
    plan = pl.scan_parquet(parquet).semantic.map("{title}", name="m")
    source = json.loads(plan.serialize())["plan"]["input"]["source"]
    assert source == {"kind": "parquet", "path": str(parquet), "options": {}}


def test_in_memory_data_is_embedded_up_to_the_limit(titles):
    plan = titles.lazy().semantic.classify("title", ["YES", "NO"], name="c")
    source = json.loads(plan.serialize())["plan"]["input"]["source"]
    assert source["kind"] == "arrow_ipc" and source["rows"] == titles.height
    same_result(plan, sf.deserialize(plan.serialize()))
    with pytest.raises(sf.PlanError, match="over embed_limit=10 bytes.*sf.scan_parquet"):
        plan.serialize(embed_limit=10)
    big = pl.DataFrame({"t": ["x" * 1000] * 2000}).lazy().semantic.map("{t}", name="m")
    with pytest.raises(sf.PlanError, match="embed_limit"):
        big.serialize()
    assert json.loads(big.serialize(embed_limit=None))["plan"]["input"]["source"]["rows"] == 2000


def test_serialize_to_a_file_and_deserialize_from_path_bytes_and_file(tmp_path, titles):
    plan = titles.lazy().semantic.map("{title}", name="m")
    path = tmp_path / "plan.json"
    assert plan.serialize(path) is None
    for source in (path, str(path), path.read_bytes(), path.read_text(), open(path, encoding="utf-8")):
        same_result(plan, sf.deserialize(source))


def test_relative_paths_resolve_against_base_dir(tmp_path, titles, monkeypatch):
    titles.write_parquet(tmp_path / "t.parquet")
    monkeypatch.chdir(tmp_path)
    text = sf.scan_parquet("t.parquet").semantic.map("{title}", name="m").serialize()
    assert json.loads(text)["plan"]["input"]["source"]["path"] == "t.parquet"
    elsewhere = tmp_path / "sub"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(sf.PlanError, match="no file 't.parquet'"):
        sf.deserialize(text)
    assert sf.deserialize(text, base_dir=tmp_path).collect(engine=ENGINE).height == titles.height


@pytest.mark.parametrize("make, message", [
    (lambda lf: lf.with_columns(x=pl.col("title").map_batches(lambda s: s)), "calls a Python function"),
    (lambda lf: lf.filter(pl.col("title").map_elements(len, return_dtype=pl.Int64) > 3), "calls a Python function"),
    (lambda lf: lf.map_batches(lambda df: df), "passes a Python function"),
    (lambda lf: lf.semantic.map("{title}", name="m2", engine=ENGINE), "engine object"),
])
def test_code_is_refused_when_saving(titles, make, message):
    plan = make(titles.lazy().semantic.map("{title}", name="m"))
    with pytest.raises(sf.PlanError, match=message):
        plan.serialize()


def test_a_lazyframe_with_more_than_a_scan_is_refused(parquet):
    plan = sf.SemLazyFrame.from_data(pl.scan_parquet(parquet).filter(pl.col("year") > 3))
    with pytest.raises(sf.PlanError, match="neither a plain file scan nor in memory.*sf.scan_parquet"):
        plan.serialize()


def test_an_engine_name_is_saved(titles):
    plan = titles.lazy().semantic.map("{title}", name="m", engine="deterministic")
    data = json.loads(plan.serialize())
    assert data["plan"]["engine"] == "deterministic"
    assert sf.deserialize(data).plan.engine == "deterministic"


def _plan_dict(titles):
    return json.loads(titles.lazy().semantic.map("{title}", name="m").filter(pl.col("year") > 3).serialize())


def test_code_in_a_file_is_refused_when_loading(titles):
    data = _plan_dict(titles)
    data["plan"]["predicate"] = {"polars_expr": json.loads(
        pl.col("year").map_batches(lambda s: s > 3).meta.serialize(format="json"))}
    with pytest.raises(sf.PlanError, match="holds Python code"):
        sf.deserialize(data)
    data = _plan_dict(titles)
    data["plan"]["predicate"] = {"polars_expr": {"Literal": {"Scalar": {"Binary": [128, 4, 149, 0, 46]}}}}
    with pytest.raises(sf.PlanError, match="holds Python code"):
        sf.deserialize(data)


@pytest.mark.parametrize("method", ["sink_parquet", "collect", "write_csv", "__class__", "pipe", "map_batches", "nope"])
def test_only_polars_plan_methods_may_be_named(titles, method):
    data = _plan_dict(titles)
    data["plan"] = {"op": "polars", "inputs": [data["plan"]["input"]],
                    "calls": [{"method": method, "args": ["/tmp/out.parquet"], "kwargs": {}}]}
    with pytest.raises(sf.PlanError, match="not a polars method a plan may call"):
        sf.deserialize(data)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(format="other"), "not a semframe plan file"),
    (lambda d: d.update(version=VERSION + 1), "format version 2.*upgrade semframe"),
    (lambda d: d["plan"]["input"].update(extra=1), r"unknown key\(s\) \['extra'\]"),
    (lambda d: d["plan"].update(op="teleport"), "unknown step 'teleport'"),
    (lambda d: d["plan"]["input"]["input"]["source"].update(kind="pickle"), "unknown source kind 'pickle'"),
    (lambda d: d["plan"]["input"].update(spec={"kind": "choice", "labels": ["A"]}), "at least two labels"),
])
def test_broken_files_say_what_is_wrong(titles, edit, message):
    data = _plan_dict(titles)
    edit(data)
    with pytest.raises(sf.PlanError, match=message):
        sf.deserialize(data)


def test_not_json_and_missing_files(tmp_path):
    with pytest.raises(sf.PlanError, match="not valid JSON"):
        sf.deserialize("{nope")
    with pytest.raises(sf.PlanError, match="no plan file"):
        sf.deserialize(tmp_path / "missing.json")


class Person(BaseModel):
    name: str = Field(description="full name")
    age: Optional[int] = None


class Article(BaseModel):
    kind: Literal["news", "blog"]
    people: list[Person]


def test_pydantic_schemas_load_only_when_allowed(titles, monkeypatch):
    module = types.ModuleType("semframe_test_models")
    Article.__module__ = Person.__module__ = module.__name__
    module.Article, module.Person = Article, Person
    monkeypatch.setitem(sys.modules, module.__name__, module)
    plan = titles.lazy().semantic.extract("title", Article, name="a")
    text = plan.serialize()
    assert json.loads(text)["plan"]["spec"]["model"] == "semframe_test_models:Article"
    with pytest.raises(sf.PlanError, match="pydantic model semframe_test_models:(Article|Person).*import_models=True"):
        sf.deserialize(text)
    again = sf.deserialize(text, import_models=True)
    assert again.plan.spec == plan.plan.spec and again.plan.spec.model is Article
    same_result(plan, again)
