"""The examples in public docstrings run and give what they show."""

import doctest
import importlib

import pytest

MODULES = [
    "semframe",
    "semframe.frontends.verbs",
    "semframe.frontends.lazy",
    "semframe.frontends.pandas",
    "semframe.engines.testing",
    "semframe.plan.template",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
