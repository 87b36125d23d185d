"""The examples in every module's docstrings run and give what they show."""

import doctest
import importlib
import pkgutil

import pytest

import semframe

MODULES = sorted(
    ["semframe"] + [m.name for m in pkgutil.walk_packages(semframe.__path__, prefix="semframe.")]
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_the_public_modules_have_examples():
    finder = doctest.DocTestFinder()
    for name in ["semframe", "semframe.frontends.verbs", "semframe.frontends.lazy", "semframe.engines.testing",
                 "semframe.plan.template", "semframe.cache.store", "semframe.accounting.estimate"]:
        tests = finder.find(importlib.import_module(name))
        assert any(t.examples for t in tests), f"{name} has no examples"
