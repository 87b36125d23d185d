"""Small plans for optimizer tests: build with polars-like steps, compare with ==."""

from __future__ import annotations

import polars as pl

from semframe.plan.nodes import Scan, Source
from semframe.plan.semantic import SemClassify, SemExtract, SemFilter, SemMap
from semframe.plan.spec import ChoiceSpec, JsonSpec, TextSpec
from semframe.plan.template import Template

SOURCE = Source.from_data(pl.DataFrame({"title": ["a"], "body": ["b"], "year": [1]}))


def scan(**kw) -> Scan:
    return Scan(SOURCE, **kw)


def classify(child, name="eu", **kw):
    return SemClassify(child, Template.for_column("title"), "Europe?", ChoiceSpec(("YES", "NO")), name, **kw)


def sem_filter(child, **kw):
    return SemFilter(child, Template.parse("Is {title} a war?"), None, ChoiceSpec(("YES", "NO")), None, **kw)


def extract(child, name="facts", **kw):
    return SemExtract(child, Template.for_column("body"), None, JsonSpec.from_schema({"year": int}), name, **kw)


def smap(child, name="gist", **kw):
    return SemMap(child, Template.parse("Summarize {title}"), None, TextSpec(), name, **kw)
