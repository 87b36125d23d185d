import json
from typing import Optional

import polars as pl
import pytest
from pydantic import BaseModel

from semframe.errors import OutputError, PlanError
from semframe.plan.spec import ChoiceSpec, JsonSpec, TextSpec


def test_choice_parse_exact_and_casefold():
    spec = ChoiceSpec(("YES", "NO"))
    assert spec.parse(" YES\n") == "YES"
    assert spec.parse("no") == "NO"
    with pytest.raises(OutputError, match="not one of"):
        spec.parse("maybe")


@pytest.mark.parametrize("labels, message", [((), "empty"), (("A", "A"), "duplicate"), (("A", " "), "non-empty")])
def test_bad_label_sets(labels, message):
    with pytest.raises(PlanError, match=message):
        ChoiceSpec(labels)


def test_choice_max_tokens_covers_one_token_per_character():
    assert ChoiceSpec(("positive", "neg")).default_max_tokens() >= len("positive")


def test_json_spec_from_dict_and_pydantic_agree():
    class Facts(BaseModel):
        place: str
        year: int
        tags: list[str]
        score: Optional[float]

    a = JsonSpec.from_schema({"place": str, "year": int, "tags": list[str], "score": Optional[float]})
    b = JsonSpec.from_schema(Facts)
    # the same fields, JSON schema and dtype; the model's spec also names the model (its validators run)
    assert a.fields == b.fields and a.json_schema() == b.json_schema() and a.polars_dtype() == b.polars_dtype()
    assert a != b and b.to_dict()["models"][0].startswith("test_spec.") and "models" not in a.to_dict()
    assert a.polars_dtype() == pl.Struct({"place": pl.String, "year": pl.Int64, "tags": pl.List(pl.String),
                                          "score": pl.Float64})
    schema = a.json_schema()
    assert schema["required"] == ["place", "year", "tags", "score"]
    assert schema["properties"]["place"]["maxLength"] > 0
    assert schema["properties"]["tags"]["maxItems"] > 0


@pytest.mark.parametrize("bad", [{"x": dict}, {"x": tuple[int, int]}, {"x": int | str}, {}, "notaschema"])
def test_unsupported_schemas(bad):
    with pytest.raises(PlanError):
        JsonSpec.from_schema(bad)


def test_json_parse_checks_types_and_never_converts_floats_to_ints():
    spec = JsonSpec.from_schema({"year": int, "ok": bool, "maybe": Optional[str]})
    assert spec.parse('{"year": 1815, "ok": true, "maybe": null}') == {"year": 1815, "ok": True, "maybe": None}
    # a missing Optional key reads as null
    assert spec.parse('{"year": 1815, "ok": true}') == {"year": 1815, "ok": True, "maybe": None}
    for bad in ['{"year": "1815", "ok": true, "maybe": null}', '{"year": 1, "ok": 1, "maybe": null}',
                '{"ok": true}', "[1, 2]", "not json", '{"year": 1.5, "ok": true, "maybe": null}',
                '{"year": 1815.0, "ok": true, "maybe": null}']:
        with pytest.raises(OutputError):
            spec.parse(bad)


def test_non_optional_null_is_an_output_error():
    with pytest.raises(OutputError, match="not Optional"):
        JsonSpec.from_schema({"year": int}).parse(json.dumps({"year": None}))


def test_text_spec():
    assert TextSpec().parse("  hi ") == "hi"
