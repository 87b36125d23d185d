"""The examples in the observability modules' docstrings run and give what they show."""

import doctest
import importlib

import pytest

MODULES = [
    "semframe.accounting.prices",
    "semframe.accounting.tokens",
    "semframe.accounting.throughput",
    "semframe.accounting.cost",
    "semframe.accounting.budget",
    "semframe.accounting.estimate",
    "semframe.execution.result",
    "semframe.execution.progress",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
