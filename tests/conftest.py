"""Fixtures shared by the whole suite."""

from __future__ import annotations

import polars as pl
import pytest

import semframe as sf
from semframe import config


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path_factory, monkeypatch):
    """Every test gets its own cache dir and default settings; nothing touches ~/.cache."""
    cache = tmp_path_factory.mktemp("semframe-cache")
    monkeypatch.setenv("SEMFRAME_CACHE_DIR", str(cache))
    saved = config.Settings(**vars(config.settings))
    config.settings.cache_dir = None
    yield cache
    for key, value in vars(saved).items():
        setattr(config.settings, key, value)


@pytest.fixture
def engine() -> sf.DeterministicEngine:
    return sf.DeterministicEngine()


@pytest.fixture
def titles() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "title": ["Battle of Waterloo", "Banana bread recipe", "Treaty of Versailles",
                      "Battle of Waterloo", "Knitting for beginners", "Fall of Rome"],
            "year": [1815, 2001, 1919, 1815, 1999, 476],
            "body": ["b0", "b1", "b2", "b3", "b4", "b5"],
        }
    )
