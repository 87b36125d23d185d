import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from semframe.errors import PlanError
from semframe.plan.template import Template


def test_parse_columns_and_literals():
    t = Template.parse("Is {title} about {topic}? {{literal}} {title}")
    assert t.columns == ("title", "topic")
    assert t.render({"title": "T", "topic": "war"}) == "Is T about war? {literal} T"


def test_names_are_stripped_and_may_hold_spaces():
    t = Template.parse("{ product name }")
    assert t.columns == ("product name",)


@pytest.mark.parametrize("bad", ["{unclosed", "a } b", "{}", "{ }", "{a{b}"])
def test_malformed_templates_raise_plan_errors(bad):
    with pytest.raises(PlanError):
        Template.parse(bad)


def test_for_column_escapes_braces():
    t = Template.for_column("we{ird}")
    assert t.columns == ("we{ird}",)
    assert t.render({"we{ird}": "x"}) == "x"


def test_check_columns_names_the_missing_column_and_lists_columns():
    with pytest.raises(PlanError, match=r"column 'titel' not found.*columns are 'title', 'year'"):
        Template.parse("{titel}").check_columns(["title", "year"], "semantic.map")


_nasty = st.one_of(
    st.text(),
    st.sampled_from(["{title}", "{{ }}", "{0}", "{{ title }}", "{% for x in y %}", "${title}", "}{", "%s"]),
)


@given(value=_nasty, other=_nasty)
@settings(max_examples=300)
def test_values_are_inserted_literally_and_never_expanded(value, other):
    t = Template.parse("A {title} B {body} C")
    out = t.render({"title": value, "body": other})
    assert out == f"A {value} B {other} C"


@given(source=st.text(max_size=40))
@settings(max_examples=300)
def test_parse_never_raises_anything_but_plan_error(source):
    try:
        t = Template.parse(source)
    except PlanError:
        return
    # Round trip: rendering every column as its own braces gives the literal text back.
    row = {c: "{" + c + "}" for c in t.columns}
    rendered = t.render(row)
    assert Template.parse(rendered.replace("{", "{{").replace("}", "}}")).columns == ()
