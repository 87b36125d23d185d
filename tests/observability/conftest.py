"""Fixtures for the observability tests (settings and cache dir are isolated by tests/conftest.py)."""

from __future__ import annotations

import polars as pl
import pytest


@pytest.fixture
def reviews() -> pl.DataFrame:
    """12 rows: 4 distinct texts, repeats, one null and one blank."""
    texts = ["great phone", "awful battery", "great phone", "ok screen", "awful battery", None,
             "great phone", "  ", "fine case", "ok screen", "great phone", "fine case"]
    return pl.DataFrame({"text": texts, "stars": [5, 1, 5, 3, 1, 2, 4, 3, 4, 3, 5, 4]})
