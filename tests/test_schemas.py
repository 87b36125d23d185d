"""Extraction schemas people write (issue 10 item 6, issue 11 item 9): nested dicts and models,
lists of structs, Literal and Enum fields, Optional anywhere, descriptions, aliases, validators.

Each shape is checked the whole way: the spec (dtype, JSON schema, hash, to_dict), the prompt's
field words, the deterministic engine's fake answers, token estimates, and a real run.
"""

from __future__ import annotations

import enum
import json
from typing import Annotated, Literal, Optional, TypedDict

import polars as pl
import pytest
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

import semframe as sf
from semframe.accounting.tokens import output_tokens
from semframe.engines.base import Message, Request
from semframe.errors import OutputError, PlanError
from semframe.physical.prompts import field_words
from semframe.plan.spec import MAX_DEPTH, MAX_LIST_ITEMS, JsonSpec

try:
    import llguidance
except ImportError:  # pragma: no cover
    llguidance = None


class Tone(enum.Enum):
    CALM = "calm"
    ANGRY = "angry"


class Stars(enum.IntEnum):
    ONE = 1
    TWO = 2


class Person(BaseModel):
    first_name: str = Field(alias="firstName", description="the person's given name")
    age: Optional[int] = Field(default=None, ge=0, le=150)


class Review(BaseModel):
    author: Person
    mentions: list[Person]
    tone: Tone
    stars: Stars
    verdict: Literal["buy", "skip"]
    editor: Optional[Person] = None


class Point(TypedDict):
    x: float
    y: float


SHAPES = {
    "nested dict": {"place": {"city": str, "country": Optional[str]}, "year": int},
    "list of dicts": {"people": [{"name": str, "age": Optional[int]}]},
    "list[dict]": {"people": list[{"name": str}]},  # type: ignore[misc]
    "list of lists": {"grid": list[list[int]]},
    "literal and enum": {"tone": Tone, "verdict": Optional[Literal["buy", "skip"]], "stars": Stars},
    "typed dict": {"where": Optional[Point], "path": list[Point]},
    "described dict": {"year": Annotated[int, "the year it happened"],
                       "pct": Annotated[int, Field(ge=0, le=100, description="percent")]},
    "optional everywhere": {"a": Optional[list[Optional[Point]]], "b": Optional[Tone], "c": Optional[Review]},
    "pydantic nested": Review,
    "pydantic list": {"reviews": list[Review]},
}


@pytest.fixture(params=list(SHAPES), ids=list(SHAPES))
def shape(request):
    return request.param, SHAPES[request.param]


def _grammar_accepts(schema: dict, text: str) -> bool:
    tok = llguidance.LLTokenizer("byte")
    matcher = llguidance.LLMatcher(tok, llguidance.grammar_from("json_schema", json.dumps(schema)), log_level=0)
    return bool(matcher.consume_tokens(tok.tokenize_str(text))) and matcher.is_accepting()


def test_every_shape_makes_a_hashable_spec_with_a_json_to_dict(shape):
    _, schema = shape
    spec = JsonSpec.from_schema(schema)
    assert spec == JsonSpec.from_schema(schema) and hash(spec) == hash(JsonSpec.from_schema(schema))
    json.dumps(spec.to_dict())  # part of every request key
    assert spec.json_schema()["additionalProperties"] is False
    assert isinstance(spec.polars_dtype(), pl.Struct)
    Request((Message("user", "x"),), spec, spec.default_max_tokens()).key  # noqa: B018


def test_every_shape_runs_on_the_deterministic_engine(shape):
    name, schema = shape
    spec = JsonSpec.from_schema(schema)
    df = pl.DataFrame({"t": ["first text", None, "second text"]})
    out = df.lazy().semantic.extract("t", schema, name="x").collect(engine=sf.DeterministicEngine())
    assert out.schema["x"] == spec.polars_dtype()
    assert out["x"].is_null().to_list() == [False, True, False], sf.last_run().lineage["error"].to_list()
    for value in out["x"].drop_nulls().to_list():
        assert spec.validate(value) == value
    assert out.select(pl.col("x").struct.unnest()).columns == [k for k, _ in spec.fields]


def test_every_shape_compiles_in_vllms_grammar_and_admits_the_fake_answers(shape):
    if llguidance is None:
        pytest.skip("llguidance (vLLM's structured-outputs backend) not installed")
    _, schema = shape
    spec = JsonSpec.from_schema(schema)
    error, warnings = llguidance.LLMatcher.validate_grammar_with_warnings(
        llguidance.grammar_from("json_schema", json.dumps(spec.json_schema())))
    assert not error and not warnings
    engine = sf.DeterministicEngine()
    for text in ("a", "b", "c"):
        answer = engine.answer(Request((Message("user", text),), spec, spec.default_max_tokens()))
        assert _grammar_accepts(spec.json_schema(), answer), answer


def test_every_shape_has_token_estimates_and_room_for_its_answers(shape):
    _, schema = shape
    spec = JsonSpec.from_schema(schema)
    est = output_tokens(spec, spec.default_max_tokens())
    assert 0 < est.low <= est.typical <= est.high == spec.default_max_tokens()
    engine = sf.DeterministicEngine()
    answer = engine.answer(Request((Message("user", "x"),), spec, spec.default_max_tokens()))
    assert engine.count_tokens(answer) <= spec.default_max_tokens()


# ---------------------------------------------------------------------- dtypes follow the schema


def test_nested_dicts_are_nested_structs():
    # issue 10 item 6: this was TypeError: unhashable type: 'dict'
    spec = JsonSpec.from_schema({"place": {"city": str, "geo": {"lat": float, "lon": float}}, "year": int})
    assert spec.polars_dtype() == pl.Struct({
        "place": pl.Struct({"city": pl.String, "geo": pl.Struct({"lat": pl.Float64, "lon": pl.Float64})}),
        "year": pl.Int64,
    })
    value = {"place": {"city": "Paris", "geo": {"lat": 48.9, "lon": 2.35}}, "year": 1900}
    assert spec.parse(json.dumps(value)) == value
    assert spec.describe() == "{place: {city: str, geo: {lat: float, lon: float}}, year: int}"


def test_lists_of_structs_in_every_spelling():
    class Item(BaseModel):
        name: str

    class ItemDict(TypedDict):
        name: str

    dtype = pl.Struct({"items": pl.List(pl.Struct({"name": pl.String}))})
    for schema in ({"items": [{"name": str}]}, {"items": list[{"name": str}]},  # type: ignore[misc]
                   {"items": list[Item]}, {"items": list[ItemDict]}):
        spec = JsonSpec.from_schema(schema)
        assert spec.polars_dtype() == dtype
        items = spec.json_schema()["properties"]["items"]
        assert items["type"] == "array" and items["maxItems"] == MAX_LIST_ITEMS
        assert items["items"]["required"] == ["name"]
        assert spec.parse('{"items": [{"name": "a"}, {"name": "b"}]}') == {"items": [{"name": "a"}, {"name": "b"}]}


def test_pydantic_models_follow_the_schema_exactly():
    spec = JsonSpec.from_schema(Review)
    person = pl.Struct({"firstName": pl.String, "age": pl.Int64})
    assert spec.polars_dtype() == pl.Struct({"author": person, "mentions": pl.List(person), "tone": pl.String,
                                             "stars": pl.Int64, "verdict": pl.String, "editor": person})


def test_literal_and_enum_fields_are_constrained_and_strings_in_polars():
    spec = JsonSpec.from_schema({"tone": Tone, "verdict": Optional[Literal["buy", "skip"]], "stars": Stars,
                                 "maybe": Literal["x", None]})
    props = spec.json_schema()["properties"]
    assert props["tone"] == {"type": "string", "enum": ["calm", "angry"]}
    assert props["verdict"] == {"anyOf": [{"type": "string", "enum": ["buy", "skip"]}, {"type": "null"}]}
    assert props["stars"] == {"type": "integer", "enum": [1, 2]}
    assert props["maybe"]["anyOf"][1] == {"type": "null"}
    assert spec.polars_dtype() == pl.Struct({"tone": pl.String, "verdict": pl.String, "stars": pl.Int64,
                                             "maybe": pl.String})
    assert spec.parse('{"tone": "calm", "verdict": null, "stars": 2, "maybe": "x"}')["tone"] == "calm"
    with pytest.raises(OutputError, match="not one of"):
        spec.parse('{"tone": "CALM", "verdict": null, "stars": 2, "maybe": "x"}')


@pytest.mark.parametrize("bad, reason", [
    ({"x": dict}, "unsupported type"),
    ({"x": {}}, "at least one field"),
    ({"x": {1: int}}, "field names must be non-empty strings"),
    ({"x": [int, str]}, r"\[X\] with one item type"),
    ({"x": Literal["a", 1]}, "all strings or all integers"),
    ({"x": Literal[True]}, "all strings or all integers"),
    ({"x": Annotated[int, object()]}, "unsupported annotation"),
    ({"x": Annotated[str, Field(ge=1)]}, "applies to int and float"),
    ({"x": Annotated[int, Field(ge=5, le=1)]}, "leave no value"),
    ({"x": int | str}, "Optional"),
])
def test_unsupported_schemas_are_plan_errors_naming_the_field(bad, reason):
    with pytest.raises(PlanError, match=reason):
        JsonSpec.from_schema(bad, "semantic.extract")


def test_too_deep_and_recursive_schemas_are_refused():
    deep: object = int
    for _ in range(MAX_DEPTH + 1):
        deep = {"a": deep}
    with pytest.raises(PlanError, match="nests deeper"):
        JsonSpec.from_schema({"root": deep})

    class Node(BaseModel):
        name: str
        children: list["Node"]

    with pytest.raises(PlanError, match="refers to itself"):
        JsonSpec.from_schema(Node)


# ---------------------------------------------------------------------- descriptions


def test_field_descriptions_reach_the_json_schema_and_the_prompt():
    class Battle(BaseModel):
        year: int = Field(description="the year the battle was fought")
        place: Optional[str] = Field(default=None, description="where,\n  if known")

    spec = JsonSpec.from_schema(Battle)
    props = spec.json_schema()["properties"]
    assert props["year"]["description"] == "the year the battle was fought"
    assert props["place"]["description"] == "where,\n  if known"
    assert field_words(spec) == ('"year" (integer; the year the battle was fought), '
                                 '"place" (string or null; where, if known)')
    engine = sf.DeterministicEngine()
    pl.DataFrame({"t": ["Waterloo"]}).semantic.extract("t", Battle, engine=engine)
    assert "the year the battle was fought" in engine.batches[0][0].prompt_text


def test_dict_schemas_take_descriptions_through_annotated():
    spec = JsonSpec.from_schema({"year": Annotated[int, "the year"], "tags": Annotated[list[str], Field(description="labels")]})
    assert spec.json_schema()["properties"]["year"]["description"] == "the year"
    assert field_words(spec) == '"year" (integer; the year), "tags" (list of strings; labels)'


def test_a_description_changes_the_request_key():
    a = JsonSpec.from_schema({"year": int})
    b = JsonSpec.from_schema({"year": Annotated[int, "the year"]})
    assert a != b and a.to_dict() != b.to_dict()


# ---------------------------------------------------------------------- aliases


def test_the_alias_is_the_key_asked_for_and_the_result_field_name():
    spec = JsonSpec.from_schema(Person)
    assert [k for k, _ in spec.fields] == ["firstName", "age"]
    assert spec.json_schema()["required"] == ["firstName", "age"]
    assert field_words(spec).startswith('"firstName" (string; ')
    engine = sf.DeterministicEngine(responder=lambda r: '{"firstName": "Ann", "age": 40}')
    out = pl.DataFrame({"t": ["Ann, 40"]}).semantic.extract("t", Person, name="p", engine=engine)
    row = out["p"][0]
    assert row == {"firstName": "Ann", "age": 40}
    assert Person.model_validate(row).first_name == "Ann"  # a result row is a valid model input
    with pytest.raises(OutputError, match="unexpected key"):
        spec.parse('{"first_name": "Ann", "age": 40}')  # the attribute name is not the key


def test_validation_and_serialization_aliases():
    class M(BaseModel):
        a: str = Field(validation_alias="inA", serialization_alias="outA")

    spec = JsonSpec.from_schema(M)
    assert [k for k, _ in spec.fields] == ["inA"]
    assert spec.parse('{"inA": "x"}') == {"inA": "x"}


def test_models_that_validate_by_name_are_asked_for_names():
    if "validate_by_alias" not in ConfigDict.__annotations__:
        pytest.skip("this pydantic has no validate_by_alias")

    class M(BaseModel):
        model_config = ConfigDict(validate_by_alias=False, validate_by_name=True)
        a: str = Field(alias="A")

    assert [k for k, _ in JsonSpec.from_schema(M).fields] == ["a"]
    assert JsonSpec.from_schema(M).parse('{"a": "x"}') == {"a": "x"}


def test_alias_choices_are_refused():
    class M(BaseModel):
        a: str = Field(validation_alias=AliasChoices("x", "y"))

    with pytest.raises(PlanError, match="AliasChoices"):
        JsonSpec.from_schema(M)


# ---------------------------------------------------------------------- validators


class Battle(BaseModel):
    name: str
    year: int
    end_year: Optional[int] = None

    @field_validator("name")
    @classmethod
    def tidy(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("name is blank")
        return v.strip().title()

    @model_validator(mode="after")
    def ends_after_it_starts(self):
        if self.end_year is not None and self.end_year < self.year:
            raise ValueError("ends before it starts")
        return self


def test_an_answer_failing_the_models_validation_is_a_null_with_the_reason():
    answers = {"a": '{"name": "waterloo ", "year": 1815, "end_year": null}',
               "b": '{"name": "  ", "year": 1815, "end_year": null}',
               "c": '{"name": "x", "year": 1815, "end_year": 1700}'}
    engine = sf.DeterministicEngine(responder=lambda r: answers[r.messages[-1].content])
    out = pl.DataFrame({"t": ["a", "b", "c"]}).semantic.extract("t", Battle, name="b", engine=engine)
    assert out["b"].to_list() == [{"name": "Waterloo", "year": 1815, "end_year": None}, None, None]
    errors = sf.last_run().lineage.sort("row_id")["error"].to_list()
    assert errors[0] is None
    assert "fails the Battle model's validation" in errors[1] and "name is blank" in errors[1]
    assert "ends before it starts" in errors[2]


def test_a_validator_that_raises_something_else_is_still_a_null():
    class Odd(BaseModel):
        n: int

        @field_validator("n")
        @classmethod
        def boom(cls, v):
            raise KeyError("surprise")

    with pytest.raises(OutputError, match="fails the Odd model's validation"):
        JsonSpec.from_schema(Odd).parse('{"n": 1}')


def test_nested_models_in_a_dict_schema_run_their_validators():
    spec = JsonSpec.from_schema({"battles": list[Battle], "note": str})
    assert spec.parse('{"battles": [{"name": "hastings", "year": 1066, "end_year": null}], "note": "n"}') == {
        "battles": [{"name": "Hastings", "year": 1066, "end_year": None}], "note": "n"}
    with pytest.raises(OutputError, match=r"field 'battles\[0\]' fails the Battle model's validation"):
        spec.parse('{"battles": [{"name": " ", "year": 1066, "end_year": null}], "note": "n"}')


def test_a_validator_whose_result_does_not_fit_is_a_null():
    class Long(BaseModel):
        s: str = Field(max_length=300)

        @field_validator("s")
        @classmethod
        def grow(cls, v):
            return v * 100

    with pytest.raises(OutputError, match="does not fit"):
        JsonSpec.from_schema(Long).parse('{"s": "abc"}')


def test_models_with_the_same_fields_but_other_names_or_validators_are_different_specs():
    class A(BaseModel):
        year: int

    class B(BaseModel):
        year: int

    class A2(BaseModel):
        year: int = Field(ge=0)

    a, b = JsonSpec.from_schema(A), JsonSpec.from_schema(B)
    assert a.fields == b.fields and a != b and hash(a) != hash(b)
    assert a.to_dict()["models"] != b.to_dict()["models"]
    assert JsonSpec.from_schema(A2) != a
    assert JsonSpec.from_schema(A) == a  # the same model: equal, whatever the instance


def test_strict_models_and_enum_members():
    class S(BaseModel):
        model_config = ConfigDict(strict=True)
        tone: Tone
        x: float

    spec = JsonSpec.from_schema(S)
    assert spec.parse('{"tone": "angry", "x": 2}') == {"tone": "angry", "x": 2.0}


# ---------------------------------------------------------------------- frontends


def test_pandas_front_gets_nested_values():
    pd = pytest.importorskip("pandas")
    pdf = pd.DataFrame({"t": ["a", "b"]})
    out = pdf.semantic.extract("t", {"who": {"name": str}, "tags": [{"k": str}]}, name="x",
                               engine=sf.DeterministicEngine())
    first = out["x"].iloc[0]
    assert set(first) == {"who", "tags"} and set(first["who"]) == {"name"}


def test_specs_pickle_and_copy_after_use():
    import copy
    import pickle

    spec = JsonSpec.from_schema(Review)
    answer = sf.DeterministicEngine().answer(Request((Message("user", "x"),), spec, spec.default_max_tokens()))
    value = spec.parse(answer)  # compiles and caches its checkers
    for clone in (pickle.loads(pickle.dumps(spec)), copy.deepcopy(spec)):
        assert clone == spec and hash(clone) == hash(spec) and clone.model is Review
        assert clone.parse(answer) == value


def test_nested_models_are_named_in_the_request_key():
    class P1(BaseModel):
        name: str

    class P2(BaseModel):
        name: str

    a, b = JsonSpec.from_schema({"p": P1}), JsonSpec.from_schema({"p": P2})
    assert a.json_schema() == b.json_schema() and a.to_dict() != b.to_dict()
    assert JsonSpec.from_schema({"p": {"name": str}}).to_dict() == {"kind": "json", "schema": a.json_schema()}
